"""`compress attention generate`: greedy continuations of a prompt through `model.generate`, dense and with a
DoubleSparseCache (compress.attention.decoding.cache)."""
from __future__ import annotations

from typing import Optional

import typer

from compress.attention import defaults as ds
from compress.cli.attention import attention_app
from compress.cli.common import exit_codes, out, print_json

__all__ = ["generate"]

EXAMPLES = """
Examples:

  compress attention generate --double-sparsity channels.json --prompt "It is a truth universally"

  compress attention generate ./model --double-sparsity ch.json --prompt-file prompt.txt --new-tokens 64 --json
"""

FLAGS = {"channel_file": "--double-sparsity", "channels": "--channels", "tokens": "--tokens",
         "dense_layers": "--dense-layers", "label_bits": "--label-bits", "prompt": "--prompt",
         "position_prior": "--position-prior", "labels": "--labels", "new_tokens": "--new-tokens"}


@attention_app.command("generate", epilog=EXAMPLES)
def generate(
    model: Optional[str] = typer.Argument(None, help="HF model directory, .gguf file or hub id; default SmolLM2-135M-Instruct (dequantized Q4_1 GGUF)."),
    double_sparsity: str = typer.Option(..., "--double-sparsity", help="A channel file (compress attention calibrate)."),
    prompt: Optional[str] = typer.Option(None, help="The prompt text."),
    prompt_file: Optional[str] = typer.Option(None, help="A text file holding the prompt."),
    new_tokens: int = typer.Option(32, help="Tokens to generate."),
    channels: str = typer.Option(ds.CHANNELS, help="Heavy channels per head (or the projected labels' rank), a "
                                 "fraction of head_dim or a count."),
    tokens: str = typer.Option(ds.TOKENS, help="Tokens kept per decode step: a fraction of the step's context or a count."),
    dense_layers: int = typer.Option(ds.DENSE_LAYERS, help="The first layers keep dense attention."),
    label_bits: int = typer.Option(ds.LABEL_BITS, help="Key label bits, 4 | 16."),
    position_prior: bool = typer.Option(ds.POSITION_PRIOR, "--position-prior/--no-position-prior", help="Add the channel file's position prior to the label scores."),
    labels: str = typer.Option(ds.LABELS, help="channels | projection (the file's projected labels, rank = --channels)."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
    device: str = typer.Option("auto", help="auto | cuda | cpu (CUDA runs the Triton decode kernels)"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Greedy continuations of a prompt after a dense prefill: dense, and with Double Sparsity decode steps."""
    with exit_codes(FLAGS.get):
        from compress.attention.config import DoubleSparsity
        from compress.attention.decoding.cache import continue_text
        from compress.config import check_count
        from compress.errors import BadInput
        from compress.model.loading import load_model, resolve_device
        from compress.paths import user_path
        from compress.pipeline.recipe import validate_config

        check_count(new_tokens, "new_tokens")
        if (prompt is None) == (prompt_file is None):
            raise BadInput("give the prompt with --prompt or --prompt-file (one of them)")
        if prompt_file is not None:
            path = user_path(prompt_file)
            if not path.is_file():
                raise BadInput(f"--prompt-file {prompt_file}: no such file")
            prompt = path.read_text(errors="replace")
        settings = validate_config(DoubleSparsity, {
            "channel_file": double_sparsity, "channels": channels, "tokens": tokens, "dense_layers": dense_layers,
            "label_bits": label_bits, "position_prior": position_prior, "labels": labels}, label=lambda path: FLAGS.get(path[0], str(path[0])))
        where = resolve_device(device)
        loaded, tokenizer, _ = load_model(model, dtype, where)
        result = continue_text(loaded.to(where).eval(), tokenizer, prompt, new_tokens, settings)
        if as_json:
            print_json(result)
            return
        out.print(f"dense:           {result['dense']!r}")
        out.print(f"Double Sparsity: {result['sparse']!r}")
        out.print(f"agreement {result['agreement']:.0%} (common prefix {result['common_prefix']} of {new_tokens}); "
                  f"{'Triton kernels' if result['kernels'] else 'PyTorch'} decode steps")
