"""Compose's profiles: which services of a file are part of the project on this run.

A service without `profiles` always runs; one with profiles runs when one of them is selected
(`--profile NAME`, repeatable, or COMPOSE_PROFILES=a,b from the environment or `.env`; `*`
selects every profile). The others are dormant: not part of the project, so their containers
are neither created, changed nor removed (compose leaves them alone the same way). Called by
the loader before the rules, for both targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from reconciler.config.forms import joins, links, required
from reconciler.config.report import Issue
from reconciler.config.schema import DesiredStateDef, ServiceDef

ENV = "COMPOSE_PROFILES"  # what `--profile` sets for the process (cli.main), as compose reads it
ALL = "*"


def selected(lookup: Callable[[str], str | None]) -> frozenset[str]:
    """The profiles COMPOSE_PROFILES selects (comma-separated; blanks ignored)."""
    text = lookup(ENV) or ""
    return frozenset(p.strip() for p in text.split(",") if p.strip())


def active(svc: ServiceDef, chosen: frozenset[str]) -> bool:
    """Whether the service is part of the project when `chosen` profiles are selected."""
    return not svc.profiles or ALL in chosen or bool(chosen & set(svc.profiles))


@dataclass(frozen=True, slots=True)
class Selection:
    """The definition with the dormant services left out, and what to say about it."""

    definition: DesiredStateDef
    dormant: frozenset[str]
    issues: tuple[Issue, ...] = ()
    unknown: tuple[str, ...] = ()  # selected profiles no service has (a typo?)


def select(d: DesiredStateDef, chosen: frozenset[str]) -> Selection:
    """Leave out the services of profiles not in `chosen`; an active service that needs a
    dormant one (depends_on, links, `service:X`) is an issue naming the profile to select."""
    dormant = frozenset(n for n, s in d.services.items() if not active(s, chosen))
    known = {p for s in d.services.values() for p in s.profiles}
    unknown = tuple(sorted(chosen - known - {ALL}))
    if not dormant:
        return Selection(d, dormant, unknown=unknown)
    kept = {n: s for n, s in d.services.items() if n not in dormant}
    issues = [
        issue for name, svc in kept.items() for issue in _needs(d, name, svc, dormant, chosen)
    ]
    if not kept:
        issues.append(
            Issue(
                ("services",),
                f"no service runs with the selected profiles ({', '.join(sorted(chosen)) or 'none'}"
                f"); the file's profiles: {', '.join(sorted(known))}: select one with --profile "
                "NAME or COMPOSE_PROFILES",
            )
        )
    return Selection(d.model_copy(update={"services": kept}), dormant, tuple(issues), unknown)


def _needs(
    d: DesiredStateDef, name: str, svc: ServiceDef, dormant: frozenset[str], chosen: frozenset[str]
) -> Iterable[Issue]:
    at = ("services", name)
    refs = [("depends_on", dep) for dep in svc.depends_on if required(svc, dep)]
    refs += [(key, owner) for key, owner in joins(svc)]
    refs += [("links", service) for service, _ in links(svc)]
    for key, other in refs:
        if other not in dormant:
            continue
        profiles = d.services[other].profiles
        which = (
            f"its profile {profiles[0]} is not"
            if len(profiles) == 1
            else f"none of its profiles {', '.join(profiles)} is"
        )
        yield Issue(
            (*at, key),
            f"service {other!r} is not part of the project: {which} selected "
            f"(selected: {', '.join(sorted(chosen)) or 'none'}); select it with --profile "
            f"{profiles[0]} (or COMPOSE_PROFILES), or give {name!r} a profile too",
        )
