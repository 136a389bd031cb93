"""The import graph, built from the source (function-level imports included), against the declared order
of rooms: no circles, and nothing imports a room above its own."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "compress"

# Lowest first. A room may import its own modules and any room listed before it.
ROOMS = [
    ("errors", "config", "pattern", "paths", "provenance", "version"),  # leaves every room may use
    ("defaults",),  # the default model and text
    ("model",),  # loading, decoder layers, projection roles, placement
    ("calibrate",),  # token sources, collectors, the layer-sequential engine
    ("kernels",),  # compressed N:M format, SparseLinear, GPU kernels
    ("permute",),  # channel permutations and their folding
    ("prune",),  # pruning methods and the prune pass
    ("export",),  # writing (and reading back) checkpoints
    ("evaluate",),  # perplexity
    ("factorize", "attention", "graph"),  # FFN -> MoE, Double Sparsity, graph transformers (siblings: no imports between them)
    ("zero_shot",),  # zero-shot accuracy through lm-evaluation-harness, the offline task
    ("pipeline",),  # stages, recipes, the session
    ("html_report",),  # compress report: the HTML page of report.json files
    ("cli",),  # the command line
    ("<root>",),  # compress/__init__.py: the public top
]
RANK = {room: rank for rank, rooms in enumerate(ROOMS) for room in rooms}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def imports_of(path: Path) -> set[str]:
    """Every compress module a file imports, anywhere in it (a `from compress.x import y` counts as
    compress.x.y when that is a module, else compress.x)."""
    found = set()
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "compress"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "compress":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return found


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): imports_of(p) & MODULES for p in PACKAGE.rglob("*.py")}


def test_every_room_is_declared():
    assert {room_of(m) for m in MODULES} <= set(RANK), {room_of(m) for m in MODULES} - set(RANK)


def test_nothing_imports_upward():
    upward = [(a, b) for a, targets in GRAPH.items() for b in targets if RANK[room_of(b)] > RANK[room_of(a)]]
    assert not upward, upward


def test_sibling_rooms_stay_apart():
    sideways = [(a, b) for a, targets in GRAPH.items() for b in targets
                if room_of(a) != room_of(b) and RANK[room_of(a)] == RANK[room_of(b)] and room_of(a) not in ROOMS[0]]
    assert not sideways, sideways


def test_no_import_circles():
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for target in sorted(GRAPH[node]):
            if target == node:
                continue
            if state.get(target) == 1:
                cycle.extend(trail[trail.index(target):] + [node, target] if target in trail else [node, target])
                return True
            if state.get(target) is None and visit(target, trail + [node]):
                return True
        state[node] = 2
        return False

    assert not any(visit(m, []) for m in sorted(GRAPH) if m not in state), " → ".join(cycle)


def test_the_graph_is_read_at_all():
    # a parser that saw nothing would pass the checks above
    assert "compress.prune.config" in GRAPH["compress.prune.apply"]
    assert "compress.model.placement" in GRAPH["compress.calibrate.engine"]
    assert "compress.export.compressed" in GRAPH["compress.pipeline.loading"]  # a function-level import
