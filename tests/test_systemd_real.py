"""The unit under a real systemd: a Debian 12 container whose PID 1 is systemd 252, the daemon
installed in it by the README's own lines, reaching this host's Docker engine through the
mounted socket, under the shipped unit and its hardening.

The container's image is a Debian rootfs built by mmdebstrap from this machine's apt sources,
cached by a content key (a rerun starts in seconds). A stand-in `docker.service` (oneshot,
RemainAfterExit) stands for the engine, so `BindsTo=`/`After=` act as on a real host.
Everything created (the container, the services it runs on the host) is removed afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from tests.conftest import REQUIRE_DOCKER, cleanup, wait_for, with_test_labels
from tests.registrykit import login, pushed_image, running_registry
from tests.swarmkit import one_node_swarm, remove_project

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
IMAGE_REPO = "reconciler-test-systemd"
# What goes into the rootfs; a change here (or in the apt sources) builds a new image.
ROOTFS_RECIPE = (
    "mmdebstrap",
    "--variant=minbase",
    "--include=systemd,systemd-sysv,dbus,procps,python3,python3-venv",
    "bookworm",
)
RUN_FLAGS = (  # PID 1 systemd without --privileged (RECIPES.md; cgroup v1 here)
    "--cap-add",
    "SYS_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
)
STAND_IN_DOCKER = """\
[Unit]
Description=stand-in for the host's Docker engine (its socket is mounted)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""
DOCKER_CRASH_DROP_IN = "/etc/systemd/system/docker.service.d/test-crash.conf"
CRASHING_DOCKER = """\
[Service]
Type=simple
RemainAfterExit=no
ExecStart=
ExecStart=/bin/sleep infinity
Restart=always
RestartSec=1s
"""
WATCHDOG_DROP_IN = "/etc/systemd/system/reconciler.service.d/test-watchdog.conf"
DEADLINE_S = 120.0  # generous: a busy CI machine, many tests on one engine


def need(ok: object, message: str) -> None:
    """Skip without a piece this test needs, or fail in CI (RECONCILER_REQUIRE_DOCKER=1)."""
    if not ok:
        if REQUIRE_DOCKER:
            pytest.fail(message)
        pytest.skip(message)


def readme_block(heading: str, index: int = 0) -> list[str]:
    """The command lines of the `index`th ```sh block under the README's `heading`."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    block = section.split("```sh\n")[index + 1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def unsudo(line: str) -> str:
    return line.removeprefix("sudo ")


def docker_socket() -> Path:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    need(host.startswith("unix://"), f"the systemd test mounts a unix socket, not {host}")
    path = Path(host.removeprefix("unix://"))
    need(path.is_socket(), f"no Docker socket at {path}")
    return path


# --------------------------------------------------------------------------- image


def apt_sources() -> Path:
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if path.is_file():
            return path
    need(False, "no apt sources on this machine for mmdebstrap")
    raise AssertionError  # unreachable


@pytest.fixture(scope="module")
def systemd_image(api: docker.APIClient) -> str:
    """The Debian 12 + systemd image, built once per content key and kept as a cache."""
    need(shutil.which("mmdebstrap"), "mmdebstrap is not installed (apt-get install mmdebstrap)")
    need(os.geteuid() == 0, "mmdebstrap (root mode) and the systemd container need root")
    sources = apt_sources()
    key = hashlib.sha256(json.dumps([ROOTFS_RECIPE, sources.read_text()]).encode()).hexdigest()[:16]
    tag = f"{IMAGE_REPO}:{key}"
    lock_path = Path(tempfile.gettempdir()) / f"{IMAGE_REPO}-{key}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same image
        with contextlib.suppress(docker.errors.ImageNotFound):
            api.inspect_image(tag)
            return tag
        with tempfile.TemporaryDirectory() as tmp:
            tar = Path(tmp) / "rootfs.tar"
            with sources.open("rb") as stdin:
                built = subprocess.run(
                    [*ROOTFS_RECIPE, str(tar), "-"],
                    stdin=stdin,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
            assert built.returncode == 0, built.stderr[-3000:]
            imported = subprocess.run(
                [
                    "docker",
                    "import",
                    "-c",
                    'CMD ["/lib/systemd/systemd"]',
                    "-c",
                    "LABEL io.reconciler.test=1",
                    str(tar),
                    tag,
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert imported.returncode == 0, imported.stderr
        for image in api.images(name=IMAGE_REPO):  # earlier keys: not needed any more
            for old in image.get("RepoTags") or []:
                if old != tag:
                    with contextlib.suppress(docker.errors.APIError):
                        api.remove_image(old)
    return tag


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel -w DIR .` of a copy of the checkout: the project and its dependencies."""
    tmp = tmp_path_factory.mktemp("wheels")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "reconciler", src / "reconciler", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(out.glob("reconciler-*.whl")), list(out.iterdir())
    return out


# --------------------------------------------------------------------------- the container


class SystemdHost:
    """A running systemd container and what the tests do in it."""

    def __init__(self, name: str, project: str) -> None:
        self.name = name
        self.project = project  # reconciler.service's
        self.projects = [project]  # every project started in it: removed afterwards

    def sh(
        self, script: str, *, check: bool = True, timeout: float = DEADLINE_S, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["docker", "exec", "-i", "-w", "/src", self.name, "sh", "-c", script],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, f"{script}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc

    def write(self, path: str, text: str) -> None:
        """Replace a file atomically (a watcher never reads half of it)."""
        folder = os.path.dirname(path)
        self.sh(f"mkdir -p {folder} && cat > {path}.new && mv {path}.new {path}", stdin=text)

    def show(self, unit: str = "reconciler") -> dict[str, str]:
        out = self.sh(f"systemctl show {unit}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str = "reconciler") -> int:
        return int(self.show(unit)["MainPID"])

    def running(self, unit: str = "reconciler") -> int | None:
        """The main pid once the unit is active (READY=1 received) and running."""
        props = self.show(unit)
        ok = (props["ActiveState"], props["SubState"]) == ("active", "running")
        return int(props["MainPID"]) if ok and props["MainPID"] != "0" else None

    def journal(self, unit: str = "reconciler.service") -> list[str]:
        """The lines the unit's processes wrote (not systemd's own lines about it)."""
        out = self.sh(f"journalctl --no-pager -o cat _SYSTEMD_UNIT={unit}").stdout
        return [line for line in out.splitlines() if line.strip()]

    def systemd_says(self, unit: str = "reconciler.service") -> str:
        return self.sh(f"journalctl --no-pager -o cat -u {unit}").stdout

    def get(self, url: str) -> int:
        """The HTTP status of a GET from inside the container (0: no answer)."""
        code = (
            "import urllib.request, urllib.error\n"
            "try:\n"
            f"    print(urllib.request.urlopen({url!r}, timeout=5).status)\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n"
            "except OSError:\n"
            "    print(0)\n"
        )
        return int(self.sh("python3 -", stdin=code).stdout.strip())


def state(project: str, image: str, **services: dict[str, Any]) -> str:
    doc = {"services": {"web": {"image": image, "init": True, "command": ["sleep", "100000"]}}}
    doc["services"].update(services)
    return yaml.safe_dump(with_test_labels(project, doc), sort_keys=False)


@pytest.fixture(scope="module")
def host(
    api: docker.APIClient, systemd_image: str, wheels: Path, busybox_image: str
) -> Iterator[SystemdHost]:
    """The container, booted, with the daemon installed and enabled as the README says."""
    socket = docker_socket()
    project = f"t{uuid.uuid4().hex[:10]}"
    name = f"reconciler-test-systemd-{project}"
    h = SystemdHost(name, project)
    try:
        subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--label",
                "io.reconciler.test=1",
                "--label",
                f"io.reconciler.test.owner={project}",
                "--workdir",
                "/src",  # the checkout the README's lines run in
                *RUN_FLAGS,
                "-v",
                f"{socket}:/var/run/docker.sock",
                systemd_image,
            ],
            check=True,
            capture_output=True,
            timeout=DEADLINE_S,
        )
        # The manager's socket appears a moment after the container starts.
        wait_for(
            lambda: (
                h.sh("systemctl is-system-running --wait", check=False).stdout.strip()
                in ("running", "degraded")
            ),
            DEADLINE_S,
            interval=0.2,
            what="systemd to boot",
        )
        # What the Docker engine's package does on a real host: the docker group (the
        # socket's GID) and docker.service.
        h.sh(f"groupadd -o -g {socket.stat().st_gid} docker")
        h.write("/etc/systemd/system/docker.service", STAND_IN_DOCKER)
        h.sh("systemctl daemon-reload && systemctl enable --now docker")
        # The checkout, as the README's lines expect it: ./desired_state.yaml (the test's own
        # small stack), configs/, systemd/, and the wheels built outside.
        for path in ("systemd", "configs"):
            subprocess.run(["docker", "cp", str(ROOT / path), f"{name}:/src/{path}"], check=True)
        subprocess.run(["docker", "cp", str(wheels), f"{name}:/src/wheels"], check=True)
        h.write("/src/desired_state.yaml", state(project, busybox_image))

        lines = readme_block("## Run it as a systemd service")
        offline = readme_block("## Run it as a systemd service", 1)
        assert len(offline) == 1 and "--no-index --find-links wheels" in offline[0], offline
        online = [i for i, line in enumerate(lines) if line.split("#")[0].rstrip().endswith(" .")]
        assert len(online) == 1, lines  # the `pip install .` line the offline one replaces
        lines[online[0]] = offline[0]
        for line in lines:
            if line.startswith("journalctl") and " -f" in line:
                continue  # follows the journal forever
            # `enable --now` returns when systemd has READY=1 (Type=notify): the deadline is
            # the one for READY.
            h.sh(unsudo(line), timeout=DEADLINE_S)
        yield h
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, timeout=120)
        for p in h.projects:
            cleanup(api, p)


@pytest.fixture
def unit(host: SystemdHost) -> SystemdHost:
    """The host with docker.service and reconciler.service active, as after installing."""
    if not host.running("docker"):
        host.sh("systemctl start docker")
    if not host.running():
        host.sh("systemctl start reconciler")
    assert host.running(), host.show()
    return host


def container(api: docker.APIClient, name: str) -> dict[str, Any] | None:
    try:
        return api.inspect_container(name)
    except docker.errors.NotFound:
        return None


def running_id(api: docker.APIClient, name: str) -> str | None:
    info = container(api, name)
    return info["Id"] if info and info["State"]["Running"] else None


@dataclass
class Soak:
    """reconciler@swarmsoak: the Swarm target under the unit, with WatchdogSec=10s."""

    project: str
    started: float  # time.monotonic() when systemd had its READY=1


SOAK_UNIT = "reconciler@swarmsoak"
SOAK_DROP_IN = f"/etc/systemd/system/{SOAK_UNIT}.service.d/test-watchdog.conf"
SOAK_S = 180.0  # the three minutes of WatchdogSec=10s without a watchdog restart


@pytest.fixture(scope="module")
def swarm_soak(host: SystemdHost, api: docker.APIClient, busybox_image: str) -> Iterator[Soak]:
    """The template unit run with RECONCILER_TARGET=swarm (the env file's documented switch)
    and a 10 s watchdog, enabled (WantedBy=docker.service brings it back after the docker
    tests), left running while the other checks run."""
    project = f"s{uuid.uuid4().hex[:10]}"
    with one_node_swarm(api):
        try:
            host.write("/etc/reconciler/swarmsoak.yaml", state(project, busybox_image))
            host.write(
                "/etc/reconciler/swarmsoak.env",
                "RECONCILER_TARGET=swarm\nRECONCILER_OPTS=--interval 5 --listen off\n",
            )
            host.write(SOAK_DROP_IN, "[Service]\nWatchdogSec=10s\n")
            host.sh(f"systemctl daemon-reload && systemctl enable --now {SOAK_UNIT}")
            yield Soak(project, time.monotonic())
        finally:
            host.sh(f"systemctl disable --now {SOAK_UNIT}", check=False)
            host.sh(f"rm -f {SOAK_DROP_IN} && systemctl daemon-reload", check=False)
            remove_project(api, project)


# --------------------------------------------------------------------------- the checks


def test_installed_as_the_readme_says_ready_with_status(
    unit: SystemdHost, api: docker.APIClient
) -> None:
    """The README's lines install into /opt/reconciler (no system-wide pip), link the command,
    and start the unit: active means systemd got READY=1; STATUS names the project's services;
    it runs as `reconciler` and converged the host's engine through the socket."""
    project = unit.project
    assert unit.sh("readlink /usr/local/bin/reconciler").stdout.strip() == (
        "/opt/reconciler/bin/reconciler"
    )
    assert unit.sh("python3 -c 'import reconciler'", check=False).returncode != 0  # venv only
    props = unit.show()
    assert (props["Type"], props["UnitFileState"]) == ("notify", "enabled")
    assert props["StatusText"] == f"{project}: web 1/1", props["StatusText"]
    user = unit.sh(f"ps -o user= -p {props['MainPID']}").stdout.strip()
    assert user == "reconciler"
    assert running_id(api, f"{project}-web-1")


def test_swarm_target_runs_under_the_unit(unit: SystemdHost, swarm_soak: Soak) -> None:
    """RECONCILER_TARGET=swarm under the shipped (template) unit: READY=1 (active), STATUS
    names the project, the Swarm service runs, WatchdogSec is the drop-in's 10 s."""
    props = unit.show(SOAK_UNIT)
    assert (props["ActiveState"], props["WatchdogUSec"]) == ("active", "10s"), props
    wait_for(
        lambda: unit.show(SOAK_UNIT)["StatusText"] == f"{swarm_soak.project}: web 1/1",
        DEADLINE_S,
        what="STATUS with the Swarm service running",
    )


def test_reload_applies_an_edit_before_it_returns(
    unit: SystemdHost, api: docker.APIClient, busybox_image: str
) -> None:
    """`systemctl reload` returns once the daemon has applied the edited file (the new service
    is in STATUS at once, then runs); a bad edit fails the reload and changes nothing."""
    project = unit.project
    pid = unit.main_pid()
    extra = {"image": busybox_image, "init": True, "command": ["sleep", "100001"]}
    unit.write("/etc/reconciler/desired_state.yaml", state(project, busybox_image, extra=extra))
    unit.sh("systemctl reload reconciler")
    assert "extra" in unit.show()["StatusText"]  # applied when `systemctl reload` returned
    wait_for(lambda: running_id(api, f"{project}-extra-1"), DEADLINE_S, what="extra to run")
    wait_for(lambda: "extra 1/1" in unit.show()["StatusText"], DEADLINE_S, what="STATUS")

    good = unit.sh("cat /etc/reconciler/desired_state.yaml").stdout
    unit.write("/etc/reconciler/desired_state.yaml", good.replace("services:", "servces:", 1))
    failed = unit.sh("systemctl reload reconciler", check=False)
    assert failed.returncode != 0, failed.stdout + failed.stderr
    assert unit.running() == pid  # still running the last good state
    assert running_id(api, f"{project}-extra-1")
    unit.write("/etc/reconciler/desired_state.yaml", state(project, busybox_image))
    unit.sh("systemctl reload reconciler")
    assert unit.running() == pid
    wait_for(lambda: not container(api, f"{project}-extra-1"), DEADLINE_S, what="extra removed")


def test_kill_9_is_restarted(unit: SystemdHost, api: docker.APIClient) -> None:
    """`kill -9` of the daemon: systemd starts a new one (Restart=always); the containers are
    left as they were."""
    project = unit.project
    web = running_id(api, f"{project}-web-1")
    pid = unit.main_pid()
    restarts = int(unit.show()["NRestarts"])
    unit.sh(f"kill -9 {pid}")
    new = wait_for(lambda: (p := unit.running()) and p != pid and p, DEADLINE_S, what="restart")
    assert new != pid
    assert int(unit.show()["NRestarts"]) == restarts + 1
    assert running_id(api, f"{project}-web-1") == web


def test_watchdog_restarts_a_stopped_daemon(unit: SystemdHost) -> None:
    """SIGSTOP: the watchdog pings stop, systemd kills the daemon (result `watchdog`) and
    starts a new one. A drop-in shortens WatchdogSec to 5 s for the test."""
    try:
        unit.write(WATCHDOG_DROP_IN, "[Service]\nWatchdogSec=5s\n")
        unit.sh("systemctl daemon-reload && systemctl restart reconciler")
        assert unit.show()["WatchdogUSec"] == "5s"
        pid = unit.running()
        assert pid
        unit.sh(f"kill -STOP {pid}")
        wait_for(
            lambda: (p := unit.running()) and p != pid, DEADLINE_S, what="a restart by watchdog"
        )
        said = unit.systemd_says()
        assert "Watchdog timeout" in said and "Failed with result 'watchdog'" in said, said[-2000:]
    finally:
        unit.sh(f"rm -f {WATCHDOG_DROP_IN} && systemctl daemon-reload")
        unit.sh("systemctl restart reconciler")


def test_docker_restart_takes_the_daemon_along(unit: SystemdHost, api: docker.APIClient) -> None:
    """BindsTo=docker.service: restarting docker restarts the daemon (a new pid, active again);
    stopping docker stops it; starting docker starts it again (WantedBy=docker.service). A
    dockerd that dies and is restarted by its own Restart= takes the daemon down and back up.
    The containers keep running throughout."""
    project = unit.project
    web = running_id(api, f"{project}-web-1")
    pid = unit.main_pid()
    unit.sh("systemctl restart docker")
    pid = wait_for(lambda: (p := unit.running()) and p != pid and p, DEADLINE_S, what="active")
    unit.sh("systemctl stop docker")
    assert unit.show()["ActiveState"] == "inactive"
    unit.sh("systemctl start docker")
    pid = wait_for(unit.running, DEADLINE_S, what="started with docker")

    try:  # docker.service as a process that crashes and is restarted (Debian's: Restart=always)
        unit.write(DOCKER_CRASH_DROP_IN, CRASHING_DOCKER)
        unit.sh("systemctl daemon-reload && systemctl restart docker")
        pid = wait_for(lambda: (p := unit.running()) and p != pid and p, DEADLINE_S, what="up")
        stops = unit.systemd_says().count("reconciler.service: Deactivated successfully")
        unit.sh("systemctl kill -s KILL docker")
        wait_for(lambda: (p := unit.running()) and p != pid, DEADLINE_S, what="back with docker")
        # Stopped cleanly by systemd (not killed, not counted as a failure), then started.
        assert unit.systemd_says().count("reconciler.service: Deactivated successfully") > stops
    finally:
        unit.sh(f"rm -f {DOCKER_CRASH_DROP_IN} && systemctl daemon-reload")
        unit.sh("systemctl restart docker")
    assert running_id(api, f"{project}-web-1") == web


def test_two_instances_of_the_template_side_by_side(
    unit: SystemdHost, api: docker.APIClient, busybox_image: str
) -> None:
    """reconciler@other and reconciler@second (the README's lines) run beside
    reconciler.service, each on its own file, options and project; a third instance on a
    project already held is refused; stopping one leaves the others and their locks alone."""
    lines = readme_block("### Several stacks on one host")
    names = {"other": "9817", "second": "9818"}
    projects = {}
    for instance, port in names.items():
        projects[instance] = f"t{uuid.uuid4().hex[:10]}"
        unit.projects.append(projects[instance])
        unit.write(
            f"/{instance}-stack/desired_state.yaml", state(projects[instance], busybox_image)
        )
        for line in lines:
            if line.startswith("journalctl") and " -f" in line:
                continue
            unit.sh(unsudo(line).replace("other", instance).replace("9817", port))
    for instance, port in names.items():
        project = projects[instance]
        assert unit.running(f"reconciler@{instance}")
        assert unit.show(f"reconciler@{instance}")["StatusText"] == f"{project}: web 1/1"
        assert running_id(api, f"{project}-web-1")
        assert unit.get(f"http://127.0.0.1:{port}/readyz") == 200  # its own NAME.env
        status = unit.sh(f"reconciler status /etc/reconciler/{instance}.yaml").stdout
        assert re.search(r"^web +1 +1 ", status, re.MULTILINE), status  # desired 1, running 1
        # By hand (root, no --pid): the daemon is found by its project's lock.
        unit.sh(f"reconciler reload /etc/reconciler/{instance}.yaml")
    assert unit.running()  # the main unit too
    locks = unit.sh("ls /run/reconciler").stdout.split()
    for project in (unit.project, *projects.values()):
        assert f"reconciler-{project}.lock" in locks, locks

    unit.sh("cp /etc/reconciler/other.yaml /etc/reconciler/dup.yaml")
    refused = unit.sh("systemctl start reconciler@dup", check=False)
    assert refused.returncode != 0
    said = "\n".join(unit.journal("reconciler@dup.service"))
    assert "already acts on this project" in said, said
    unit.sh("systemctl stop reconciler@dup; systemctl reset-failed reconciler@dup || true")

    unit.sh("systemctl stop reconciler@other")
    assert unit.running("reconciler@second") and unit.running()
    locks = unit.sh("ls /run/reconciler").stdout.split()
    assert f"reconciler-{projects['second']}.lock" in locks, locks  # RuntimeDirectoryPreserve
    unit.sh("systemctl disable --now reconciler@second reconciler@other")
    for instance in names:
        assert all(json.loads(line) for line in unit.journal(f"reconciler@{instance}.service"))


def test_private_registry_login_as_the_readme_says(
    unit: SystemdHost, api: docker.APIClient, busybox_image: str, tmp_path: Path
) -> None:
    """The README's private-registry lines (the `docker login` made outside, the container has
    no docker command): the hardened daemon reads /etc/reconciler/docker/config.json through
    DOCKER_CONFIG and the host's engine pulls the private image with it."""
    project = unit.project
    with (
        running_registry() as registry,
        pushed_image(api, busybox_image, registry, tmp_path) as image,
    ):
        for line in readme_block("### Private registries"):
            if line.startswith("sudo docker ") and " login " in line:
                outside = tmp_path / "login"
                outside.mkdir()
                login(outside, registry)
                unit.sh(
                    "umask 077 && cat > /etc/reconciler/docker/config.json",  # as docker login
                    stdin=(outside / "config.json").read_text(),
                )
                continue
            unit.sh(line.replace("sudo ", ""))
        pid = wait_for(unit.running, DEADLINE_S, what="restarted")
        environ = unit.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.split()
        assert "DOCKER_CONFIG=/etc/reconciler/docker" in environ
        private = {"image": image, "init": True, "command": ["sleep", "100002"]}
        unit.write(
            "/etc/reconciler/desired_state.yaml", state(project, busybox_image, private=private)
        )
        unit.sh("systemctl reload reconciler")
        wait_for(lambda: running_id(api, f"{project}-private-1"), DEADLINE_S, what="the pull")
        journal = "\n".join(unit.journal())
        assert registry.password not in journal
        unit.write("/etc/reconciler/desired_state.yaml", state(project, busybox_image))
        unit.sh("systemctl reload reconciler")
        wait_for(lambda: not container(api, f"{project}-private-1"), DEADLINE_S, what="removed")


def test_stop_is_clean_and_leaves_the_containers_running(
    unit: SystemdHost, api: docker.APIClient
) -> None:
    """`systemctl stop`: STOPPING=1, exit 0 (result success), the containers keep running."""
    project = unit.project
    web = running_id(api, f"{project}-web-1")
    unit.sh("systemctl stop reconciler")
    props = unit.show()
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == (
        "inactive",
        "success",
        "0",
    ), props
    assert running_id(api, f"{project}-web-1") == web
    assert any(json.loads(line).get("event") == "stopping" for line in unit.journal())


def test_journal_lines_are_json(unit: SystemdHost) -> None:
    """Every line the unit's processes wrote to the journal (the daemon across its restarts,
    and `reconciler reload`) is one JSON object."""
    lines = unit.journal()
    assert len(lines) > 5  # a few passes at least (the checks below say which)
    events = set()
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict) and "event" in entry and "level" in entry, line
        events.add(entry["event"])
    assert {"started", "pass", "action"} <= events, events


def test_swarm_target_feeds_the_watchdog(unit: SystemdHost, swarm_soak: Soak) -> None:
    """Three minutes (while the checks above ran) of WatchdogSec=10s on the Swarm target: no
    watchdog timeout, no restart by systemd, still active with its STATUS (the Swarm
    daemon used to send READY=1 and never WATCHDOG=1, and was killed every minute)."""
    left = SOAK_S - (time.monotonic() - swarm_soak.started)
    while left > 0:
        props = unit.show(SOAK_UNIT)
        assert props["ActiveState"] == "active", props
        time.sleep(min(left, 5.0))
        left = SOAK_S - (time.monotonic() - swarm_soak.started)
    said = unit.systemd_says(f"{SOAK_UNIT}.service")
    assert "Watchdog timeout" not in said and "result 'watchdog'" not in said, said[-2000:]
    props = unit.show(SOAK_UNIT)
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["StatusText"].startswith(f"{swarm_soak.project}: web "), props
    lines = unit.journal(f"{SOAK_UNIT}.service")
    assert any(json.loads(line).get("target") == "swarm" for line in lines), lines[:5]
