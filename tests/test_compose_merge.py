"""Several compose files as one model: compose-spec's merge examples (13-merge.md), !reset and
!override, extends (same file, another file), include, -f / COMPOSE_FILE / the override file,
errors at the file:line:column they came from, and what the daemon watches."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from reconciler.cli.main import main
from reconciler.config import compose_merge, compose_sources, loader
from reconciler.config.compose_tree import read_as_written
from reconciler.config.yamlread import compose, core_value, read
from reconciler.errors import DesiredStateError
from reconciler.ops import logs
from reconciler.runtime.daemon import Daemon, Options
from reconciler.targets.host import KIND as HOST


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main()` called here: its log set-up would bind later tests' logs to this test's
    captured stderr (closed by then)."""
    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)


def merged(*texts: str) -> Any:
    """The model of `texts` merged in order (values as written)."""
    acc = None
    for i, text in enumerate(texts):
        node = compose(textwrap.dedent(text))
        doc = read(node, lambda _p, s: core_value(s.tag, s.text))
        acc = compose_merge.merge(acc, compose_merge.located(doc, f"f{i}.yml"))
    assert acc is not None
    return compose_merge.plain(acc)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# compose-spec 13-merge.md, each example: (base, override, result)
SPEC_EXAMPLES = [
    (  # Mapping
        "services: {foo: {key1: value1, key2: value2}}",
        "services: {foo: {key2: VALUE, key3: value3}}",
        {"services": {"foo": {"key1": "value1", "key2": "VALUE", "key3": "value3"}}},
    ),
    (  # Sequence
        "services: {foo: {dns: [1.1.1.1]}}",
        "services: {foo: {dns: [8.8.8.8]}}",
        {"services": {"foo": {"dns": ["1.1.1.1", "8.8.8.8"]}}},
    ),
    (  # Shell commands
        'services: {foo: {command: ["echo", "foo"]}}',
        'services: {foo: {command: ["echo", "bar"]}}',
        {"services": {"foo": {"command": ["echo", "bar"]}}},
    ),
    (  # Unique resources
        "services: {foo: {volumes: [foo:/work]}}",
        "services: {foo: {volumes: [bar:/work]}}",
        {"services": {"foo": {"volumes": ["bar:/work"]}}},
    ),
    (  # Reset value
        'services: {app: {image: myapp, ports: ["8080:80"], environment: {FOO: BAR}}}',
        "services: {app: {image: myapp, ports: !reset [], environment: {FOO: !reset null}}}",
        {"services": {"app": {"image": "myapp", "environment": {}}}},
    ),
    (  # Replace value
        'services: {app: {image: myapp, ports: ["8080:80"]}}',
        'services: {app: {ports: !override ["8443:443"]}}',
        {"services": {"app": {"image": "myapp", "ports": ["8443:443"]}}},
    ),
    (  # entrypoint and healthcheck.test are replaced too; other healthcheck keys merge
        "services: {a: {entrypoint: [x, y], healthcheck: {test: [CMD, a], retries: 3}}}",
        "services: {a: {entrypoint: [z], healthcheck: {test: [CMD, b]}}}",
        {
            "services": {
                "a": {"entrypoint": ["z"], "healthcheck": {"test": ["CMD", "b"], "retries": 3}}
            }
        },
    ),
    (  # environment: a list and a mapping merge by name, the later file winning
        "services: {a: {environment: [A=1, B=2]}}",
        "services: {a: {environment: {B: '3', C: null}}}",
        {"services": {"a": {"environment": {"A": "1", "B": "3", "C": None}}}},
    ),
    (  # ports unique by ip/target/published/protocol; secrets by target
        'services: {a: {ports: ["80:80", "127.0.0.1:53:53/udp"],'
        " secrets: [s, {source: t, target: /x}]}}",
        'services: {a: {ports: ["80:80", "53:53/udp"],'
        " secrets: [{source: s}, {source: u, target: /x}]}}",
        {
            "services": {
                "a": {
                    "ports": ["80:80", "127.0.0.1:53:53/udp", "53:53/udp"],
                    "secrets": [{"source": "s"}, {"source": "u", "target": "/x"}],
                }
            }
        },
    ),
    (  # depends_on and networks: the list form merges with the mapping form
        "services: {a: {depends_on: [db], networks: [front]}}",
        "services: {a: {depends_on: {cache: {condition: service_healthy}}, networks: {back: {}}}}",
        {
            "services": {
                "a": {
                    "depends_on": {
                        "db": {"condition": "service_started"},
                        "cache": {"condition": "service_healthy"},
                    },
                    "networks": {"front": None, "back": {}},
                }
            }
        },
    ),
    (  # build: a string is the context; logging with another driver is replaced whole
        "services: {a: {build: ./app, logging: {driver: json-file, options: {max-size: 1m}}}}",
        "services: {a: {build: {target: prod}, logging: {driver: syslog}}}",
        {
            "services": {
                "a": {
                    "build": {"context": "./app", "target": "prod"},
                    "logging": {"driver": "syslog"},
                }
            }
        },
    ),
    (  # a key written with nothing keeps what the earlier file gave
        "services: {a: {image: x, labels: {k: v}}}",
        "services: {a: {image: , labels: }}",
        {"services": {"a": {"image": "x", "labels": {"k": "v"}}}},
    ),
]


@pytest.mark.parametrize(("base", "override", "result"), SPEC_EXAMPLES)
def test_the_merge_follows_compose_spec_examples(base: str, override: str, result: Any) -> None:
    assert merged(base, override) == result


def test_a_mapping_cannot_merge_with_a_list_and_the_error_points_at_the_override() -> None:
    with pytest.raises(compose_merge.MergeError) as exc:
        merged("services: {a: {healthcheck: {test: x}}}", "services:\n  a:\n    healthcheck: [x]\n")
    assert exc.value.mark is not None and exc.value.mark.file == "f1.yml"
    assert str(exc.value.mark) == "3:18"


SCALARS = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b", "8080:80", "x=y"]), st.none())
KEYS = st.sampled_from(["image", "labels", "dns", "x-k", "ports", "environment", "command"])
TREES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=8,
)


def _model(data: dict[str, Any]) -> compose_merge.Value:
    def wrap(x: Any) -> compose_merge.Value:
        if isinstance(x, dict):
            return compose_merge.Value({k: wrap(v) for k, v in x.items()})
        if isinstance(x, list):
            return compose_merge.Value([wrap(v) for v in x])
        return compose_merge.Value(x)

    return wrap(data)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(KEYS, TREES, max_size=4))
def test_merging_an_empty_file_or_a_file_onto_itself_changes_nothing_but_duplicates(
    service: dict[str, Any],
) -> None:
    """Compose's merge: an empty override is no change; a file merged with itself gives
    what merging it once more gives (lists do not grow twice: equal entries are once)."""
    model = {"services": {"s": service}}
    once = compose_merge.plain(compose_merge.merge(None, _model(model)))
    empty = compose_merge.merge(_model(model), _model({}))
    assert compose_merge.plain(empty) == once
    twice = compose_merge.merge(_model(model), _model(model))
    thrice = compose_merge.merge(twice, _model(model))
    assert compose_merge.plain(thrice) == compose_merge.plain(twice)


def test_extends_same_file_other_file_chains_cycles_and_paths(tmp_path: Path) -> None:
    write(
        tmp_path,
        "common/base.yml",
        """\
        services:
          base:
            image: busybox
            env_file: ./common.env
            volumes: ["./data:/data"]
            environment: {A: "1"}
        """,
    )
    main_file = write(
        tmp_path,
        "compose.yaml",
        """\
        services:
          web:
            extends: {file: common/base.yml, service: base}
            environment: {B: "2"}
          worker:
            extends: web
            command: [work]
          loop:
            extends: loop2
          loop2:
            extends: loop
        """,
    )
    with pytest.raises(DesiredStateError) as exc:
        compose_sources.merge_files([main_file], read_as_written)
    assert f"{main_file}:9:14: extends: a cycle (loop -> loop2 -> loop)" in str(exc.value)
    text = main_file.read_text().split("  loop:")[0]
    main_file.write_text(text)
    model = compose_sources.merge_files([main_file], read_as_written).doc.data
    web, worker = model["services"]["web"], model["services"]["worker"]
    assert web["environment"] == {"A": "1", "B": "2"} and worker["command"] == ["work"]
    assert web["env_file"] == "./common/common.env"  # relative to the other file's folder
    assert worker["volumes"] == ["./common/data:/data"] and "extends" not in worker


def test_include_adds_resources_and_refuses_a_conflict_with_both_places(tmp_path: Path) -> None:
    write(
        tmp_path,
        "db/compose.yaml",
        """\
        services:
          db:
            image: postgres:16
            volumes: ["./init:/docker-entrypoint-initdb.d"]
        volumes:
          pg: {}
        """,
    )
    main_file = write(
        tmp_path,
        "compose.yaml",
        """\
        include:
          - db/compose.yaml
        services:
          web: {image: nginx, depends_on: [db]}
        """,
    )
    model = compose_sources.merge_files([main_file], read_as_written).doc.data
    assert set(model["services"]) == {"web", "db"} and "include" not in model
    assert model["services"]["db"]["volumes"] == ["./db/init:/docker-entrypoint-initdb.d"]
    assert "pg" in model["volumes"]
    main_file.write_text(main_file.read_text() + "  db: {image: mysql}\n")
    with pytest.raises(DesiredStateError) as exc:
        compose_sources.merge_files([main_file], read_as_written)
    assert f"{main_file}:5:3: services.db: defined here and by an included file" in str(exc.value)


def test_the_daemons_file_merges_its_override_and_errors_name_the_override(tmp_path: Path) -> None:
    """compose.yaml takes compose.override.yaml (watched, so a change is a reload; an absent
    one is watched too); -f files do not; a bad value names the override's line."""
    base = write(tmp_path, "compose.yaml", "services:\n  web:\n    image: nginx:1.25\n")
    state = loader.load(base)
    assert str(tmp_path / "compose.override.yaml") in state.watched  # its creation is a change
    override = write(
        tmp_path, "compose.override.yaml", "services:\n  web:\n    restart: sometimes\n"
    )
    with pytest.raises(DesiredStateError) as exc:
        loader.load(base)
    assert f"{override}:3:14: services.web.restart: must be" in str(exc.value)
    override.write_text("services:\n  web:\n    image: nginx:1.27\n")
    state = loader.load(base)
    assert state.service("web").replicas[0].image == "nginx:1.27"
    assert str(override) in state.watched
    alone = loader.load(compose_sources.files_path([base]))  # -f compose.yaml: no override
    assert alone.service("web").replicas[0].image == "nginx:1.25"


@pytest.mark.usefixtures("in_process")
def test_cli_f_and_compose_file_choose_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a.yml", "services:\n  web:\n    image: nginx:1.25\n")
    b = write(tmp_path, "b.yml", "services:\n  web:\n    image: nginx:1.27\n")
    monkeypatch.delenv("COMPOSE_FILE", raising=False)
    assert main(["validate", "--no-strict-modes", "-f", str(a), "-f", str(b)]) == 0
    assert "valid" in capsys.readouterr().out
    monkeypatch.setenv("COMPOSE_FILE", f"{a},{b}")
    monkeypatch.setenv("COMPOSE_PATH_SEPARATOR", ",")
    out = tmp_path / "state.yaml"
    assert main(["import", "-o", str(out)]) == 0
    assert "nginx:1.27" in out.read_text()
    assert f"[from {a} + {b}]" in capsys.readouterr().err


@pytest.mark.usefixtures("in_process")
def test_import_keeps_variables_and_env_files_and_lists_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A translation: nothing of the runtime environment is needed; exit 0 with a list."""
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    monkeypatch.delenv("DATA", raising=False)
    src = write(
        tmp_path,
        "compose.yaml",
        """\
        services:
          db:
            image: postgres:${PG_TAG:-16}
            environment:
              POSTGRES_PASSWORD: ${DB_PASSWORD}
            env_file: ./db.env
            volumes: ["${DATA}/pg:/var/lib/postgresql/data"]
            profiles: [prod]
        """,
    )
    out = tmp_path / "state.yaml"
    assert main(["import", str(src), "-o", str(out), "--drop-unsupported"]) == 0
    err, text = capsys.readouterr().err, out.read_text()
    assert "${DB_PASSWORD}" in text and "./db.env" in text and "${PG_TAG:-16}" in text
    assert "profiles: [prod]" in text  # carried (compose profiles are supported)
    assert f"variable DB_PASSWORD ({src}:5:26)" in err
    assert f"variable DATA ({src}:7:15)" in err
    assert f"env file ./db.env ({src}:6:15)" in err
    assert "PG_TAG" not in err.split("to provide")[1]  # it has a default
    with pytest.raises(DesiredStateError) as exc:  # the daemon still refuses it
        loader.load(out)
    assert "variable DB_PASSWORD is not set" in str(exc.value)


def test_a_secret_valued_unset_variable_is_named() -> None:
    doc = (
        "version: 1\nservices:\n  w:\n    image: x\n"
        "    environment:\n      DB_PASSWORD: ${PW_VAR}\n"
    )
    with pytest.raises(DesiredStateError) as exc:
        loader.parse(doc, source="s.yaml", base_dir=Path("/nonexistent"), environ={})
    assert "s.yaml:6:20: services.w.environment.DB_PASSWORD: variable PW_VAR is not set" in str(
        exc.value
    )


COMPOSE_V1 = shutil.which("docker-compose")


@pytest.mark.skipif(COMPOSE_V1 is None, reason="docker-compose (v1) is not installed")
def test_simple_merges_agree_with_docker_compose_config(tmp_path: Path) -> None:
    """Debian's docker-compose v1 on `-f a -f b config`: the same image, command,
    environment and volumes (ports are printed in another form by v1: compared as sets)."""
    a = write(
        tmp_path,
        "a.yml",
        """\
        services:
          web:
            image: a
            command: [x]
            ports: ["8080:80"]
            environment: {A: "1", B: "2"}
            volumes: ["foo:/work", "./x:/x"]
        volumes: {foo: {}, bar: {}}
        """,
    )
    b = write(
        tmp_path,
        "b.yml",
        """\
        services:
          web:
            image: b
            command: [y]
            ports: ["8443:443"]
            environment: [B=3, C=4]
            volumes: ["bar:/work"]
        """,
    )
    run = subprocess.run(
        [str(COMPOSE_V1), "-f", str(a), "-f", str(b), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COMPOSE_PROJECT_NAME": "mergecheck"},
        check=True,
    )
    theirs = YAML(typ="safe").load(run.stdout)["services"]["web"]
    ours = compose_sources.merge_files([a, b], read_as_written).doc.data["services"]["web"]
    assert ours["image"] == theirs["image"] and ours["command"] == theirs["command"]
    assert {k: str(v) for k, v in ours["environment"].items()} == theirs["environment"]
    assert ours["volumes"][0] == "bar:/work" and theirs["volumes"][0].startswith("bar:/work")
    assert len(ours["volumes"]) == len(theirs["volumes"])
    assert {p.split(":")[-1] for p in ours["ports"]} == {str(p["target"]) for p in theirs["ports"]}


def test_the_daemon_reloads_when_the_override_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The override file is an input like the main file: an edit is noticed by the watch
    and read (with the same settle) as a reload."""
    base = write(tmp_path, "compose.yaml", "services:\n  web:\n    image: nginx:1.25\n")
    override = write(tmp_path, "compose.override.yaml", "services:\n  web:\n    image: nginx:1\n")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    options = Options(path=base, state_dir=tmp_path, lock_dir=tmp_path, settle=0.01)
    d = Daemon(options, HOST, loader.load(base))
    assert d.desired.service("web").replicas[0].image == "nginx:1"
    thread = threading.Thread(target=d.reloader.loop, daemon=True)
    thread.start()
    try:
        assert not d.reloader.changed()
        override.write_text("services:\n  web:\n    image: nginx:1.27.3\n")
        assert d.reloader.changed()
        deadline = time.monotonic() + 30
        while d.desired.service("web").replicas[0].image != "nginx:1.27.3":
            assert time.monotonic() < deadline, "the override's edit was not reloaded"
            time.sleep(0.05)
    finally:
        d.signals.stop.set()
        thread.join(10)
