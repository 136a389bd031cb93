"""--tiny mode: a tiny random Llama and a short text (from tests/conftest.py), for checking scripts fast."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tiny_model(where: str | Path) -> tuple[str, str]:
    """Save the tests' tiny Llama and its text under `where`; return (model dir, text file)."""
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    from tests.conftest import TEXT, save_tiny_model

    where = Path(where)
    model = save_tiny_model(where / "tiny-llama")
    text = where / "text.txt"
    text.write_text(TEXT)
    return str(model), str(text)
