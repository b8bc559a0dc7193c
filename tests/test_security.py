"""StrictModes for the inputs and the host policy (issue: security), without an engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.config import loader, policy_file, strict_modes
from reconciler.core import policy
from reconciler.core.desired import ContainerSpec
from reconciler.errors import DesiredStateError
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


SMALL = "version: 1\nproject: sec\nservices:\n  web:\n    image: busybox\n"


# --------------------------------------------------------------------------- StrictModes


def test_safe_file_passes(tmp_path: Path) -> None:
    """A 0644 file owned by us under 0700/0755 folders (and /tmp, sticky) is accepted."""
    f = _write(tmp_path / "d.yaml", SMALL)
    assert strict_modes.problems([f]) == []


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646, 0o660])
def test_file_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A file writable by group or others is named with its mode."""
    f = _write(tmp_path / "d.yaml", SMALL, mode)
    [line] = strict_modes.problems([f])
    assert str(f) in line and f"mode {mode:04o}" in line and "writable by group or others" in line


def test_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A file owned by a uid other than root or ours is refused."""
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    f = _write(tmp_path / "d.yaml", SMALL)
    os.chown(f, 12345, 0)
    [line] = strict_modes.problems([f])
    assert "owner uid 12345" in line and "owned by someone else" in line


def test_parent_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    """As sshd: each folder above the file is checked (not only the file)."""
    folder = tmp_path / "etc"
    folder.mkdir()
    f = _write(folder / "d.yaml", SMALL)
    folder.chmod(0o777)
    lines = strict_modes.problems([f])
    assert any(str(folder) in line and "a folder above" in line for line in lines), lines


def test_sticky_root_folder_is_accepted(tmp_path: Path) -> None:
    """A root-owned sticky folder (as /tmp) may be writable by others: they cannot replace
    what is not theirs."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    folder = tmp_path / "shared"
    folder.mkdir()
    f = _write(folder / "d.yaml", SMALL)
    folder.chmod(0o1777)
    assert strict_modes.problems([f]) == []


def test_symlink_is_resolved(tmp_path: Path) -> None:
    """A safe-looking symlink to an unsafe file is refused, naming both."""
    target = _write(tmp_path / "real.yaml", SMALL, 0o666)
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    [line] = strict_modes.problems([link])
    assert str(link) in line and str(target) in line and "0666" in line


def test_config_folder_contents_are_checked(tmp_path: Path) -> None:
    """Every file in a config folder (mounted into a container) is checked."""
    folder = tmp_path / "conf"
    (folder / "sub").mkdir(parents=True)
    inner = _write(folder / "sub" / "x.yml", "a: 1\n", 0o666)
    lines = strict_modes.problems([folder])
    assert len(lines) == 1 and str(inner) in lines[0]


def test_desired_state_inputs_include_env_and_configs(tmp_path: Path) -> None:
    """The .env and env_files of a desired state are among its checked inputs (watched)."""
    _write(tmp_path / ".env", "A=1\n", 0o666)
    _write(tmp_path / "web.env", "B=2\n", 0o664)
    f = _write(tmp_path / "d.yaml", SMALL + "    env_file: web.env\n")
    desired = loader.load(f)
    lines = strict_modes.problems([f, *desired.watched])
    assert {str(tmp_path / ".env"), str(tmp_path / "web.env")} <= {
        line.split(" ")[0] for line in lines
    }


def test_cli_apply_refuses_and_validate_warns(tmp_path: Path) -> None:
    """`apply` exits 2 naming the file and its mode; `validate` only warns."""
    f = _write(tmp_path / "d.yaml", SMALL, 0o666)
    refused = run_cli("apply", str(f), "--lock-dir", str(tmp_path))
    assert refused.returncode == 2
    assert str(f) in refused.stderr and "mode 0666" in refused.stderr
    assert "to fix: `chmod go-w FILE`" in refused.stderr  # how, without weakening the check
    assert f"`chmod -R go-w {tmp_path}`" in refused.stderr
    warned = run_cli("validate", str(f))
    assert warned.returncode == 0 and "warning:" in warned.stderr and "0666" in warned.stderr


def test_cli_no_strict_modes_says_so(tmp_path: Path) -> None:
    """--no-strict-modes accepts the file and says loudly that the check is off."""
    f = _write(tmp_path / "d.yaml", SMALL, 0o666)
    proc = run_cli("validate", str(f), "--no-strict-modes")
    assert proc.returncode == 0 and "STRICT MODES ARE OFF" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- policy


def _state(tmp_path: Path, body: str) -> loader.DesiredState:
    f = _write(tmp_path / "d.yaml", "version: 1\nproject: sec\nservices:\n" + body)
    return loader.load(f)


DENIED_BY_DEFAULT = [
    ("privileged: true", "privileged"),
    ("devices: [/dev/fuse]", "devices"),
    ("cap_add: [SYS_ADMIN]", "cap_add"),
    ("cap_add: [cap_net_admin]", "cap_add"),
    ("pid: host", "host_pid"),
    ("ipc: host", "host_ipc"),
    ("uts: host", "host_uts"),
    ("userns_mode: host", "host_userns"),
    ("network_mode: host", "host_network"),
    ("security_opt: [seccomp=unconfined]", "security_opt"),
    ("security_opt: ['apparmor:unconfined']", "security_opt"),
    ("security_opt: [label=disable]", "security_opt"),
    ("volumes: [/var/run/docker.sock:/var/run/docker.sock:ro]", "host_path"),
    ("volumes: [/:/host]", "host_path"),
    ("volumes: [/etc:/x]", "host_path"),
    ("volumes: [/etc/shadow:/x]", "host_path"),
    ("volumes: [/var:/x]", "host_path"),  # above /var/lib/docker
    ("volumes: [/root:/x:ro]", "host_path"),
    ("volumes: [/proc:/x]", "host_path"),
    ("volumes: [/sys:/x]", "host_path"),
    ("volumes: [/var/lib/docker:/x]", "host_path"),
]


@pytest.mark.parametrize(("line", "rule"), DENIED_BY_DEFAULT)
def test_default_policy_denies_host_power(tmp_path: Path, line: str, rule: str) -> None:
    """Without a policy file each way to be root on the host is denied, naming service,
    key, line and rule; the other service is not denied."""
    d = _state(tmp_path, f"  bad:\n    image: busybox\n    {line}\n  good:\n    image: busybox\n")
    marked, found = policy.enforce(d)
    assert marked.denied == {"bad"}
    assert {x.rule for x in found} == {rule}
    text = found[0].message(d.source, policy.DEFAULT)
    key = line.split(":")[0]
    assert f"{d.source}:6: services.bad.{key}" in text and f"rule {rule}" in text


@pytest.mark.parametrize(
    "line",
    [
        "cap_add: [NET_BIND_SERVICE, CHOWN]",
        "cap_drop: [ALL]",
        "security_opt: [no-new-privileges:true]",
        "pid: 'service:good'",
        "ipc: private",
        "volumes: [./data:/data, /srv/www:/www]",
    ],
)
def test_default_policy_allows_the_harmless(tmp_path: Path, line: str) -> None:
    """Docker's default capabilities, drops, own folders and named volumes are fine."""
    d = _state(tmp_path, f"  good:\n    image: busybox\n  svc:\n    image: busybox\n    {line}\n")
    assert policy.enforce(d)[1] == ()


def test_configs_are_not_judged_as_host_paths(tmp_path: Path) -> None:
    """A config folder under /etc (as /etc/reconciler/configs) is ours, read-only: allowed."""
    (tmp_path / "c").mkdir()
    d = _state(tmp_path, "  svc:\n    image: busybox\n    configs: [{source: c, target: /c}]\n")
    assert policy.enforce(d)[1] == ()


def test_policy_allows_named_services_and_paths(tmp_path: Path) -> None:
    """An allow names services and paths; read-only unless read_only: false."""
    pol = _write(
        tmp_path / "policy.yaml",
        "allow:\n"
        "  - {rule: host_path, services: [a], paths: [/proc]}\n"
        "  - {rule: host_path, services: [b], paths: [/etc/ssl], read_only: false}\n"
        "  - {rule: privileged, services: [c]}\n"
        "  - {rule: cap_add, services: [c], capabilities: [SYS_ADMIN]}\n",
    )
    p = policy_file.load(pol)
    d = _state(
        tmp_path,
        "  a:\n    image: x\n    volumes: ['/proc:/p:ro']\n"
        "  a2:\n    image: x\n    volumes: ['/proc:/p:ro']\n"
        "  arw:\n    image: x\n    volumes: ['/proc:/p']\n"
        "  b:\n    image: x\n    volumes: ['/etc/ssl/certs:/c']\n"
        "  c:\n    image: x\n    privileged: true\n    cap_add: [SYS_ADMIN, NET_ADMIN]\n",
    )
    a_rw = policy.Allow("host_path", frozenset({"arw"}), ("/proc",))
    marked, found = policy.enforce(d, policy.Policy((*p.allows, a_rw), p.source))
    assert marked.denied == {"a2", "arw", "c"}
    assert {(x.service, x.rule, x.detail) for x in found} == {
        ("a2", "host_path", "bind mount of /proc (read-only; reaches /proc)"),
        ("arw", "host_path", "bind mount of /proc (read-write; reaches /proc)"),
        ("c", "cap_add", "capability NET_ADMIN"),
    }


def test_shipped_stack_passes_under_the_shipped_policy() -> None:
    """node-exporter's read-only /, /proc, /sys: denied by default, allowed by
    configs/policy.yaml; nothing else in the shipped stack is denied."""
    d = loader.load(ROOT / "desired_state.yaml")
    assert policy.enforce(d)[0].denied == {"node-exporter"}
    assert policy.enforce(d, policy_file.load(ROOT / "configs" / "policy.yaml"))[1] == ()


def test_policy_file_errors_name_the_line(tmp_path: Path) -> None:
    """An unknown rule is an error with the policy file's line."""
    pol = _write(tmp_path / "p.yaml", "allow:\n  - rule: everything\n    services: [a]\n")
    with pytest.raises(DesiredStateError) as err:
        policy_file.load(pol)
    assert f"{pol}:2" in str(err.value)


def test_policy_given_but_absent_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DesiredStateError):
        policy_file.load(tmp_path / "none.yaml")


def test_host_power_keys_at_defaults_keep_the_spec_hash() -> None:
    """The added keys at their defaults leave every existing container's hash as it was."""
    spec = ContainerSpec("a", "p", "s", 1, "img")
    assert spec.spec_hash == "3058b26871ed869bceddd0fd185199af075b043fe659116c9ffed595e7963b18"
    assert ContainerSpec("a", "p", "s", 1, "img", privileged=True).spec_hash != spec.spec_hash


@given(st.lists(st.sampled_from(["/", "/etc", "/var", "/var/lib", "/srv", "/proc/1", "/home"])))
def test_protected_is_about_the_whole_path(parts: list[str]) -> None:
    """A path is protected iff it is, is under, or is above a protected path."""
    for p in parts:
        hit = policy.protected(p)
        assert (hit is None) == (p in ("/srv", "/home"))


def test_configs_and_secrets_outside_the_files_folder_are_judged(tmp_path: Path) -> None:
    """A config or secret from outside the desired state's folder is a host bind: /etc is
    denied (read-only included) unless the policy allows it."""
    d = _state(
        tmp_path,
        "  a:\n    image: x\n    configs: [{source: /etc/hosts, target: /c}]\n"
        "  b:\n    image: x\n    secrets: [s]\n"
        "secrets:\n  s: {file: /etc/hostname}\n",
    )
    _, found = policy.enforce(d)
    assert {(x.service, x.key, x.rule) for x in found} == {
        ("a", "configs", "host_path"),
        ("b", "secrets", "host_path"),
    }


# --------------------------------------------------------------------------- secrets


SECRET = "s3cr3t-hunter2-value"


def _secret_state(tmp_path: Path, value: str = SECRET, ref: str = "[db_password]") -> Path:
    _write(tmp_path / "db_password.txt", value, 0o600)
    return _write(
        tmp_path / "d.yaml",
        "version: 1\nproject: sec\n"
        "secrets:\n  db_password: {file: ./db_password.txt}\n"
        f"services:\n  db:\n    image: busybox\n    secrets: {ref}\n",
    )


def test_secret_is_a_read_only_file_never_a_value(tmp_path: Path) -> None:
    """A secret becomes a mount at /run/secrets/NAME; its value is nowhere in the spec, its
    repr, its labels, the plan's words or the desired state's digest."""
    from reconciler.core.actions import CreateContainer, describe

    d = loader.load(_secret_state(tmp_path))
    [spec] = d.services[0].replicas
    [mount] = spec.secrets
    assert mount.target == "/run/secrets/db_password"
    assert mount.source == str(tmp_path / "db_password.txt")
    assert SECRET not in repr(spec) and SECRET not in repr(d)
    assert SECRET not in str(spec.all_labels()) and SECRET not in str(spec.environment)
    assert mount.digest not in repr(spec)
    assert SECRET not in describe(CreateContainer(spec))
    assert SECRET in d.secrets  # marked: the log processor and the CLI redact it


def test_secret_content_change_is_a_pending_change(tmp_path: Path) -> None:
    """A new content changes the spec hash and the revision (a digest, never the value)."""
    first = loader.load(_secret_state(tmp_path)).services[0]
    second = loader.load(_secret_state(tmp_path, "another-value")).services[0]
    assert first.replicas[0].spec_hash != second.replicas[0].spec_hash
    assert first.revision != second.revision
    assert str(tmp_path / "db_password.txt") in loader.load(_secret_state(tmp_path)).watched


def test_secret_long_form_and_errors(tmp_path: Path) -> None:
    """Long form: target relative to /run/secrets or absolute; an undeclared secret is an
    error naming the line."""
    d = loader.load(_secret_state(tmp_path, ref="[{source: db_password, target: pw}]"))
    assert d.services[0].replicas[0].secrets[0].target == "/run/secrets/pw"
    with pytest.raises(DesiredStateError) as err:
        loader.load(_secret_state(tmp_path, ref="[nope]"))
    assert ":8:" in str(err.value) and "secret 'nope' is not declared" in str(err.value)


# --------------------------------------------------------------------------- hostile input


def test_not_utf8_names_the_byte_offset() -> None:
    """Bytes that are not UTF-8 are refused with their line, column and byte offset."""
    with pytest.raises(
        DesiredStateError, match=r"x\.yaml:2:4: the file is not UTF-8 text \(byte 8\)"
    ):
        loader.parse(b"a: 1\nb: \xff\n", source="x.yaml", base_dir=Path("/srv"))


def test_many_values_are_refused_while_composing() -> None:
    """A file of many small values is refused once it passes MAX_NODES (before any walk)."""
    from reconciler.config.yamlread import MAX_NODES

    text = "services:\n  web:\n    image: x\n    extra_hosts:\n" + "    - 1\n" * (MAX_NODES + 5)
    with pytest.raises(DesiredStateError, match=f"more than {MAX_NODES} values"):
        loader.parse(text, source="x.yaml", base_dir=Path("/srv"))


def test_too_large_file_is_refused(tmp_path: Path) -> None:
    """Past MAX_FILE_BYTES the file is not even parsed."""
    f = _write(tmp_path / "d.yaml", SMALL + "#" * loader.MAX_FILE_BYTES)
    with pytest.raises(DesiredStateError, match="larger than 1 MiB"):
        loader.load(f)


_SHIPPED_LINES = (ROOT / "desired_state.yaml").read_text().split("\n")


@st.composite
def _shipped_mutation(draw: st.DrawFn) -> bytes:
    lines = list(_SHIPPED_LINES)
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "insert", "bytes"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "insert":
            extra = draw(st.sampled_from(["privileged: true", "  - /:/h", "*a", "&a [", "<<: *a"]))
            lines.insert(i, " " * draw(st.integers(0, 8)) + extra)
        else:
            lines[i] += draw(st.binary(max_size=4)).decode("latin-1")
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    return data + draw(st.binary(max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shipped_mutation())
def test_fuzz_shipped_file_through_load_and_policy(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    """Mutations of the shipped file (lines, bytes, anchors, host-power keys): `load` gives a
    valid state the policy can judge, or our own error; never anything else."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "configs").symlink_to(ROOT / "configs")
    f = folder / "desired_state.yaml"
    f.write_bytes(raw)
    try:
        d = loader.load(f)
    except DesiredStateError as exc:
        assert str(exc).startswith(f"{f}: invalid desired state:\n")
        return
    policy.enforce(d)
    policy.enforce(d, policy_file.load(ROOT / "configs" / "policy.yaml"))


def test_rollout_records_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records keep the environment a rollback needs (secrets too): the file is 0600 and
    the folders created for it 0700, whatever the umask (022 here)."""
    from reconciler.core.rollout import RolloutRecord
    from reconciler.ops import state_store

    old = os.umask(0o022)
    try:
        store = state_store.StateStore("p", tmp_path / "state" / "deep")
        store.put("web", RolloutRecord(stable_revision="r1", failed_reason="DB_PASSWORD=x"))
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        monkeypatch.setattr(state_store, "systemd_dir", _wrap_systemd_dir(tmp_path / "sys"))
        default = state_store.default_state_dir()
    finally:
        os.umask(old)
    assert (tmp_path / "state" / "deep").stat().st_mode & 0o777 == 0o700
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert default == tmp_path / "sys" and default.stat().st_mode & 0o777 == 0o700


def _wrap_systemd_dir(system: Path):  # type: ignore[no-untyped-def]
    from reconciler.ops import lock

    def call(variable: str, _system: Path, fallback: Path, **kw: int) -> Path:
        return lock.systemd_dir(variable, system, fallback, **kw)

    return call
