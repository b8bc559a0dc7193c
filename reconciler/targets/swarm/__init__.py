"""Docker Swarm as a target (`--target swarm`): one project's services, configs, secrets and
overlay networks (targets.swarm.adapter)."""

from reconciler.targets.swarm.adapter import KIND

__all__ = ["KIND"]
