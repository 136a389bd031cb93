"""Every stage kind registers itself here; a new one is one module and one import."""
from compress.pipeline.stages import attention, evaluate, export, factorize, graph_prune, prune

__all__ = ["attention", "evaluate", "export", "factorize", "graph_prune", "prune"]
