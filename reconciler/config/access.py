"""What each service asks of the host, for the host policy (core.policy): its binds as real
host paths (volumes, and configs, secrets, env_files and build contexts outside the file's
folder) and the line of each key the policy judges. Called by the loader.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import replace
from pathlib import Path

from reconciler.config.forms import mount, secret_ref
from reconciler.config.inputs import resolve
from reconciler.config.schema import DesiredStateDef, VolumeDef
from reconciler.config.yamlread import Document
from reconciler.config.yamlread import Path as DataPath
from reconciler.core.desired import HostAccess, ServiceSpec

# Keys the host policy judges (core.policy): their lines are kept for its messages.
_POLICY_KEYS: tuple[str, ...] = ("privileged", "devices", "cap_add", "pid", "ipc", "uts")
_POLICY_KEYS += ("userns_mode", "network_mode", "security_opt", "volumes")


def with_access(svc: ServiceSpec, d: DesiredStateDef, base_dir: Path, doc: Document) -> ServiceSpec:
    """The service with what it asks of the host (for core.policy): its `volumes:` binds as
    real host paths (symlinks resolved, as mount(2) does) and the line of each judged key."""
    s = d.services[svc.name]
    lines = []
    for key in _POLICY_KEYS:
        mark = doc.mark(("services", svc.name, key), key=True)
        if key in s.model_fields_set and mark is not None:
            lines.append((key, mark.line))
    gpus = ("services", svc.name, "deploy", "resources", "reservations", "devices")
    if s.deploy.resources.reservations.devices and (mark := doc.mark(gpus, key=True)):
        lines.append(("deploy.resources.reservations.devices", mark.line))  # rule gpus
    binds = []
    for i, vol in enumerate(s.volumes):
        m = mount(vol)
        mark = doc.mark(("services", svc.name, "volumes", i))
        if m is not None and m.type == "bind":
            real = os.path.realpath(resolve(base_dir, m.source))
            binds.append((real, m.read_only, "volumes", mark.line if mark else 0))
        elif m is not None and m.type == "volume" and m.source:
            # A volume whose driver_opts bind a host folder (local: o: bind, device: PATH) is
            # a bind of that folder. External volumes are not inspected (see README).
            device = _bound_device(d.volumes.get(m.source))
            if device is not None:
                real = os.path.realpath(posixpath.join("/", device))  # dockerd's cwd is /
                binds.append((real, m.read_only, "volumes", mark.line if mark else 0))
    # Configs, secrets, env_files and build contexts are read-only binds too (this process
    # reads them, as root): inside the file's own folder they are inputs (StrictModes checked
    # them); elsewhere they are judged as host paths.
    home = os.path.realpath(base_dir)
    files: list[tuple[str, int | None, str]] = [
        ("configs", i, c.source) for i, c in enumerate(s.configs)
    ]
    files += [("secrets", i, d.secrets[secret_ref(r)[0]].file) for i, r in enumerate(s.secrets)]
    single = not isinstance(s.env_file, list)  # one file, short or long form
    env_files = s.env_file if isinstance(s.env_file, list) else [s.env_file]
    files += [
        ("env_file", None if single else i, e if isinstance(e, str) else e.path)
        for i, e in enumerate(env_files)
    ]
    if s.build is not None:
        context, dockerfile = (
            (s.build, "Dockerfile")
            if isinstance(s.build, str)
            else (s.build.context, s.build.dockerfile)
        )
        files += [("build", None, context)]
        where = resolve(base_dir, context)
        dockerfile_path = os.path.realpath(where / dockerfile)  # docker-py reads it: a path
        if not dockerfile_path.startswith(os.path.realpath(where).rstrip("/") + "/"):
            files += [("build", None, dockerfile_path)]  # absolute, or ../ out of the context
    for key, index, source in files:
        real = os.path.realpath(resolve(base_dir, source))
        if not real.startswith(home.rstrip("/") + "/"):
            at: DataPath = ("services", svc.name, key)
            mark = doc.mark(at, key=True) if index is None else doc.mark((*at, index))
            binds.append((real, True, key, mark.line if mark else 0))
    return replace(svc, access=HostAccess(tuple(binds), tuple(lines)))


def _bound_device(vdef: VolumeDef | None) -> str | None:
    """The host folder a volume's driver_opts bind-mount (`o` with bind), or None."""
    if vdef is None or vdef.external:
        return None
    opts = {k.lower(): str(v) for k, v in vdef.driver_opts.items()}
    if "bind" not in opts.get("o", "") or not opts.get("device"):
        return None
    return opts["device"]
