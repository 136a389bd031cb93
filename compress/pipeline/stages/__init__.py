"""Every stage kind registers itself here; a new one is one module and one import."""
from compress.pipeline.stages import evaluate, export, prune

__all__ = ["evaluate", "export", "prune"]
