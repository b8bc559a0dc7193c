"""A service's revision: sha256 of what the file asks of its containers, whatever their count
(what a rollout records, holds as failed and returns to).

Called by the renderer (`render`) with what it resolved (environment, names, paths).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.config.build import revision_form
from reconciler.config.forms import Mount, extra_hosts, mount, port_text
from reconciler.config.options import OPTION_DEFAULTS, argv, text_labels
from reconciler.config.schema import ResourcesDef, ServiceDef
from reconciler.core.desired import BuildSpec, SecretMount

# Keys that do not change what a service's containers are: left out of its revision.
_NOT_IN_REVISION = {
    "profiles",
    "replicas",
    "scale",
    "deploy",
    "heal",
    "drain_period",
    "state",
    "pull",
    "pull_policy",
    "depends_on",
}
# Keys added after revisions were first recorded: left out of a revision when not given.
_ADDED_KEYS = (
    *("privileged", "devices", "ipc", "uts", "userns_mode", "security_opt", "secrets"),
    "links",
)


def service_revision(
    project: str,
    name: str,
    s: ServiceDef,
    *,
    environment: tuple[str, ...],
    network_name: Callable[[str], str],
    path: Callable[[str], Path],
    mount_text: Callable[[Mount | None], str],
    build: BuildSpec | None,
    config_digests: tuple[tuple[str, str], ...],
    mounts: tuple[SecretMount, ...] = (),
) -> str:
    """The revision of service `name`.

    Replica count, deploy, heal, drain, state, pull, depends_on and profiles are left out
    (they change no container); equivalent spellings (environment as map or list, relative
    paths) are normalised; the content of the config files it mounts is included, except
    those applied by reload_signal (as for the spec hash). Keys added later enter only when
    given, so a file without them keeps the revision it had.
    """
    added = {k for k in _ADDED_KEYS if k not in s.model_fields_set}
    body: dict[str, Any] = s.model_dump(mode="json", exclude=_NOT_IN_REVISION | added)
    body["environment"] = list(environment)
    body.pop("env_file", None)  # its content is in environment
    body["labels"] = text_labels(s.labels)
    body["command"], body["entrypoint"] = argv(s.command), argv(s.entrypoint)
    body["ports"] = [port_text(p) for p in s.ports]
    for key, default in OPTION_DEFAULTS.items():  # unset: the revision files had before
        if body.get(key) == default:
            body.pop(key, None)
    body["extra_hosts"] = list(extra_hosts(s.extra_hosts))
    renamed = {k: network_name(k) for k in s.networks if network_name(k) != k}
    if renamed:  # a network's name: changes what the containers join
        body["network_names"] = renamed
    if isinstance(body["networks"], dict):
        for attach in body["networks"].values():  # ipv4_address: added later
            if isinstance(attach, dict) and attach.get("ipv4_address") is None:
                attach.pop("ipv4_address", None)
    if s.deploy.resources != ResourcesDef():  # deploy is left out, its resources are not
        body["resources"] = s.deploy.resources.model_dump(mode="json")
        if not s.deploy.resources.reservations.devices:  # added later
            del body["resources"]["reservations"]["devices"]
    if body.get("healthcheck") and body["healthcheck"].get("start_interval") is None:
        body["healthcheck"].pop("start_interval", None)
    body["volumes"] = [mount_text(mount(v)) for v in s.volumes]
    body["configs"] = [{"source": str(path(c.source)), "target": c.target} for c in s.configs]
    if build is not None:
        body["build"] = revision_form(build)
    payload: dict[str, Any] = {
        "project": project,
        "service": name,
        "definition": body,
        "config_digests": [list(d) for d in config_digests],
    }
    if mounts:  # a content change is a new revision (the digest, never the value)
        payload["secret_digests"] = [[m.target, m.digest] for m in mounts]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
