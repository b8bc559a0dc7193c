"""The single Docker host: containers, networks and volumes, healed by us (targets.host.adapter)."""

from reconciler.targets.host.adapter import KIND

__all__ = ["KIND"]
