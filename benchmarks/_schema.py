"""Key structure of a result JSON, to check a stored file against what its script writes now."""
from __future__ import annotations


def key_paths(value, prefix: str = "") -> set[str]:
    """Every key path: dicts by key, lists merged as `[]` (the union over their items)."""
    paths = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths |= {path} | key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            paths |= key_paths(item, prefix + "[]")
    return paths


def differences(written: dict, stored: dict) -> list[str]:
    """'missing P' / 'extra P' for key paths outside `meta`; a stored meta marked reconstructed is not compared."""
    skip = ("meta",) if stored.get("meta", {}).get("reconstructed") else ()
    ours, theirs = key_paths(written), key_paths(stored)
    keep = lambda p: not any(p == s or p.startswith(s + ".") for s in skip)  # noqa: E731
    return sorted([f"missing {p}" for p in ours - theirs if keep(p)] + [f"extra {p}" for p in theirs - ours if keep(p)])
