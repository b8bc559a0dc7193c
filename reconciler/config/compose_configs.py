"""Compose's file-based configs read as they are: a top-level `configs: {NAME: {file: PATH}}`
and a service's `configs: [NAME]` or `[{source: NAME, target: ...}]` become the service's
read-only mounted files (`{source: PATH, target}`), as `reconciler import` writes them.
Called by the loader before the schema judges the file.
"""

from __future__ import annotations

from typing import Any

from reconciler.config.report import Report
from reconciler.config.yamlread import Document

REASON = "not supported (configs come from files only)"


def as_mounts(data: dict[str, Any], doc: Document, report: Report) -> dict[str, Any]:
    """`data` with its top-level configs resolved into the services' config mounts."""
    top = data.get("configs")
    if not isinstance(top, dict):
        return data
    files: dict[str, str] = {}
    for name, body in top.items():
        if isinstance(body, dict) and isinstance(body.get("file"), str):
            files[str(name)] = _relative(body["file"])
        for key in body if isinstance(body, dict) else ():
            if key != "file":
                where = ("configs", name, key)
                report.add(REASON, where, doc.mark(where, key=True))
        if not isinstance(body, dict) or "file" not in body:
            at = ("configs", name)
            report.add("takes {file: PATH} (configs come from files only)", at, doc.mark(at))
    out = {k: v for k, v in data.items() if k != "configs"}
    services = data.get("services")
    if isinstance(services, dict):
        out["services"] = {
            name: _service(svc, files) if isinstance(svc, dict) else svc
            for name, svc in services.items()
        }
    return out


def _service(svc: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    mounts = svc.get("configs")
    if not isinstance(mounts, list):
        return svc
    converted: list[Any] = []
    for entry in mounts:
        name = entry if isinstance(entry, str) else None
        if isinstance(entry, dict) and isinstance(entry.get("source"), str):
            name = entry["source"]
        if name is None or name not in files:
            converted.append(entry)  # the schema says what does not fit
        elif isinstance(entry, str):
            converted.append({"source": files[name], "target": f"/{name}"})
        else:
            target = entry.get("target", f"/{name}")
            converted.append({**entry, "source": files[name], "target": target})
    return {**svc, "configs": converted}


def _relative(path: str) -> str:
    """A config's file as a mount source: `app.conf` is `./app.conf` (the file's folder)."""
    return path if path.startswith(("/", ".", "~", "$")) else f"./{path}"
