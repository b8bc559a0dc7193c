"""`reconciler status`: a table of services, read from the engine (not the hot path).

Crash-loop back-off lives in the daemon's memory; the daemon leaves it in a small
JSON file beside its lock, which this reads when it is fresh.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.config import secrets
from reconciler.core import image_policy as ip
from reconciler.core import images as im
from reconciler.core import rollout as ro
from reconciler.core.desired import DesiredState, ServiceSpec
from reconciler.core.observed import ObservedContainer
from reconciler.engine.host.engine import Engine

STALE_AFTER_S = 300.0


def read_crashloops(path: Path, section: str = "crashloop") -> dict[str, dict[str, Any]]:
    """Replicas the running daemon holds in back-off ({} when there is no fresh file); with
    `section="images"`, what it last learnt of each followed tag."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if time.time() - float(data.get("updated_at", 0)) > STALE_AFTER_S:
        return {}
    return dict(data.get(section) or {})


def tag_line(svc: ServiceSpec, containers: tuple[ObservedContainer, ...], tag: Any) -> str:
    """`  web: follows app:t every 5m: running sha256:ab.. (2), newest sha256:cd.. (12:00:01)`"""
    every = svc.pull_every_s or (ip.DEFAULT_CHECK_EVERY_S if svc.update_policy else 0.0)
    running: dict[str, int] = {}
    for c in containers:
        if c.service == svc.name and c.state == "running":
            digest = im.digest_of(c.image) or "?"
            running[digest[:19]] = running.get(digest[:19], 0) + 1
    runs = ", ".join(f"{d} ({n})" for d, n in sorted(running.items())) or "nothing"
    if svc.update_policy is not None and tag:
        return policy_line(svc, runs if len(running) != 1 else "", sum(running.values()), tag)
    line = f"  {svc.name}: follows {im.unpinned(svc.image)} every {every:g}s: running {runs}"
    if tag and tag.get("checked_at"):
        at = time.strftime("%H:%M:%S", time.localtime(float(tag["checked_at"])))
        line += f", newest {str(tag.get('newest'))[:19]} (asked {at})"
    if tag and tag.get("error"):
        line += f"; last ask failed: {tag['error']}"
    return line


def policy_line(svc: ServiceSpec, runs: str, replicas: int, tag: Any) -> str:
    """`  web: follows app ^11.6: running 11.6.3@sha256:ab.. (2), newest allowed ..., newest
    published ..., held ...` and why newer versions were skipped."""
    policy = svc.update_policy
    rule = policy.semver if policy and policy.semver else f"tag {im.tag_of(svc.image)}"
    now = runs or short_ref(str(tag.get("running") or ""))  # runs: "" unless mixed
    line = f"  {svc.name}: follows {im.repository(svc.image)} {rule}: running {now or '-'}"
    line += f" ({replicas})" if not runs else ""
    for key in ("newest_allowed", "newest_published"):
        line += f", {key.replace('_', ' ')} {short_ref(str(tag.get(key) or '-'))}"
    held = [short_ref(str(h)) for h in tag.get("held") or []]
    line += f", held {', '.join(held) if held else '-'}"
    for skipped in tag.get("skipped") or []:
        line += f"\n    skipped {skipped}"
    if tag.get("error"):
        line += f"; last ask failed: {tag['error']}"
    return line


def short_ref(ref: str) -> str:
    """`11.6.3@sha256:abcdef012345` (a digest cut to 12 hex digits)."""
    tag, _, digest = ref.partition("@")
    return f"{tag}@{digest[:19]}" if digest else tag


def rollout_state(
    svc: ServiceSpec, record: ro.RolloutRecord, containers: tuple[ObservedContainer, ...]
) -> str:
    """`rolling out 2/3` (only while the rollout record says one is under way), `pending
    (not started)` (what runs is not the file's, and no rollout of it began), `rolled back
    from <rev>: <reason>`, `paused: <reason>` or `-` (a replica down is no rollout)."""
    record = ro.refresh(record, svc)
    target, mode = ro.target(svc, record)
    mine = tuple(c for c in containers if c.service == svc.name)
    done = ro.updated_count(target, mine)
    if mode == "rolled_back":
        back = "" if ro.converged(target, mine) else f" ({done}/{len(target.replicas)})"
        return f"rolled back from {svc.revision[:12]}{back}: {record.failed_reason}"
    if mode == "paused":
        return f"paused: {record.paused_reason}"
    stale = any(
        c.spec_hash != s.spec_hash for s in target.replicas for c in mine if c.replica == s.replica
    )
    if stale and record.rolling_revision == target.revision:
        return f"rolling out {done}/{len(target.replicas)}"
    if stale:
        return "pending (not started)"
    return "-"


def image_shown(svc: ServiceSpec, wanted: str, containers: tuple[ObservedContainer, ...]) -> str:
    """The IMAGE column: what the service's containers run (`x:1 (file: x:2)` when the file
    asks another), the file's when none exists (`x:2 (file; none runs)`)."""
    runs = sorted({_image(c.image) for c in containers if c.service == svc.name and c.image})
    asked = im.unpinned(wanted)
    if not runs:
        return f"{asked} (file; none runs)"
    text = ", ".join(runs)
    return text if runs == [asked] else f"{text} (file: {asked})"


def _image(ref: str) -> str:
    """A container's image as the list gives it: `repo:tag` (a digest dropped), or a short
    image id when its tag has moved on since (`sha256:0123456789ab`)."""
    return ref[:19] if ref.startswith("sha256:") else im.unpinned(ref)


def render_status(
    desired: DesiredState,
    engine: Engine,
    status_file: Path | None = None,
    store: Any = None,
    denied: Mapping[str, str] | None = None,
    pin: Callable[[ServiceSpec], ServiceSpec] | None = None,
    held: Mapping[str, str] | None = None,
) -> str:
    """service, desired, running, healthy, restarts, image, rollout — plus a line per broken
    replica. `store` (a StateStore) gives each service's rollout record; `denied` the rules
    the host policy denies a service by (it is not created: `denied (<rule>)`); `held` why a
    service is held stopped (a snapshot restore failed: `held stopped`, and the reason)."""
    denied = denied or {}
    held = held or {}
    observed = engine.observe(desired.project)
    live = {c.name: c for c in observed.containers}
    loops = read_crashloops(status_file) if status_file else {}
    tags = read_crashloops(status_file, "images") if status_file else {}
    ours = read_crashloops(status_file, "restarts") if status_file else {}  # the daemon's heals
    kept = getattr(store, "restarts", None)  # ...as kept in the state directory (any daemon)
    if kept is not None:
        ours = {name: {"count": n} for name, n in kept.all().items()}
    if pin is not None:  # the adapter's own pins (update policies, --locked)
        desired_now = replace(desired, services=tuple(map(pin, desired.services)))
    elif any(im.follows(s) for s in desired.services):
        desired_now = im.pin_all(desired, engine.local_digest)  # followed tags run pinned
    else:
        desired_now = desired
    pinned = {s.name: s for s in desired_now.services}
    rows = [("SERVICE", "DESIRED", "RUNNING", "HEALTHY", "RESTARTS", "IMAGE", "ROLLOUT")]
    problems: list[str] = []
    for svc in desired.services:
        running = healthy = restarts = 0
        for spec in svc.replicas:
            c = live.get(spec.name)
            if c is None:
                if svc.name not in denied:
                    problems.append(f"  {spec.name}: missing")
                continue
            info = engine.inspect(c.id) or {}
            restarts += int(info.get("RestartCount") or 0)
            restarts += int((ours.get(spec.name) or {}).get("count") or 0)
            if c.state == "running":
                running += 1
                healthy += c.health in (None, "healthy")
            loop = loops.get(spec.name)
            if loop and c.state != "running":
                at = time.strftime("%H:%M:%S", time.localtime(float(loop["next_attempt"])))
                problems.append(
                    f"  {spec.name}: CrashLoopBackOff (next attempt {at}, "
                    f"last exit code {loop.get('exit_code')}, {loop.get('failures')} quick exits)"
                )
                problems.extend(f"    | {line}" for line in engine.log_tail(c.id, 5))
            elif c.state != "running" or c.health == "unhealthy":
                state = c.state if c.exit_code is None else f"{c.state} ({c.exit_code})"
                problems.append(
                    f"  {spec.name}: {'unhealthy' if c.health == 'unhealthy' else state}"
                )
        record = store.get(svc.name) if store is not None else ro.RolloutRecord()
        rows.append(
            (
                svc.name,
                str(len(svc.replicas)),
                str(running),
                str(healthy),
                str(restarts),
                image_shown(svc, pinned[svc.name].image, observed.containers),
                f"denied ({denied[svc.name]})"
                if svc.name in denied
                else "held stopped"
                if svc.name in held
                else rollout_state(pinned[svc.name], record, observed.containers),
            )
        )
        if svc.name in held:
            problems.append(
                f"  {svc.name}: HELD STOPPED: {held[svc.name]}; every start is refused until "
                f"`reconciler restore {svc.name} SNAPSHOT` succeeds (`reconciler snapshots "
                f"{svc.name}` lists them)"
            )
        if im.follows(svc):
            problems.append(tag_line(svc, observed.containers, tags.get(svc.name)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return secrets.redact("\n".join(lines + problems))  # a log tail may quote a secret
