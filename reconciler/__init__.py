"""reconciler: keeps a Docker host converged on a declarative desired_state.yaml."""

__version__ = "0.1.0"
__all__ = ["__version__"]
