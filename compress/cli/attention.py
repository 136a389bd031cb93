"""`compress attention`: Double Sparsity channel files (calibrate) for sparse attention at decode."""
from __future__ import annotations

from typing import Optional

import typer

from compress.attention import defaults as ds
from compress.cli.common import exit_codes, out, print_json

__all__ = ["attention_app", "EXAMPLES"]

EXAMPLES = """
Examples:

  compress attention calibrate --out channels.json              # default model, Austen text, + channels.projection.safetensors

  compress attention calibrate ./Llama-3-8B --out ch.json --mode qk --nsamples 32

  compress attention calibrate --out ch.json --no-projection    # the channel ranking and the prior only

  compress eval --double-sparsity channels.json --context 4096  # the default setting (projected labels + prior)

  compress eval --double-sparsity ch.json --labels channels --no-position-prior --channels 1/16 --tokens 1/16
"""

attention_app = typer.Typer(help="Double Sparsity: heavy channels of Q·K pick the past tokens attention reads.",
                            no_args_is_help=True)

FLAGS = {"out": "--out", "mode": "--mode", "projection": "--projection", "force": "--force", "nsamples": "--nsamples",
         "seqlen": "--seqlen",
         "seed": "--seed", "text": "--text", "dataset": "--dataset", "text_field": "--text-field", "dtype": "--dtype",
         "device": "--device", "model": "MODEL", "bos": "--no-bos", "trust_remote_code": "--trust-remote-code"}


@attention_app.command("calibrate", epilog=EXAMPLES)
def calibrate(
    model: Optional[str] = typer.Argument(None, help="HF model directory, .gguf file or hub id; default SmolLM2-135M-Instruct (dequantized Q4_1 GGUF)."),
    out_file: str = typer.Option(..., "--out", help="The channel file (JSON) to write."),
    mode: str = typer.Option("qk", help="qk: mean |q*k| after RoPE | q: mean |q| | k: mean |k| (projection outputs)."),
    projection: bool = typer.Option(ds.CALIBRATION_PROJECTION, "--projection/--no-projection", help="Also fit projected labels (rank-r maps of q and k, "
                                    "the best approximation of q·k on the calibration windows), written beside --out "
                                    "as NAME.projection.safetensors; eval reads them with --labels projection."),
    text: Optional[str] = typer.Option(None, help="Calibration text: a .txt/.md file or .jsonl (see --text-field)."),
    dataset: Optional[str] = typer.Option(None, help="Calibration dataset NAME[:CONFIG][:SPLIT] (needs compress[datasets])."),
    text_field: str = typer.Option("text", help="Field holding the text in .jsonl records or dataset rows."),
    nsamples: int = typer.Option(ds.CALIBRATION_NSAMPLES, help="Calibration windows (the statistic sums over all of them)."),
    seqlen: int = typer.Option(ds.CALIBRATION_SEQLEN, help="Tokens per window (capped at the model's maximum); "
                               "projected labels choose well up to this position."),
    seed: int = typer.Option(0, help="Seed for drawing the windows."),
    bos: bool = typer.Option(True, "--bos/--no-bos", help="Start each window with the tokenizer's BOS where it adds one."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16 (auto: float32 on CPU)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu"),
    force: bool = typer.Option(False, help="Replace --out if it is a channel file compress wrote."),
    trust_remote_code: bool = typer.Option(False, help="Allow code shipped with the checkpoint to run."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Rank each head's channels by their share of Q·K over calibration text; write the reference's JSON."""
    with exit_codes(FLAGS.get):
        from compress.attention.config import ChannelCalibration
        from compress.attention.calibration.jobs import calibrate_channel_file
        from compress.cli.common import err
        from compress.pipeline.recipe import validate_config

        config = validate_config(ChannelCalibration, {
            "model": model, "out": out_file, "mode": mode, "projection": projection, "text": text, "dataset": dataset,
            "text_field": text_field,
            "nsamples": nsamples, "seqlen": seqlen, "seed": seed, "bos": bos, "dtype": dtype, "device": device,
            "force": force, "trust_remote_code": trust_remote_code}, label=lambda path: FLAGS.get(path[0], ".".join(map(str, path))))
        stage = (lambda message: None) if quiet or as_json else (lambda message: err.print(f"• {message}"))
        summary = calibrate_channel_file(config, stage)
        if as_json:
            print_json(summary)
        else:
            out.print(f"wrote {summary['out']}: {summary['layers']} layers, mode {summary['mode']}"
                      f"{' with projected labels' if summary['projection'] else ''}, "
                      f"{summary['windows']} windows ({summary['tokens']} tokens)")
