"""The `compress` command: thin Typer wrappers over compress.pipeline; heavy imports happen inside commands."""
from __future__ import annotations

import typer

from compress.version import __version__
from compress.cli.attention import attention_app
import compress.cli.attention_generate  # noqa: F401,E402  (registers `compress attention generate`)
from compress.cli.bench import bench_app
from compress.cli.evaluate import EXAMPLES as EVAL_EXAMPLES
from compress.cli.evaluate import evaluate
from compress.cli.graph import graph_app
from compress.cli.factorize import EXAMPLES as FACTORIZE_EXAMPLES
from compress.cli.factorize import factorize
from compress.cli.prune import EXAMPLES as PRUNE_EXAMPLES
from compress.cli.prune import prune
from compress.cli.report import EXAMPLES as REPORT_EXAMPLES
from compress.cli.report import report
from compress.cli.run import RunCommand, run

__all__ = ["app"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # help text is plain text: [graph] in "compress[graph]" is not markup
    help="Post-training compression for Hugging Face causal LMs: calibrate, prune, export, evaluate.\n\n"
    "A recipe (compress run recipe.yaml; compress prune ... --dry-run prints one):\n\n"
    "\b\n  calibrate: {nsamples: 128}\n  stages:\n    - prune: {method: wanda, pattern: \"2:4\"}\n"
    "    - eval: {}\n  out: ./pruned\n\n"
    "Environment: COMPRESS_CACHE (default ~/.cache/compress) holds the default model and text; "
    "COMPRESS_DEBUG=1 shows tracebacks.",
)


def _version(value: bool) -> None:
    if value:
        print(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    pass


app.command(epilog=PRUNE_EXAMPLES)(prune)
app.command("eval", epilog=EVAL_EXAMPLES)(evaluate)
app.command(epilog=FACTORIZE_EXAMPLES)(factorize)
app.command(cls=RunCommand)(run)
app.command(epilog=REPORT_EXAMPLES)(report)
app.add_typer(bench_app, name="bench")
app.add_typer(graph_app, name="graph")
app.add_typer(attention_app, name="attention")
