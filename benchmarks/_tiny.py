"""--tiny mode: a tiny random Llama and a short text (from tests/conftest.py), for checking scripts fast."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tiny_model(where: str | Path) -> tuple[str, str]:
    """Save the tests' tiny Llama and its text under `where`; return (model dir, text file)."""
    from tests.conftest import TEXT, save_tiny_model

    where = Path(where)
    model = save_tiny_model(where / "tiny-llama")
    text = where / "text.txt"
    text.write_text(TEXT)
    return str(model), str(text)


def add_text_arguments(parser) -> None:
    """The calibration / evaluation options shared by the default-model scripts, and --tiny."""
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--tiny", action="store_true")


def model_and_text(args) -> dict:
    """The default model (float32, CPU) or the tiny one, its calibration windows and held-out ids."""
    import tempfile

    from compress.calibrate.data import TextSource, calibration_tokens, evaluation_tokens, window_bos
    from compress.model.loading import load_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, text = tiny_model(tmp) if args.tiny else (None, None)
        model, tokenizer, source = load_model(model_dir, "float32", "cpu")
        nsamples, seqlen = (8, 64) if args.tiny else (args.nsamples, args.seqlen)
        calibration = calibration_tokens(tokenizer, TextSource(path=text), nsamples, seqlen, 0)
        eval_ids = evaluation_tokens(tokenizer, TextSource(path=text), args.eval_tokens)
    context = min(args.context, eval_ids.numel() // 2) if args.tiny else args.context
    return {"model": model, "tokenizer": tokenizer, "source": "tiny random Llama" if args.tiny else source,
            "calibration": calibration, "eval_ids": eval_ids, "nsamples": nsamples, "seqlen": seqlen,
            "context": context, "bos": window_bos(tokenizer)}
