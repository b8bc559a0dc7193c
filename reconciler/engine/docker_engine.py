"""The host engine's old path, kept for its importers: the code is in `engine.client` and
`engine.host` (observe, containers, images, engine)."""

from reconciler.engine.client import (
    FALLBACK_API_VERSION,
    PROGRESS_EVERY_S,
    connect,
    docker_errors,
)
from reconciler.engine.host.containers import DEFAULT_GRACE_S
from reconciler.engine.host.engine import Engine
from reconciler.engine.host.images import STALL_TIMEOUT_S

__all__ = [
    "DEFAULT_GRACE_S",
    "FALLBACK_API_VERSION",
    "PROGRESS_EVERY_S",
    "STALL_TIMEOUT_S",
    "Engine",
    "connect",
    "docker_errors",
]
