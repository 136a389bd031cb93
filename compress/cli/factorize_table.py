"""The per-layer table `compress factorize` prints (from the typed report)."""
from __future__ import annotations

from compress.cli.common import out

__all__ = ["print_factorize_table"]


def print_factorize_table(model: str, stage) -> None:
    """Per layer: router agreement with held-out PAR labels, routed error vs the dense FFN, busiest expert."""
    from rich.table import Table
    from rich.text import Text

    result = stage.result
    shared = f"{result.shared} shared + " if result.shared else ""
    title = (f"{stage.name}: {shared}{result.total_experts} experts, top {result.total_top_k} "
             f"({result.ffn_flops_share:.0%} of the FFN per token), {result.split} split, {result.router} router · {model}")
    table = Table(title=Text(title))
    for column in ("layer", "seconds", "agreement", "routed error", "max load", "layer error"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in result.layers:
        info = layer.info
        cells = [info.get("held_out_agreement"), info.get("held_out_error"), max(info["load"]) if info.get("load") else None,
                 layer.token_error]
        table.add_row(Text(layer.name), f"{layer.seconds:.1f}",
                      *("—" if v is None else f"{v:.2f}" if i != 3 else f"{v:.2e}" for i, v in enumerate(cells)))
    out.print(table)
    out.print(f"FFN FLOPs {result.ffn_flops_share:.0%} of dense per token; max load: the busiest expert's share of "
              f"held-out calibration picks (fair share {1 / result.total_experts:.2f}); {result.training_tokens} calibration tokens; "
              f"factorize took {result.seconds:.1f} s")
