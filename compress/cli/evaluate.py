"""`compress eval`: perplexity (and zero-shot accuracy) of one or more models on the same held-out text, side by side."""
from __future__ import annotations

from typing import List, Optional

import typer

from compress.attention import defaults as ds
from compress.cli.common import error_line, exit_codes, print_json, progress
from compress.cli.prune import DEVICE_MAP_HELP, MAX_MEMORY_HELP, OFFLOAD_HELP
from compress.cli.run import GATE_HELP

__all__ = ["evaluate", "EXAMPLES"]

EXAMPLES = """
Examples:

  compress eval                                   # default model on held-out Austen text

  compress eval ./dense ./pruned --json           # side by side

  compress eval --double-sparsity channels.json --context 4096      # the defaults: rank-8 projected labels + prior

  compress eval --double-sparsity ch.json --labels channels --no-position-prior --channels 1/16   # the paper's labels

  compress eval ./dense ./pruned --tasks persuasion_next_sentence   # zero-shot accuracy (pip install 'compress[zeroshot]')
"""


DS_FLAGS = {"channel_file": "--double-sparsity", "channels": "--channels", "tokens": "--tokens",
            "dense_layers": "--dense-layers", "label_bits": "--label-bits", "sink": "--sink", "recent": "--recent",
            "labels": "--labels", "position_prior": "--position-prior"}


def _double_sparsity(ctx, channel_file, channels, tokens, dense_layers, label_bits, sink, recent, labels,
                     position_prior):
    """The Double Sparsity settings, or None; its options without --double-sparsity are refused."""
    from compress.errors import BadInput
    from compress.pipeline.recipe import validate_config

    given = [DS_FLAGS[key] for key in ("channels", "tokens", "dense_layers", "label_bits", "sink", "recent", "labels",
                                       "position_prior")
             if ctx.get_parameter_source("ds_tokens" if key == "tokens" else key).name != "DEFAULT"]
    if channel_file is None:
        if given:
            raise BadInput(f"{given[0]} goes with --double-sparsity")
        return None
    from compress.attention.config import DoubleSparsity

    return validate_config(DoubleSparsity, {
        "channel_file": channel_file, "channels": channels, "tokens": tokens, "dense_layers": dense_layers,
        "label_bits": label_bits, "sink": sink, "recent": recent, "labels": labels,
        "position_prior": position_prior}, label=lambda path: DS_FLAGS.get(path[0], str(path[0])))


def evaluate(
    ctx: typer.Context,
    models: Optional[List[str]] = typer.Argument(None, help="Models to compare (default: the default model)."),
    text: Optional[str] = typer.Option(None, help="Held-out text file (default: Austen's Persuasion)."),
    dataset: Optional[str] = typer.Option(None, help="Held-out dataset NAME[:CONFIG][:SPLIT]."),
    text_field: str = typer.Option("text", help="Field holding the text in .jsonl records or dataset rows."),
    context: int = typer.Option(1024, help="Perplexity context length."),
    max_tokens: Optional[int] = typer.Option(None, help="Use at most this many held-out tokens."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
    device: str = typer.Option("auto", help="auto | cuda | cpu"),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
    max_memory: Optional[str] = typer.Option(None, help=MAX_MEMORY_HELP),
    offload_folder: Optional[str] = typer.Option(None, help=OFFLOAD_HELP),
    bos: bool = typer.Option(True, "--bos/--no-bos", help="Start each window with the tokenizer's BOS where it adds one."),
    trust_remote_code: bool = typer.Option(False, help="Allow code shipped with the checkpoint to run."),
    kernels: bool = typer.Option(False, "--kernels", help="Compressed exports on a GPU: perplexity and tokens/s on "
                                 "the dense path and on the sparse kernels, each forward replayed as a CUDA graph."),
    allow_fallback: bool = typer.Option(False, "--allow-fallback", help="With --kernels: report Linears that fell "
                                        "back to the dense path instead of failing (exit 1) on them."),
    double_sparsity: Optional[str] = typer.Option(None, "--double-sparsity", help="A channel file (compress attention "
                                                  "calibrate): perplexity with dense and with Double Sparsity attention."),
    channels: str = typer.Option(ds.CHANNELS, help="With --double-sparsity: heavy channels per head (or the projected "
                                 "labels' rank), a fraction of head_dim or a count."),
    ds_tokens: str = typer.Option(ds.TOKENS, "--tokens", help="With --double-sparsity: tokens kept per query, a fraction of "
                                  "--context, a count, or top-p:P (the fewest whose approximate attention mass reaches P)."),
    dense_layers: int = typer.Option(ds.DENSE_LAYERS, help="With --double-sparsity: the first layers keep dense attention."),
    label_bits: int = typer.Option(ds.LABEL_BITS, help="With --double-sparsity: key label bits, 4 | 8 | 16."),
    sink: int = typer.Option(0, help="With --double-sparsity: first tokens always kept (inside the budget)."),
    recent: int = typer.Option(0, help="With --double-sparsity: most recent tokens always kept (inside the budget)."),
    labels: str = typer.Option(ds.LABELS, help="With --double-sparsity: channels (q·k over the heavy channels) | "
                               "projection (rank --channels projected labels; calibrate with --projection)."),
    position_prior: bool = typer.Option(ds.POSITION_PRIOR, "--position-prior/--no-position-prior", help="With --double-sparsity: add the channel "
                                        "file's mean logit per query-key distance to the label scores."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Zero-shot accuracy through lm-evaluation-harness (pip "
                                        "install 'compress[zeroshot]'), comma-separated tasks: persuasion_next_sentence "
                                        "runs offline (4 choices, chance 25%); lm-eval's own (hellaswag, arc_easy, ...) "
                                        "need the Hugging Face hub."),
    limit: Optional[int] = typer.Option(None, "--limit", help="With --tasks: score only the first N items of each task."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Also write the evaluation as a job's record here: a "
                                          "folder with report.json (and compression.json, the marker)."),
    force: bool = typer.Option(False, help="Replace --out if it holds an earlier output of compress."),
    gates: Optional[List[str]] = typer.Option(None, "--gate", metavar="METRIC<=LIMIT", help=GATE_HELP + " Needs --out. Here: ppl, and with "
                                              "--double-sparsity or --kernels ppl_before, ppl_ratio (sparse / dense), "
                                              "with --kernels speedup, with --tasks accuracy."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Perplexity (and zero-shot accuracy with --tasks) of one or more models on the same held-out text, side by side."""
    from compress.cli.flags import flag_of

    with exit_codes(flag_of):
        from compress.cli.flags import label_for_cli
        from compress.cli.render import print_compare_report
        from compress.errors import BadInput
        from compress.pipeline.compare import CompareConfig, KernelFallback, compare_models
        from compress.pipeline.recipe import validate_config

        if limit is not None and tasks is None:
            raise BadInput("--limit goes with --tasks")
        config = validate_config(CompareConfig, {
            "models": list(models or [None]), "text": text, "dataset": dataset, "text_field": text_field,
            "context": context, "tokens": max_tokens, "dtype": dtype, "device": device, "device_map": device_map,
            "max_memory": max_memory, "offload_folder": offload_folder, "trust_remote_code": trust_remote_code,
            "kernels": kernels, "allow_fallback": allow_fallback, "bos": bos, "limit": limit,
            "tasks": None if tasks is None else [task.strip() for task in tasks.split(",")]},
            label=lambda path: {"tasks": "--tasks", "limit": "--limit"}.get(path[0], label_for_cli(path)))
        settings = _double_sparsity(ctx, double_sparsity, channels, ds_tokens, dense_layers, label_bits, sink, recent,
                                    labels, position_prior)
        record = _record_checks(config, settings, out_dir, force, gates)
        with progress(quiet or as_json) as hooks:
            try:
                if settings is not None:
                    from compress.pipeline.double_sparsity import compare_double_sparsity

                    report = compare_double_sparsity(config, settings, hooks)
                else:
                    report = compare_models(config, hooks)
            except KernelFallback as exc:
                error_line("error:", f"{exc} (--allow-fallback reports them instead)")
                raise typer.Exit(1)
        if as_json:
            print_json(report.model_dump(mode="json"))
        else:
            print_compare_report(report)
            _print_zero_shot(report)
        if record is not None:
            _write_record(config, report, settings is not None or config.kernels, record, force, as_json)


def _record_checks(config, settings, out_dir, force: bool, gates) -> dict | None:
    """Before any work: the --out folder and the --gate metrics (named as eval measures them), or None."""
    import time

    from compress.errors import BadInput

    if out_dir is None:
        if gates or force:
            raise BadInput(f"{'--gate' if gates else '--force'} goes with --out (the record the gates are written into)")
        return None
    from compress.export.atomic import check_output_dir
    from compress.pipeline.eval_record import planned_eval_metrics
    from compress.pipeline.gates import Gate, require_metrics
    from compress.pipeline.recipe import validate_config
    from compress.provenance import now

    parsed = [validate_config(Gate, text, label=lambda path: "--gate") for text in gates or []]
    require_metrics(parsed, planned_eval_metrics(len(config.models), settings is not None or config.kernels,
                                                 config.kernels, config.tasks))
    path = check_output_dir(out_dir, force, tuple(m for m in config.models if m))
    return {"out": path, "gates": parsed, "started": now(), "clock": time.perf_counter()}


def _write_record(config, report, paired: bool, record: dict, force: bool, as_json: bool) -> None:
    import time

    from compress.cli.render import print_gates
    from compress.pipeline.eval_record import eval_run_report, write_eval_folder
    from compress.pipeline.gates import GateBreach

    run = eval_run_report(config, report, paired, record["started"], time.perf_counter() - record["clock"],
                          record["gates"])
    write_eval_folder(record["out"], force, run)
    if not as_json:
        print_gates(run.gates)
    if not run.gates_passed:
        raise GateBreach(run.gates, run)


def _print_zero_shot(report) -> None:
    """One row per model and task: lm-eval's acc and acc_norm with their standard errors."""
    from rich.table import Table
    from rich.text import Text

    from compress.cli.common import out
    from compress.zero_shot import accuracy

    rows = [(row["model"], task, accuracy(row["zero_shot"], task)) for row in report.results if row.get("zero_shot")
            for task in row["zero_shot"]["results"]]
    if not rows:
        return
    table = Table(title=Text("zero-shot accuracy (lm-evaluation-harness; ± its standard error)"))
    for column in ("model", "task", "items", "acc", "acc_norm", "chance"):
        table.add_column(column, justify="left" if column in ("model", "task") else "right")

    def value(score, error) -> str:
        return "—" if score is None else f"{score:.3f}" + ("" if error is None else f" ± {error:.3f}")

    for model, task, acc in rows:
        table.add_row(Text(model), Text(task), str(acc["items"] or "—"), value(acc["acc"], acc["acc_stderr"]),
                      value(acc["acc_norm"], acc["acc_norm_stderr"]),
                      "—" if acc["chance"] is None else f"{acc['chance']:.0%}")
    out.print(table)
