"""The Swarm engine's old path, kept for its importers: the code is in `engine.swarm.engine`."""

from reconciler.engine.swarm.engine import (
    RUNNING_STATES,
    SwarmEngine,
    TaskCounts,
    check_manager,
    swarm_problem,
)

__all__ = ["RUNNING_STATES", "SwarmEngine", "TaskCounts", "check_manager", "swarm_problem"]
