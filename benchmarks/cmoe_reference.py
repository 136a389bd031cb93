"""CMoE's reference code (arXiv 2502.04416, JarvisPei/CMoE) on the default model: the anchor of issue 23.

The reference is not part of this repository: pass a checkout with --cmoe-src DIR (or CMOE_SRC=DIR). Its
modules are loaded from that folder by file path and its own conversion driver, `cmoe_sequential` of
run_cmoe.py, carves every FFN (construct_moe: activation rates, shared neurons, balanced k-means of the
rest, analytic router), training-free. The departures needed to run it here, each made in this file:
  1. CPU: `.cuda()` on modules is a no-op, and 'cuda' as a device in `Tensor.to` / `torch.zeros` means the
     CPU, only while the reference runs (cuda_as_cpu); its DEV is the CPU.
  2. Data: its loader (WikiText-2 / C4 downloads) is replaced by the project's calibration windows, given
     as one batch of 8 (cmoe_sequential carves on its first batch of 8 windows: ours are those 8).
  3. Evaluation: its own perplexity pass (`cmoe_ppl_eval`, on WikiText-2 and C4) is skipped; the project's
     evaluator (compress.evaluate.perplexity, BOS windows) measures the converted model instead.
  4. No fine-tune: sft_utils (a LoRA fine-tune of the whole model plus the router's scale and bias, with
     peft) is replaced by a module whose simple_sft returns the model unchanged: the rows are training-free.
  5. RoPE: construct_moe calls attention with `position_ids` only; transformers 4.47 (the reference's pin)
     computed RoPE from them, transformers 5 needs `position_embeddings`. While carving, a call without
     them gets them from the model's own rotary embedding (rope_from_position_ids), as 4.47 did.
  6. dtype: float32, as the project evaluates the default model (the reference loads bfloat16).
  7. `lap` (its assignment solver) is used when importable; otherwise scipy's linear_sum_assignment
     stands in (an exact solver too; ties may be broken differently). matplotlib is imported by the
     reference for plots it does not draw here; a stub stands in when it is not installed.
Activation (share of FFN neurons a token runs) = (shared + activated) / experts, experts of equal size.
`ours(model, calibration, active)`: the project's conversion (compress.factorize, FactorizeConfig(active=...)) on the
same calibration windows and held-out tokens, the rows of method ours.
Usage: CMOE_SRC=/path/to/CMoE python -m benchmarks.cmoe_reference --seeds 0 1 2
       python -m benchmarks.cmoe_reference --methods ours --seeds 0 1 2 --append   # ours beside a stored run
       python -m benchmarks.cmoe_reference --cmoe-src DIR --tiny --out /tmp/tiny.json   # quick check
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks._meta import meta

OUT = "benchmarks/results/factorize-cmoe-reference.json"
CONFIGS = {0.25: (2, 2, 16), 0.5: (4, 4, 16), 0.75: (6, 6, 16)}  # active: (shared, activated, experts)
CARVE_BATCH = 8  # cmoe_sequential's bsz: it carves on the first batch of this many windows
METHODS = ("cmoe-reference", "ours")  # rows per activation: CMoE's code, then the project's
REFERENCE_FILES = ("CMoE_model.py", "CMoE_utils.py", "zero_eval.py", "run_cmoe.py")


def lapjv_by_scipy(cost):
    """lap.lapjv's answer (total cost, column of each row, row of each column) from scipy's exact solver."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    inverse = np.empty_like(cols)
    inverse[cols] = rows
    return float(cost[rows, cols].sum()), cols, inverse


def _stand_ins() -> dict[str, types.ModuleType]:
    """Modules the reference imports by name that are missing here or must not run (departures 4 and 7)."""
    sft = types.ModuleType("sft_utils")
    sft.simple_sft = lambda model, args, epoch=1: model  # training-free: no LoRA fine-tune
    modules = {"sft_utils": sft}
    if importlib.util.find_spec("lap") is None:
        modules["lap"] = types.ModuleType("lap")
        modules["lap"].lapjv = lapjv_by_scipy
    if importlib.util.find_spec("matplotlib") is None:
        pyplot = types.ModuleType("matplotlib.pyplot")
        modules["matplotlib"] = types.ModuleType("matplotlib")
        modules["matplotlib"].pyplot = pyplot
        modules["matplotlib.pyplot"] = pyplot
    return modules


def load_reference(src: str | Path) -> types.SimpleNamespace:
    """CMoE's modules from a checkout, by file path; sys.modules is left as it was found."""
    src = Path(src)
    missing = [name for name in REFERENCE_FILES if not (src / name).is_file()]
    if missing:
        raise SystemExit(f"--cmoe-src {src}: not a CMoE checkout (missing {', '.join(missing)})")
    stand_ins = _stand_ins()
    added = []
    try:
        for name, module in stand_ins.items():
            if name not in sys.modules:
                sys.modules[name] = module
                added.append(name)
        loaded = {}
        for file in REFERENCE_FILES:  # in dependency order; `from CMoE_model import *` finds it by name
            name = file[:-3]
            spec = importlib.util.spec_from_file_location(name, src / file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            added.append(name)
            spec.loader.exec_module(module)
            loaded[name] = module
    finally:
        for name in added:
            sys.modules.pop(name, None)
    run = loaded["run_cmoe"]
    run.DEV = torch.device("cpu")  # departure 1
    run.get_loaders = lambda *args, **kwargs: (None, None)  # departure 2: its datasets are not used
    run.cmoe_ppl_eval = lambda *args, **kwargs: float("nan")  # departure 3: the project's evaluator instead
    return types.SimpleNamespace(run=run, model=loaded["CMoE_model"], utils=loaded["CMoE_utils"],
                                 solver=_solver(stand_ins),
                                 commit=_commit(src))


def _solver(stand_ins: dict) -> str:
    if "lap" in stand_ins:
        return "scipy.optimize.linear_sum_assignment (lap is not installed)"
    from importlib.metadata import version

    return f"lap {version('lap')}"


def _commit(src: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _on_cpu(device):
    if isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda":
        return torch.device("cpu")
    return device


@contextmanager
def cuda_as_cpu():
    """Departure 1: the reference's CUDA placements land on the CPU, only inside this block."""
    tensor_to, zeros, module_cuda = torch.Tensor.to, torch.zeros, torch.nn.Module.cuda

    def to(self, *args, **kwargs):
        if args:
            args = (_on_cpu(args[0]), *args[1:])
        if "device" in kwargs:
            kwargs["device"] = _on_cpu(kwargs["device"])
        return tensor_to(self, *args, **kwargs)

    def zeros_on_cpu(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _on_cpu(kwargs["device"])
        return zeros(*args, **kwargs)

    torch.Tensor.to, torch.zeros, torch.nn.Module.cuda = to, zeros_on_cpu, lambda self, device=None: self
    try:
        yield
    finally:
        torch.Tensor.to, torch.zeros, torch.nn.Module.cuda = tensor_to, zeros, module_cuda


@contextmanager
def rope_from_position_ids(model):
    """Departure 5: an attention call with position_ids but no position_embeddings gets them from the model."""
    rotary = model.model.rotary_emb
    attentions = [layer.self_attn for layer in model.model.layers]

    def with_rope(attention):
        forward = attention.forward

        def call(hidden_states, *args, position_embeddings=None, **kwargs):
            if position_embeddings is None and not args and kwargs.get("position_ids") is not None:
                position_embeddings = rotary(hidden_states, position_ids=kwargs["position_ids"])
            return forward(hidden_states, *args, position_embeddings=position_embeddings, **kwargs)
        return call

    for attention in attentions:
        attention.forward = with_rope(attention)
    try:
        yield
    finally:
        for attention in attentions:
            del attention.forward


def cmoe_convert(ref, model, calibration: torch.Tensor, shared: int, activated: int, experts: int,
                 seed: int = 0, k_act: int = 10, bias_speed: float = 0.001):
    """Carve `model` in place with the reference's cmoe_sequential on `calibration` (CARVE_BATCH windows)."""
    if calibration.shape[0] != CARVE_BATCH:
        raise ValueError(f"the reference carves on one batch of {CARVE_BATCH} windows, got {calibration.shape[0]}")
    args = argparse.Namespace(nsamples=CARVE_BATCH, nexperts=experts, nactivated=activated, nshared=shared,
                              k_act=k_act, bias_speed=bias_speed, seed=seed, model="default", epoch=1,
                              dataset="project calibration")  # its command-line defaults, S/A/E set
    model.seqlen = calibration.shape[1]
    with cuda_as_cpu(), rope_from_position_ids(model):
        carved, *_ = ref.run.cmoe_sequential(model, [(calibration, calibration)], ref.run.DEV, args)
    return carved


def active_share(model) -> dict:
    """Neurons a token runs over the dense FFN's, and FFN multiply-adds with the router's, from the modules."""
    mlp = model.model.layers[0].mlp
    hidden, intermediate = model.config.hidden_size, model.config.intermediate_size
    routed = [e.gate_proj.out_features for e in mlp.experts]
    neurons = mlp.shared_experts.gate_proj.out_features + mlp.n_activated_experts * max(routed)
    router = 2 * hidden * mlp.n_routed_experts  # its gate and classifier
    return {"active_share": neurons / intermediate,
            "ffn_flops_share": (3 * hidden * neurons + router) / (3 * hidden * intermediate),
            "neurons_total": mlp.shared_experts.gate_proj.out_features + sum(routed)}


@contextmanager
def expert_loads(model):
    """Per layer, tokens per routed expert over the run: `loads` fills as the model runs."""
    loads, handles = [], []

    def counter(counts):
        def hook(module, inputs, output) -> None:  # returns None: the router's output stays as it is
            counts.add_(torch.bincount(output[1].flatten(), minlength=counts.numel()))
        return hook

    for layer in model.model.layers:
        loads.append(torch.zeros(layer.mlp.n_routed_experts, dtype=torch.long))
        handles.append(layer.mlp.gate.register_forward_hook(counter(loads[-1])))
    try:
        yield loads
    finally:
        for handle in handles:
            handle.remove()


def ours(model, calibration: torch.Tensor, active: float, settings: dict):
    """The project's conversion at `active` on the same tokens (in place), or None without such a knob."""
    from compress.factorize import FactorizeConfig, factorize_model

    if "active" not in FactorizeConfig.model_fields:
        return None
    config = FactorizeConfig(active=active, **settings)
    factorize_model(model, config, calibration)
    return config


def main() -> None:
    from benchmarks._tiny import model_and_text
    from compress.evaluate import perplexity

    parser = argparse.ArgumentParser()
    parser.add_argument("--cmoe-src", default=os.environ.get("CMOE_SRC"), help="a CMoE checkout (or CMOE_SRC)")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--append", action="store_true",
                        help="add rows to --out, measured on the same model and tokens (checked)")
    parser.add_argument("--active", type=float, nargs="+", default=sorted(CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="calibration draws")
    parser.add_argument("--seqlen", type=int, default=2048, help="tokens per window (the reference's 2048)")
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--ours-set", nargs="*", default=[], help="KEY=VALUE FactorizeConfig settings for ours")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if "cmoe-reference" in args.methods and not args.cmoe_src:
        raise SystemExit("give a CMoE checkout: --cmoe-src DIR or CMOE_SRC=DIR")
    torch.set_num_threads(1)
    run_meta = meta()
    ref = load_reference(args.cmoe_src) if "cmoe-reference" in args.methods else None
    args.nsamples = CARVE_BATCH
    assets = model_and_text(args)
    model, tokenizer, eval_ids, context, bos = (assets[k] for k in ("model", "tokenizer", "eval_ids", "context", "bos"))
    seqlen = assets["seqlen"]
    started = time.perf_counter()
    dense = perplexity(model, eval_ids, context, bos_id=bos).to_dict()
    result = {"meta": run_meta, "runs": [{"meta": run_meta, "methods": args.methods}], "model": assets["source"],
              "model_note": None if args.tiny else "SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF",
              "dtype": "float32", "threads": torch.get_num_threads(),
              "reference": {"repo": "JarvisPei/CMoE", "commit": ref.commit if ref else None, "paper": "arXiv 2502.04416",
                            "driver": "run_cmoe.cmoe_sequential", "assignment_solver": ref.solver if ref else None,
                            "k_act": 10, "bias_speed": 0.001, "fine_tune": "none (training-free rows)",
                            "departures": departures()},
              "calibration": {"text": "Austen novels, Persuasion held out" if not args.tiny else "tests' text",
                              "windows": CARVE_BATCH, "seqlen": seqlen, "tokens": CARVE_BATCH * seqlen,
                              "bos": bos is not None, "seeds": args.seeds},
              "eval_tokens": dense["tokens"], "context": context, "dense_ppl": dense["perplexity"],
              "dense_eval_seconds": round(time.perf_counter() - started, 1), "rows": []}
    print(json.dumps({"dense_ppl": dense["perplexity"], "eval_tokens": dense["tokens"]}), flush=True)
    if args.append:
        result = _appended_to(json.loads(Path(args.out).read_text()), result)
    settings = {key: _value(value) for key, value in (item.split("=", 1) for item in args.ours_set)}
    for seed in args.seeds:
        calibration = assets["calibration"] if seed == 0 else _draw(tokenizer, args.tiny, seqlen, seed)
        for active in args.active:
            for method in args.methods:
                work = copy.deepcopy(model)
                clock = time.perf_counter()
                if method == "cmoe-reference":
                    shared, activated, experts = CONFIGS[active]
                    work = cmoe_convert(ref, work, calibration, shared, activated, experts, seed)
                    row = {"shared": shared, "activated": activated, "experts": experts, **active_share(work)}
                else:
                    config = ours(work, calibration, active, settings)
                    if config is None:
                        print(json.dumps({"ours": "compress.factorize has no `active` option: no row"}), flush=True)
                        continue
                    row = {"shared": config.shared, "activated": config.top_k, "experts": config.shared + config.experts,
                           "active_share": config.active_share, "settings": settings}
                row = {"method": method, "active": active, "seed": seed, **row,
                       "config": "S{shared}A{activated}E{experts}".format(**row),
                       "convert_seconds": round(time.perf_counter() - clock, 1),
                       **_measure(work, method, eval_ids, context, bos, result["dense_ppl"], perplexity)}
                print(json.dumps({k: v for k, v in row.items() if k != "max_load_over_fair"}), flush=True)
                result["rows"].append(row)
                _write(args.out, result)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _measure(work, method: str, eval_ids, context, bos, dense_ppl: float, perplexity) -> dict:
    """Held-out perplexity of a converted model, and per layer its busiest expert's tokens over the fair share."""
    from compress.factorize.loads import count_picks

    load_before = os.getloadavg()[0]
    clock = time.perf_counter()
    with (expert_loads(work) if method == "cmoe-reference" else count_picks(work)) as loads:
        ppl = perplexity(work, eval_ids, context, bos_id=bos).to_dict()["perplexity"]
    counts = loads if method == "cmoe-reference" else list(loads.values())
    return {"ppl": ppl, "ppl_ratio": ppl / dense_ppl, "eval_seconds": round(time.perf_counter() - clock, 1),
            "max_load_over_fair": [round(c.max().item() * c.numel() / max(c.sum().item(), 1), 3) for c in counts],
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def _appended_to(stored: dict, new: dict) -> dict:
    """`stored` with this run's meta added, once the model, tokens and dense perplexity are checked equal."""
    same = ("model", "dtype", "calibration", "eval_tokens", "context", "dense_ppl")
    differ = [key for key in same if stored.get(key) != new[key]]
    if differ:
        raise SystemExit(f"--append: {', '.join(differ)} differ from the stored run's; not appending")
    stored["runs"] = stored.get("runs", [{"meta": stored["meta"], "methods": ["cmoe-reference"]}]) + new["runs"]
    return stored


def departures() -> list[str]:
    """The numbered departures of this module's docstring, one line each."""
    items = re.findall(r"^  \d\. (.*?)(?=\n  \d\. |\nActivation)", __doc__, re.S | re.M)
    return [" ".join(item.split()) for item in items]


def _draw(tokenizer, tiny: bool, seqlen: int, seed: int) -> torch.Tensor:
    """CARVE_BATCH calibration windows of draw `seed` (draw 0 is model_and_text's)."""
    import tempfile

    from compress.calibrate.data import TextSource, calibration_tokens

    if not tiny:
        return calibration_tokens(tokenizer, TextSource(), CARVE_BATCH, seqlen, seed)
    from tests.conftest import TEXT

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "text.txt").write_text(TEXT)
        return calibration_tokens(tokenizer, TextSource(path=str(Path(tmp) / "text.txt")), CARVE_BATCH, seqlen, seed)


def _write(path: str, result: dict) -> None:
    """After every row, through a temporary file: a long run keeps what it measured."""
    by_active = {}
    for row in result["rows"]:
        by_active.setdefault(f"{row['method']} {row['active']}", []).append(row["ppl"])
    result["summary"] = {key: {"draws": len(v), "ppl_mean": sum(v) / len(v), "ppl_min": min(v), "ppl_max": max(v),
                               "ratio_mean": sum(v) / len(v) / result["dense_ppl"]} for key, v in by_active.items()}
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
