"""Reading the file: YAML 1.2, line numbers in every error, ${VAR} and .env, env_file, names,
limits, secrets never printed, and a fuzz test (the loader raises nothing but its own error)."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.config import loader, secrets
from reconciler.config.yamlread import MAX_NODES
from reconciler.core.actions import CreateContainer, describe
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.errors import DesiredStateError
from reconciler.ops import logs
from reconciler.ops.status import render_status

ROOT = Path(__file__).resolve().parent.parent


def parse(
    text: str,
    base_dir: Path = Path("/srv/app"),
    env: dict[str, str] | None = None,
    **kw: Any,
):
    return loader.parse(
        textwrap.dedent(text), source="state.yaml", base_dir=base_dir, environ=env or {}, **kw
    )


def problems(text: str, base_dir: Path = Path("/srv/app"), **kw: Any) -> str:
    with pytest.raises(DesiredStateError) as info:
        parse(text, base_dir, **kw)
    message = str(info.value)
    assert message.startswith("state.yaml: invalid desired state:\n")
    return message


def web(text: str, **kw: Any):
    return parse(text, **kw).service("web")


def env_of(text: str, **kw: Any) -> dict[str, str]:
    entries = web(text, **kw).replicas[0].environment
    return dict(e.partition("=")[::2] for e in entries)


HEAD = """\
project: p
services:
  web:
    image: busybox:1
"""


# ------------------------------------------------------------------------ YAML 1.2


def test_base_60_port_stays_a_string() -> None:
    """YAML 1.1 read `2222:22` as 133342 and `22:22` as 1342; YAML 1.2 keeps the text."""
    svc = web(HEAD + "    ports: [2222:22, 22:22/udp]\n")
    ports = [(p.host_port, p.container_port, p.protocol) for p in svc.replicas[0].ports]
    assert ports == [(2222, 22, "tcp"), (22, 22, "udp")]


def test_environment_values_are_kept_as_written() -> None:
    """`012`, `yes`, `on`, `22:22`, `1.50` stay as written; true/false are lowercase; `''`
    is an empty value (a bare `EMPTY:` takes the environment's: see the passthrough test)."""
    env = env_of(
        HEAD
        + """\
    environment:
      OCTAL: 012
      YES: yes
      ON: on
      SIXTY: 22:22
      FLOAT: 1.50
      BOOL: True
      EMPTY: ''
      QUOTED: "007"
"""
    )
    assert env == {
        "OCTAL": "012",
        "YES": "yes",
        "ON": "on",
        "SIXTY": "22:22",
        "FLOAT": "1.50",
        "BOOL": "true",
        "EMPTY": "",
        "QUOTED": "007",
    }


@pytest.mark.parametrize("flag", ["yes", "on", "1", '"y"'])
def test_a_flag_is_true_or_false_only(flag: str) -> None:
    """`yes`/`on` are strings in YAML 1.2 and a number is not a flag: refused, with the line."""
    msg = problems(HEAD + f"    read_only: {flag}\n")
    assert "state.yaml:5:16: services.web.read_only: must be true or false" in msg


@pytest.mark.parametrize("count", ["true", "2.5", "two"])
def test_replicas_must_be_an_integer(count: str) -> None:
    """`replicas: true` was 1 under YAML 1.1 and pydantic's lax mode: now refused."""
    msg = problems(HEAD + f"    replicas: {count}\n")
    assert "state.yaml:5:15: services.web.replicas: must be an integer" in msg


def test_timestamps_are_text_and_octal_is_yaml_12() -> None:
    """A date is not turned into a datetime; `0o12` is YAML 1.2's octal ten."""
    svc = web(HEAD + "    command: [echo, 2024-01-01]\n    user: 0o12\n")
    assert svc.replicas[0].command == ("echo", "2024-01-01")
    assert svc.replicas[0].user == "10"


def test_yaml_11_directive_does_not_bring_base_60_back() -> None:
    """A `%YAML 1.1` directive is read with the 1.2 core schema all the same."""
    svc = web("%YAML 1.1\n---\n" + HEAD + "    ports: [2222:22]\n")
    assert svc.replicas[0].ports[0].host_port == 2222


def test_duplicate_key_is_an_error_naming_both_lines() -> None:
    """A key given twice was silently overwritten by the second: now an error."""
    msg = problems(HEAD + "    replicas: 2\n  web:\n    image: busybox:2\n")
    assert (
        "state.yaml:6:3: services.web: duplicate key 'web' (first at line 3); "
        "a key may appear once per mapping" in msg
    )


def test_duplicate_key_deeper_down() -> None:
    """Duplicates are found in every mapping, not only at the top."""
    msg = problems(HEAD + "    environment:\n      A: 1\n      A: 2\n")
    assert "state.yaml:7:7: services.web.environment.A: duplicate key 'A' (first at line 6)" in msg


def test_aliases_merge_keys_and_extension_fields_work() -> None:
    """Anchors in an x- key, `<<: *anchor` (own keys win), lists of merges, aliases."""
    text = """\
        x-base: &base
          image: busybox:1
          restart: always
          environment: &env {A: "1", B: "2"}
        x-more: &more {labels: {tier: web}}
        project: p
        services:
          web:
            <<: [*base, *more]
            restart: "no"
          api:
            <<: *base
            environment: *env
        """
    state = parse(text)
    web_spec, api_spec = state.service("web").replicas[0], state.service("api").replicas[0]
    assert (web_spec.image, web_spec.restart, web_spec.labels) == (
        "busybox:1",
        "no",
        (("tier", "web"),),
    )
    assert api_spec.restart == "always" and api_spec.environment == ("A=1", "B=2")


def test_alias_bomb_is_refused_cheaply() -> None:
    """A billion laughs: nine levels of nine aliases. Refused after MAX_NODES steps, with the
    line, without expanding it (composing shares the nodes; the walk counts them). Of empty
    strings, so that it expands to no text: a bomb of text is refused earlier, at the alias
    whose expansion passes its bound (tests/test_hostile.py)."""
    lines = ['a0: &a0 ["", "", "", "", "", "", "", "", ""]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    msg = problems("\n".join(lines) + "\nservices: {web: {image: x}}\n")
    assert f"expands to more than {MAX_NODES} values" in msg
    assert "state.yaml:1:" in msg


def test_recursive_alias_is_refused() -> None:
    """An alias inside the collection it names is refused, not followed forever."""
    assert "state.yaml:1:4: an alias refers to a collection that contains it" in problems(
        "a: &x [*x]\nservices: {web: {image: x}}\n"
    )


def test_deep_nesting_is_refused() -> None:
    """Nesting past the limit is a clear error, not a RecursionError."""
    msg = problems("a: " + "[" * 2000 + "]" * 2000 + "\n")
    assert "malformed YAML: nested more than 64 levels deep" in msg


def test_syntax_error_has_file_line_column_and_context() -> None:
    """A syntax error points at the line and column, and at where the construct started."""
    msg = problems(HEAD + "    command: [sh, -c\n    restart: always\n")
    assert "state.yaml:6:" in msg and "malformed YAML" in msg
    assert "started at line 5, column 14" in msg


def test_two_documents_are_refused() -> None:
    """One file, one document."""
    assert "state.yaml:5:1: malformed YAML: expected a single document" in problems(
        HEAD + "---\n" + HEAD
    )


def test_unknown_tag_is_refused() -> None:
    """Only YAML's core types are read (no !!python/..., no custom tags)."""
    assert "state.yaml:4:12: unsupported tag !env" in problems(
        "project: p\nservices:\n  web:\n    image: !env IMG\n"
    )


def test_not_utf8_names_the_line() -> None:
    """Bytes that are not UTF-8 are refused with their line."""
    with pytest.raises(DesiredStateError, match=r"state\.yaml:2:4: the file is not UTF-8"):
        loader.parse(b"a: 1\nb: \xff\xfe\n", source="state.yaml", base_dir=Path("/srv"))


def test_control_character_names_the_line() -> None:
    """A character YAML forbids is reported at its line and column."""
    msg = problems(HEAD + "    hostname: a\x01b\n")
    assert "state.yaml:5:16: malformed YAML: a character YAML does not allow" in msg


# ------------------------------------------------------------------------ line numbers


def test_schema_errors_carry_line_and_column() -> None:
    """pydantic's errors point at the value (an unknown key at the key), all at once."""
    msg = problems(
        """\
        project: p
        services:
          web:
            image: busybox:1
            replicas: -1
            replicaz: 2
            healthcheck:
              interval: 5s
            deploy:
              update_config: {order: sideways}
        """
    )
    assert "state.yaml:5:15: services.web.replicas: must be >= 0" in msg
    assert "state.yaml:6:5: services.web.replicaz: unknown key" in msg
    assert "state.yaml:7:5: services.web.healthcheck.test: is required" in msg
    assert "state.yaml:10:30: services.web.deploy.update_config.order: must be one of" in msg
    # sorted by line
    lines = msg.splitlines()[1:]
    assert [int(line.split(":")[1]) for line in lines] == sorted(
        int(line.split(":")[1]) for line in lines
    )


def test_cross_field_errors_carry_line_and_column() -> None:
    """depends_on, networks, volumes, ports, heal: each at its own line."""
    msg = problems(
        """\
        project: p
        services:
          web:
            image: busybox:1
            depends_on:
              - db
            networks: [front]
            volumes: ["data:/data"]
            ports:
              - "99999:80"
            heal: {backoff_initial: 10s, backoff_max: 1s}
        """
    )
    assert "state.yaml:6:9: services.web.depends_on: unknown service 'db'" in msg
    assert (
        "state.yaml:7:16: services.web.networks: network 'front' is not declared under networks"
        in msg
    )
    assert "state.yaml:8:15: services.web.volumes[0]: volume 'data' is not declared" in msg
    assert "state.yaml:10:9: services.web.ports[0]: host port 99999 is out of range" in msg
    assert "state.yaml:11:47: services.web.heal.backoff_max: must be >= backoff_initial" in msg


def test_a_block_value_points_at_its_key() -> None:
    """An error about a whole block (a service) points at the key's line, not the block's."""
    msg = problems("project: p\nservices:\n  web:\n    restart: always\n")
    assert "state.yaml:3:3: services.web: needs image or build" in msg


def test_depends_on_cycle_points_at_a_depends_on() -> None:
    """The cycle is reported once, at the depends_on of a service in it."""
    msg = problems(
        """\
        project: p
        services:
          a: {image: x, depends_on: [b]}
          b: {image: x, depends_on: [a]}
        """
    )
    assert "services: depends_on has a cycle" in msg
    assert "state.yaml:3:29: services:" in msg or "state.yaml:4:29: services:" in msg


# ------------------------------------------------------------------------ interpolation

VARS = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$SET", "value"),
        ("${SET}", "value"),
        ("x${SET}y", "xvaluey"),
        ("$SET.conf", "value.conf"),
        ("${UNSET:-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${SET:-default}", "value"),
        ("${UNSET-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${SET?must be set}", "value"),
        ("${EMPTY?must be set}", ""),
        ("${SET:?must be set}", "value"),
        ("${SET:+replaced}", "replaced"),
        ("${EMPTY:+replaced}", ""),
        ("${EMPTY+replaced}", "replaced"),
        ("${UNSET+replaced}", ""),
        ("${UNSET:-${SET}}", "value"),
        ("${UNSET:-a-${UNSET2:-b}}", "a-b"),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("cost: 5$", "cost: 5$"),
        ("$1", "$1"),
    ],
)
def test_interpolation_forms(template: str, expected: str) -> None:
    """Each of compose's forms, substituted in an environment value."""
    assert env_of(HEAD + f"    environment:\n      X: '{template}'\n", env=VARS)["X"] == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "${UNSET}",
            "state.yaml:6:10: services.web.environment.X: variable UNSET is not set and has no "
            "default",
        ),
        ("$UNSET", "variable UNSET is not set"),
        ("${UNSET:?tell me}", "required variable UNSET is missing a value: tell me"),
        ("${EMPTY:?tell me}", "required variable EMPTY is empty: tell me"),
        ("${UNSET?}", "required variable UNSET is missing a value"),
        ("${SET", "invalid interpolation: unclosed ${ ... }"),
        ("${}", "invalid interpolation: ${} needs a variable name"),
        ("${SET!}", "invalid interpolation: unknown operator after SET"),
    ],
)
def test_interpolation_errors_name_the_variable_and_line(template: str, message: str) -> None:
    """An unset variable without a default is an error (compose only warns), with its line."""
    msg = problems(HEAD + f"    environment:\n      X: '{template}'\n", env=VARS)
    assert message in msg


def test_every_unset_variable_is_reported_at_once() -> None:
    """All interpolation problems come back together, each at its line."""
    msg = problems("project: p\nservices:\n  web:\n    image: ${IMG}\n    user: ${USR}\n")
    assert "state.yaml:4:12: services.web.image: variable IMG is not set" in msg
    assert "state.yaml:5:11: services.web.user: variable USR is not set" in msg


def test_interpolated_values_take_the_fields_type() -> None:
    """`replicas: ${N}` gives a count and `read_only: ${RO}` a flag, as compose casts them."""
    text = HEAD + "    replicas: ${N}\n    read_only: ${RO}\n    stop_grace_period: ${G}\n"
    svc = web(text, env={"N": "3", "RO": "true", "G": "1m"})
    assert len(svc.replicas) == 3
    assert svc.replicas[0].read_only is True and svc.replicas[0].stop_grace_s == 60.0


def test_keys_are_not_interpolated() -> None:
    """Only values are: a `$` in a key stays as written."""
    env = env_of(HEAD + "    environment:\n      ${SET}: x\n", env=VARS)
    assert env == {"${SET}": "x"}


def test_interpolation_in_lists_and_nested_values() -> None:
    """Scalars anywhere: command items, list-form environment, labels, image."""
    svc = web(
        "project: p\nservices:\n  web:\n    image: busybox:${TAG:-1}\n"
        "    command: [echo, $SET]\n    environment: [A=$SET]\n    labels: {l: '${SET}'}\n",
        env=VARS,
    )
    spec = svc.replicas[0]
    assert (spec.image, spec.command, spec.environment, spec.labels) == (
        "busybox:1",
        ("echo", "value"),
        ("A=value",),
        (("l", "value"),),
    )


def write_project(tmp_path: Path, text: str, **files: str) -> Path:
    for name, content in files.items():
        (tmp_path / name.replace("_dot_", ".")).write_text(textwrap.dedent(content))
    path = tmp_path / "desired_state.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_dotenv_gives_values_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """.env beside the file feeds ${VAR}; a variable set in the environment wins (compose)."""
    path = write_project(
        tmp_path,
        HEAD + "    environment: {A: $FROM_DOTENV, B: $BOTH, C: '${QUOTED}'}\n",
        _dot_env="""\
            # a comment
            FROM_DOTENV=dotenv
            export BOTH=dotenv
            QUOTED='single $quoted'  # kept literally
            """,
    )
    monkeypatch.setenv("BOTH", "environment")
    monkeypatch.delenv("FROM_DOTENV", raising=False)
    spec = loader.load(path).service("web").replicas[0]
    assert spec.environment == ("A=dotenv", "B=environment", "C=single $quoted")


def test_dotenv_is_watched_and_in_the_digest(tmp_path: Path) -> None:
    """Editing .env changes the state's digest; .env is watched even before it exists."""
    path = write_project(tmp_path, HEAD + "    environment: {A: '${V:-x}'}\n")
    before = loader.load(path)
    assert str(tmp_path / ".env") in before.watched
    (tmp_path / ".env").write_text("V=y\n")
    after = loader.load(path)
    assert after.digest != before.digest
    assert after.service("web").replicas[0].spec_hash != before.service("web").replicas[0].spec_hash


def test_dotenv_errors_name_the_env_file_line(tmp_path: Path) -> None:
    """A bad .env line is reported as .env:LINE, without its value."""
    path = write_project(
        tmp_path, HEAD, _dot_env="GOOD=1\nthis is not an assignment\nPW='unterminated\n"
    )
    with pytest.raises(DesiredStateError) as info:
        loader.load(path)
    msg = str(info.value)
    assert f"{tmp_path / '.env'}:2: this: expected KEY=VALUE" in msg
    assert f"{tmp_path / '.env'}:3: PW: the ' quote is never closed" in msg
    assert "unterminated" not in msg


# ------------------------------------------------------------------------ env_file


def test_env_file_is_read_relative_to_the_file(tmp_path: Path) -> None:
    """KEY=VALUE lines, comments, quotes, export, later files and environment win."""
    path = write_project(
        tmp_path,
        HEAD
        + """\
    env_file: [conf/app.env, conf/override.env]
    environment: {FROM_ENV: environment, SHARED: environment}
""",
    )
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/app.env").write_text(
        textwrap.dedent(
            """\
            # comment
            PLAIN=one two   # trailing comment
            export EXPORTED=yes
            DOUBLE="a\\nb"
            SINGLE='$not_a_var'
            EMPTY=
            SHARED=file
            OVERRIDDEN=first
            REF=${PLAIN}-ref
            """
        )
    )
    (tmp_path / "conf/override.env").write_text("OVERRIDDEN=second\n")
    env = dict(
        e.partition("=")[::2] for e in loader.load(path).service("web").replicas[0].environment
    )
    assert env == {
        "PLAIN": "one two",
        "EXPORTED": "yes",
        "DOUBLE": "a\nb",
        "SINGLE": "$not_a_var",
        "EMPTY": "",
        "SHARED": "environment",
        "OVERRIDDEN": "second",
        "REF": "one two-ref",
        "FROM_ENV": "environment",
    }


def test_env_file_as_a_string_and_long_form(tmp_path: Path) -> None:
    """env_file: a string, a list, or {path, required} (alone or in the list); an absent
    optional file is skipped."""
    (tmp_path / "a.env").write_text("A=1\n")
    one = write_project(tmp_path, HEAD + "    env_file: a.env\n")
    assert loader.load(one).service("web").replicas[0].environment == ("A=1",)
    long = write_project(
        tmp_path,
        HEAD + "    env_file:\n      - path: a.env\n      - {path: absent.env, required: false}\n",
    )
    state = loader.load(long)
    assert state.service("web").replicas[0].environment == ("A=1",)
    assert str(tmp_path / "absent.env") in state.watched  # created later: noticed
    single = write_project(tmp_path, HEAD + "    env_file: {path: gone.env, required: false}\n")
    assert loader.load(single).service("web").replicas[0].environment == ()
    required = write_project(tmp_path, HEAD + "    env_file: {path: gone.env}\n")
    with pytest.raises(DesiredStateError, match=r"services\.web\.env_file: env file 'gone.env'"):
        loader.load(required)


def test_env_file_edit_changes_the_spec_hash_and_revision(tmp_path: Path) -> None:
    """The content is part of the container's environment: an edit is a pending change."""
    env = tmp_path / "app.env"
    env.write_text("A=1\n")
    path = write_project(tmp_path, HEAD + "    env_file: [app.env]\n")
    before = loader.load(path)
    env.write_text("A=2\n")
    after = loader.load(path)
    b, a = before.service("web"), after.service("web")
    assert b.replicas[0].spec_hash != a.replicas[0].spec_hash
    assert b.revision != a.revision
    assert before.digest != after.digest and str(env) in after.watched


def test_env_file_spelling_does_not_matter(tmp_path: Path) -> None:
    """The same variables from an env_file or from environment give the same container."""
    (tmp_path / "app.env").write_text("A=1\n")
    via_file = write_project(tmp_path, HEAD + "    env_file: app.env\n")
    file_spec = loader.load(via_file).service("web")
    inline = write_project(tmp_path, HEAD + "    environment: {A: '1'}\n")
    inline_spec = loader.load(inline).service("web")
    assert file_spec.replicas[0].spec_hash == inline_spec.replicas[0].spec_hash
    assert file_spec.revision == inline_spec.revision


def test_missing_env_file_names_it_and_its_line(tmp_path: Path) -> None:
    """A missing env_file is an error with the file's line and the path it looked at."""
    path = write_project(tmp_path, HEAD + "    env_file:\n      - nope.env\n")
    with pytest.raises(DesiredStateError) as info:
        loader.load(path)
    assert (
        f"{path}:6:9: services.web.env_file[0]: env file 'nope.env' not found "
        f"({tmp_path / 'nope.env'})" in str(info.value)
    )


def test_unreadable_env_file_names_it_and_its_line(tmp_path: Path) -> None:
    """A folder (or an unreadable file) given as env_file: refused at its line."""
    (tmp_path / "conf").mkdir()
    path = write_project(tmp_path, HEAD + "    env_file: conf\n")
    with pytest.raises(DesiredStateError) as info:
        loader.load(path)
    assert f"{path}:5:15: services.web.env_file: env file 'conf' cannot be read" in str(info.value)


def test_bad_env_file_line_is_reported_at_its_line(tmp_path: Path) -> None:
    """A line that is not KEY=VALUE: env file and line; the value is never echoed."""
    (tmp_path / "app.env").write_text("A=1\nB=${NOT_SET}\n-bad\n")
    path = write_project(tmp_path, HEAD + "    env_file: app.env\n")
    with pytest.raises(DesiredStateError) as info:
        loader.load(path)
    msg = str(info.value)
    assert f"{tmp_path / 'app.env'}:2: B: variable NOT_SET is not set" in msg
    assert f"{tmp_path / 'app.env'}:3: expected KEY=VALUE" in msg


# ------------------------------------------------------------------------ secrets


def test_errors_never_echo_a_secret_value() -> None:
    """A value a secret-looking variable gave is never quoted by a message: neither by the
    schema's (which name no input) nor by the cross-field checks' (which quote names)."""
    env = {"API_TOKEN": "tok-12345", "DB_PASSWORD": "hunter22"}
    msg = problems(HEAD + "    stop_grace_period: ${DB_PASSWORD}\n", env=env)
    assert "state.yaml:5:24: services.web.stop_grace_period: must be a duration" in msg
    assert "hunter22" not in msg
    msg = problems(
        HEAD + "    ports: ['${API_TOKEN}']\n    depends_on: ['${DB_PASSWORD}']\n", env=env
    )
    assert "tok-12345" not in msg and "hunter22" not in msg
    assert "state.yaml:5:13: services.web.ports[0]: cannot parse port '[redacted]'" in msg
    assert "state.yaml:6:18: services.web.depends_on: unknown service '[redacted]'" in msg


def test_a_dollar_in_a_secret_literal_is_not_quoted() -> None:
    """`DB_PASSWORD: abc$def`: the error does not name `def` (a piece of the password)."""
    msg = problems(HEAD + "    environment:\n      DB_PASSWORD: abc$def\n")
    assert "def" not in msg.split("DB_PASSWORD")[-1]
    assert "state.yaml:6:20: services.web.environment.DB_PASSWORD: a $ reference" in msg


def test_a_bare_environment_name_takes_its_value_from_the_environment(
    tmp_path: Path,
) -> None:
    """`- NAME` and `NAME:` (no value) take the environment's value, else .env's (compose);
    one set by neither is left out with a warning naming its line; a secret-looking name's
    value is marked secret."""
    (tmp_path / ".env").write_text("FROM_DOTENV=dotenv-value\nDB_PASSWORD=not-this\n")
    (tmp_path / "a.env").write_text("GONE=from-env-file\n")  # a bare GONE unsets it
    heard: list[str] = []
    state = loader.parse(
        HEAD
        + "    env_file: a.env\n"
        + "    environment: [DB_PASSWORD, FROM_DOTENV, NOWHERE, GONE, 'EMPTY=', PLAIN=x]\n"
        + "  other:\n    image: busybox:1\n    environment: {DB_PASSWORD: , NOWHERE: }\n",
        source="state.yaml",
        base_dir=tmp_path,
        environ={"DB_PASSWORD": "pw-from-env"},
        warn=heard.append,
    )
    env = state.service("web").replicas[0].environment
    assert env == ("DB_PASSWORD=pw-from-env", "EMPTY=", "FROM_DOTENV=dotenv-value", "PLAIN=x")
    assert state.service("other").replicas[0].environment == ("DB_PASSWORD=pw-from-env",)
    assert "pw-from-env" in state.secrets and "dotenv-value" not in state.secrets
    assert sorted(heard) == [
        "state.yaml:6:45: services.web.environment[2]: NOWHERE is set neither in the "
        "environment nor in .env: left out of the container's environment (as compose does)",
        "state.yaml:6:54: services.web.environment[3]: GONE is set neither in the environment "
        "nor in .env: left out of the container's environment (as compose does)",
        "state.yaml:9:34: services.other.environment.NOWHERE: NOWHERE is set neither in the "
        "environment nor in .env: left out of the container's environment (as compose does)",
    ]


def test_secret_values_are_marked_and_never_shown() -> None:
    """Interpolated secrets are on DesiredState.secrets and in the registry the logs and the
    CLI scrub with; a ContainerSpec's repr leaves its environment out."""
    state = parse(
        HEAD + "    environment: {DSN: 'postgres://u:${DB_PASSWORD}@db', PLAIN: '${SET}'}\n",
        env={"DB_PASSWORD": "hunter22", "SET": "visible"},
    )
    assert "hunter22" in state.secrets
    assert "visible" not in state.secrets
    assert "hunter22" in secrets.known()
    spec = state.service("web").replicas[0]
    assert "hunter22" not in repr(spec) and "hunter22" not in repr(state)
    assert "hunter22" not in describe(CreateContainer(spec, "missing"))
    assert secrets.redact("exec: --dsn=postgres://u:hunter22@db") == "exec: --dsn=[redacted]"
    assert secrets.redact("password hunter22 refused") == "password [redacted] refused"


def test_logs_scrub_marked_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    """A log line quoting a marked value (Docker's error text) shows [redacted] instead."""
    parse(HEAD + "    command: [app, '--token=${API_TOKEN}']\n", env={"API_TOKEN": "s3cr3t-tok"})
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs.configure("info", json=True)
    try:
        structlog.get_logger().error("create failed", error="exec --token=s3cr3t-tok: no")
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "s3cr3t-tok" not in out and "[redacted]" in out


class _StubEngine:
    """Just enough of Engine for render_status: one replica, exited."""

    def __init__(self, name: str) -> None:
        self.name = name

    def observe(self, project: str) -> Observed:
        return Observed(
            containers=(ObservedContainer("id1", self.name, "web", 1, "h", "exited", None, 1),)
        )

    def inspect(self, cid: str) -> dict[str, Any]:
        return {"RestartCount": 0}

    def log_tail(self, cid: str, n: int) -> list[str]:
        return ["boom"]


def test_status_prints_no_environment_value() -> None:
    """`reconciler status` shows the image, counts and states: no environment value."""
    state = parse(
        HEAD + "    environment: {DB_PASSWORD: '${DB_PASSWORD}', OTHER: plain-value}\n",
        env={"DB_PASSWORD": "hunter22"},
    )
    out = render_status(state, _StubEngine("p-web-1"))  # type: ignore[arg-type]
    assert "busybox:1" in out and "p-web-1: exited (1)" in out
    assert "hunter22" not in out and "plain-value" not in out


# ------------------------------------------------------------------------ names and limits


@pytest.mark.parametrize("name", ["we b/x", "-web", "_web", "web!", "ünï"])
def test_service_names_docker_and_dns_accept(name: str) -> None:
    """A service name is a container-name part and a DNS alias."""
    msg = problems(f'project: p\nservices:\n  "{name}":\n    image: x\n')
    assert f"state.yaml:3:3: services.{name}: is not a valid service name" in msg


def test_service_name_dns_label_length() -> None:
    """A service name is a DNS name: each label at most 63 characters."""
    name = "a" * 64
    assert "at most 63 characters per label" in problems(
        f"project: p\nservices:\n  {name}:\n    image: x\n"
    )


@pytest.mark.parametrize("project", ["My-Stack", "-p", "a" * 64, "a" * 256, "p q"])
def test_project_names_lowercase_and_short(project: str) -> None:
    """project: must be what compose and Docker take (a 256-character one crashed `run`)."""
    msg = problems(f'project: "{project}"\nservices:\n  web: {{image: x}}\n')
    assert "state.yaml:1:10: project: must be lowercase letters, digits" in msg


def test_compose_name_is_the_project() -> None:
    """Top-level `name:` (compose) is accepted as `project:`; both must agree."""
    assert parse("name: shop\nservices:\n  web: {image: x}\n").project == "shop"
    same = "name: shop\nproject: shop\nservices:\n  web: {image: x}\n"
    assert parse(same).project == "shop"
    msg = problems("project: shop\nname: other\nservices:\n  web: {image: x}\n")
    assert "state.yaml:2:7: name: conflicts with project: 'shop'" in msg
    assert "must be lowercase" in problems("name: Shop\nservices:\n  web: {image: x}\n")


def test_project_from_a_long_folder_name(tmp_path: Path) -> None:
    """A folder whose name gives a project over 63 characters: set name: instead."""
    folder = tmp_path / ("x" * 70)
    folder.mkdir()
    with pytest.raises(DesiredStateError, match="set name: in the file"):
        parse("services:\n  web: {image: x}\n", base_dir=folder)


@pytest.mark.parametrize("name", ["w", "-w", "my web", "w/x"])
def test_container_name_valid_for_docker(name: str) -> None:
    """Docker takes [a-zA-Z0-9][a-zA-Z0-9_.-]+ (two characters at least)."""
    msg = problems(HEAD + f'    container_name: "{name}"\n')
    assert f"state.yaml:5:21: services.web.container_name: {name!r} is not a valid" in msg


def test_container_name_length() -> None:
    """Explicit and generated container names are at most 128 characters."""
    assert "at most 128 characters" in problems(HEAD + f"    container_name: {'c' * 129}\n")
    service = "s" * 60
    project = "p" * 63
    text = f"project: {project}\nservices:\n  {service}:\n    image: x\n    replicas: 1000\n"
    msg = problems(text)
    assert f"state.yaml:3:3: services.{service}: its containers would be named like" in msg
    assert "129 characters, Docker takes at most 128" in msg
    assert len(web(text.replace("1000", "999").replace(service, "web")).replicas) == 999


def test_container_name_equal_to_a_generated_name_is_refused() -> None:
    """`container_name: p-b-1` in a next to b, whose replica 1 has that name (it made the
    daemon recreate the container 55 times in 20 s)."""
    msg = problems(
        """\
        project: p
        services:
          a: {image: x, container_name: p-b-1}
          b: {image: x}
        """
    )
    assert (
        "state.yaml:3:33: services.a.container_name: 'p-b-1' is the name of replica 1 of "
        "service 'b'" in msg
    )
    ok = "project: p\nservices:\n  a: {image: x, container_name: p-b-2}\n  b: {image: x}\n"
    assert parse(ok).service("a").replicas[0].name == "p-b-2"  # b has one replica


def test_two_services_with_one_container_name() -> None:
    """Explicit container names are unique across services."""
    msg = problems(
        "project: p\nservices:\n  a: {image: x, container_name: same}\n"
        "  b: {image: x, container_name: same}\n"
    )
    assert "state.yaml:4:33: services.b.container_name: 'same' is also the container_name" in msg


def test_huge_replicas_is_refused_at_once() -> None:
    """`replicas: 99999999999999999999` hung validate (4.7 GB after 300 s): the bound is
    checked by the schema, before anything makes one spec per replica."""
    msg = problems(HEAD + "    replicas: 99999999999999999999\n")
    assert "state.yaml:5:15: services.web.replicas: must be <= 1000" in msg
    assert "RECONCILER_MAX_REPLICAS" in msg
    assert "services.web.deploy.replicas: must be <= 1000" in problems(
        HEAD + "    deploy: {replicas: 1001}\n"
    )


def test_replica_limit_is_configurable() -> None:
    """RECONCILER_MAX_REPLICAS (or max_replicas=) moves the bound."""
    text = HEAD + "    replicas: 5\n"
    assert "must be <= 4" in problems(text, env={"RECONCILER_MAX_REPLICAS": "4"})
    assert len(web(text, env={"RECONCILER_MAX_REPLICAS": "5"}).replicas) == 5
    assert "must be <= 2" in problems(text, max_replicas=2)
    bad = problems(text, env={"RECONCILER_MAX_REPLICAS": "lots"})
    assert "$RECONCILER_MAX_REPLICAS: must be a whole number" in bad


def test_host_port_used_twice_across_services() -> None:
    """No two services (or replicas) on one host port, IP and protocol."""
    msg = problems(
        """\
        project: p
        services:
          a: {image: x, ports: ["8080:80"]}
          b: {image: x, ports: ["0.0.0.0:8080:81"]}
        """
    )
    assert (
        "state.yaml:4:25: services.b.ports[0]: host port 0.0.0.0:8080/tcp (replica 1) is also "
        "bound by service 'a' (ports[0], replica 1)" in msg
    )


def test_host_port_ranges_overlapping() -> None:
    """A range of one service overlapping another's port is found per replica."""
    msg = problems(
        """\
        project: p
        services:
          a: {image: x, replicas: 3, ports: ["9100-9102:9100"]}
          b: {image: x, ports: ["9102:80"]}
        """
    )
    assert "services.b.ports[0]: host port 9102/tcp (replica 1) is also bound by service 'a'" in msg
    assert "replica 3" in msg


def test_host_ports_that_do_not_clash() -> None:
    """Other protocol, other specific IP, or no host port: no clash."""
    state = parse(
        """\
        project: p
        services:
          a: {image: x, ports: ["127.0.0.1:53:53", "53:53/udp"]}
          b: {image: x, ports: ["127.0.0.2:53:53", "53"]}
          c: {image: x, ports: ["[::1]:53:53"]}
        """
    )
    assert len(state.services) == 3


def test_same_host_port_twice_in_one_service() -> None:
    """Two entries of one service on one host port clash too."""
    msg = problems(HEAD + '    ports: ["80:80", "80:8080"]\n')
    assert "services.web.ports[1]: host port 80/tcp (replica 1) is also bound by service 'web'" in (
        msg
    )


def test_unbalanced_quote_in_a_command_string() -> None:
    """A command string is split like a shell would: an unbalanced quote is an error."""
    msg = problems(HEAD + '    command: "echo \'unterminated"\n')
    assert "state.yaml:5:14: services.web.command: cannot split into words" in msg


def test_shipped_file_still_loads() -> None:
    """The repository's desired_state.yaml loads, with its anchors-free YAML unchanged."""
    state = loader.load(ROOT / "desired_state.yaml")
    assert state.project == "monitoring"
    assert [p.host_port for p in state.service("haproxy").replicas[0].ports] == [8000, 8404]


# ------------------------------------------------------------------------ fuzz

_SHIPPED = (ROOT / "desired_state.yaml").read_text()
_SMALL = textwrap.dedent(
    """\
    x-base: &base {image: "busybox:${TAG:-1}", restart: always}
    name: fuzz
    networks: {front: {}}
    volumes: {"data_{replica}": {}}
    services:
      web:
        <<: *base
        replicas: 2
        ports: ["127.0.0.1:8000-8001:80", 9000:9000/udp]
        environment: {A: 012, B: "${B:-b}", C: $$literal}
        networks: {front: {aliases: [www]}}
        volumes: ["data_{replica}:/data", "./conf:/etc/conf:ro"]
        healthcheck: {test: [CMD, "true"], interval: 5s}
        deploy: {update_config: {parallelism: 1, order: stop-first}}
      worker:
        <<: *base
        depends_on: [web]
        command: "sh -c 'sleep 1'"
        network_mode: "service:web"
    """
)
_VALID = [_SHIPPED, _SMALL]
_SYNTAX = list(":-[]{}&*!|>'\"%@#`,?$\t \n0123456789~<")


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    """A valid file with lines deleted, duplicated, swapped, or characters inserted."""
    lines = draw(st.sampled_from(_VALID)).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "insert"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            pos = draw(st.integers(0, len(lines[i])))
            chars = draw(
                st.text(st.sampled_from(_SYNTAX) | st.characters(), min_size=1, max_size=4)
            )
            lines[i] = lines[i][:pos] + chars + lines[i][pos:]
    return "\n".join(lines)


def _only_our_error(raw: bytes | str) -> None:
    try:
        loader.parse(raw, source="fuzz.yaml", base_dir=ROOT, environ={"TAG": "1"})
    except DesiredStateError as exc:
        assert str(exc).startswith("fuzz.yaml: invalid desired state:\n")


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=1500))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    """Arbitrary bytes: parsed or refused with DesiredStateError, never anything else."""
    _only_our_error(raw)


@_FUZZ
@given(_mutated())
def test_fuzz_mutated_valid_files(text: str) -> None:
    """Valid files with lines deleted, duplicated, swapped or characters inserted: parsed or
    refused with DesiredStateError, never anything else (as text and as bytes)."""
    _only_our_error(text)
    _only_our_error(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services:\n  grafana:\n", "state.yaml:2:3: services.grafana: expected a mapping of "
         "the service's keys, got nothing (null)"),
        ("services:\n  web:\n    image: x:1\n    volumes:\n",
         "state.yaml:4:5: services.web.volumes: expected a list, got nothing (null)"),
        ("services:\n  web:\n    image: x:1\n    healthcheck: 5\n",
         "services.web.healthcheck: expected a mapping of the healthcheck's keys, got a number"),
        ("services:\n  web:\n    image: x:1\n    environment: 3\n",
         "services.web.environment: expected a mapping or a list, got a number"),
        ("networks:\n  front:\n    ipam: [1]\n",
         "networks.front.ipam: expected a mapping of the ipam's keys, got a list"),
    ],
)  # fmt: skip
def test_a_cut_off_file_is_told_in_the_files_terms(text: str, expected: str) -> None:
    """Never pydantic's words (`instance of ServiceDef`): what the file should hold there,
    and what kind of value it holds (never the value: it may be a secret)."""
    message = problems(text)
    assert expected in message, message
    assert "Def" not in message and "input should be" not in message.lower()
