"""The layer-sequential engine shared by every calibrated method.

The model stays on the CPU (or wherever it was loaded); the engine runs the calibration batch up to
decoder layer 0 once, then walks the layers: move one layer to the device, run the batch through it
with collectors attached, let the method change the layer, run the batch again through the changed
layer, and hand those outputs to the next layer as its inputs (as the Wanda and SparseGPT papers do).
A model loaded with a device_map keeps its placement: each layer runs where accelerate runs it, and an
offloaded layer's weights are loaded for its step and written back to their store (compress/placement.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from compress.model.placement import OffloadedLayer, execution_device, is_dispatched

__all__ = ["LayerInputs", "LayerData", "capture_layer_inputs", "capture_calibration", "LayerStep", "walk_layers"]


class _StopForward(Exception):
    pass


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@dataclass
class LayerInputs:
    """Hidden states entering a decoder layer, batch by batch, with the keyword arguments it needs."""

    hidden: list[torch.Tensor]
    extra_args: list[tuple]
    kwargs: list[dict]

    def batches(self) -> Iterator[tuple[int, torch.Tensor, tuple, dict]]:
        for i, h in enumerate(self.hidden):
            yield i, h, self.extra_args[i], self.kwargs[i]


def _modules_outside(model: nn.Module, layers: list[nn.Module]) -> list[nn.Module]:
    """Leaf-most modules holding parameters or buffers that are not inside a decoder layer."""
    inside = {id(m) for layer in layers for m in layer.modules()}
    outside = []
    for module in model.modules():
        if id(module) in inside:
            continue
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if own:
            outside.append(module)
    return outside


@torch.no_grad()
def capture_layer_inputs(model, layers: list[nn.Module], token_batches: list[torch.Tensor],
                         device: torch.device, store: torch.device | None = None) -> LayerInputs:
    """Run each token batch through the model until decoder layer 0 and keep what it receives."""
    store = store or device
    captured = LayerInputs([], [], [])

    def grab(_module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = kwargs.pop("hidden_states", None)
        if hidden is None:
            hidden, args = args[0], args[1:]
        captured.hidden.append(hidden.to(store))
        captured.extra_args.append(_to(tuple(args), store))
        captured.kwargs.append(_to(kwargs, store))
        raise _StopForward

    outside = [] if is_dispatched(model) else _modules_outside(model, layers)  # hooks place a dispatched model
    homes = [next(iter(list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))).device
             for m in outside]
    for module in outside:
        module.to(device)
    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for ids in token_batches:
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
        for module, home in zip(outside, homes):
            module.to(home)
    return captured


def capture_calibration(model, layers: list[tuple[str, nn.Module]], calibration: torch.Tensor, calib_batch: int,
                        device: torch.device) -> LayerInputs:
    """capture_layer_inputs over the calibration windows, `calib_batch` per forward (0: about 16k tokens)."""
    per_batch = calib_batch or max(1, 16384 // calibration.shape[1])
    return capture_layer_inputs(model, [layer for _, layer in layers], list(calibration.split(per_batch, 0)), device)


def _hidden_of(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass
class LayerStep:
    """What happened to one decoder layer."""

    index: int
    name: str
    seconds: float = 0.0
    relative_error: float | None = None  # ‖f'(X) − f(X)‖² / ‖f(X)‖² over the calibration batch
    token_error: float | None = None  # the same per token, averaged (massive-activation tokens weigh no more)
    info: dict = field(default_factory=dict)


def walk_layers(
    layers: list[tuple[str, nn.Module]],
    inputs: LayerInputs | None,
    device: torch.device,
    change_layer: Callable[[int, str, nn.Module, "LayerData"], dict],
    on_done: Callable[[LayerStep], None] | None = None,
    error_tokens: int = 16384,
    grad: bool = False,
    first: int = 0,
) -> list[LayerStep]:
    """Walk the layers one at a time on `device`.

    `change_layer(index, name, layer, data)` alters the layer in place and returns info for the report; it
    calls `data()` (with its collectors attached) when it needs data, and may compare candidate changes
    with `data.output_error()` (a LayerData). With `inputs=None` there is no data pass at all. The layer
    goes back where it was afterwards. A layer placed by accelerate runs on its own execution device
    instead of `device`.
    A change may replace modules or add parameters inside the layer: they go home with it (offloaded or
    not). Data passes run without gradients; `change_layer` runs with them when `grad` is set (e.g. to fit
    a router on the layer's calibration data).
    The relative output error is measured on the first batches, up to `error_tokens` tokens, so only
    those batches' dense outputs are held.
    `first` skips the layers before it (already done: a resumed run, whose `inputs` enter layer `first`).
    """
    steps = []
    error_batches = _error_batches(inputs, error_tokens)
    main_device = device
    for index, (name, layer) in enumerate(layers):
        if index < first:
            continue
        device = execution_device(layer, main_device)
        clock = _PhaseClock(device)
        offloaded = OffloadedLayer.find(layer)
        if offloaded:
            offloaded.load(device)
        home, home_device = _move_to(layer, device)
        clock.lap("load")
        data = LayerData(layer, inputs, device, error_batches, clock) if inputs is not None else _no_data
        with torch.set_grad_enabled(grad):
            info = change_layer(index, name, layer, data)
        clock.lap("change")
        step = LayerStep(index, name, info=info)
        if inputs is not None:
            if not data.dense_out:
                data()
            step.relative_error, step.token_error = data.errors(propagate=True)
            data.dense_out.clear()
            clock.lap("propagate")
        _move_back(layer, home, home_device)
        if offloaded:
            offloaded.store(layer, name, device)
        clock.lap("unload")
        step.seconds = clock.total
        step.info["phase_seconds"] = clock.phases
        steps.append(step)
        if on_done:
            on_done(step)
    return steps


@torch.no_grad()
def replay_layers(layers: list[tuple[str, nn.Module]], inputs: LayerInputs, device: torch.device, upto: int) -> None:
    """Run every calibration batch through layers[:upto] as they are (finished, e.g. restored from a
    checkpoint), each on the device walk_layers gives it, so that `inputs` enter layer `upto`: the same
    forward as the pass's propagation (LayerData.errors), hence the same hidden states. Layers offloaded by a
    device map are not replayed (they cannot be checkpointed)."""
    for _, layer in layers[:upto]:
        layer_device = execution_device(layer, device)
        home, home_device = _move_to(layer, layer_device)
        LayerData(layer, inputs, layer_device, 0, None).propagate()
        _move_back(layer, home, home_device)


class LayerData:
    """The calibration data of one layer's step. Calling it runs every batch through the layer (with the
    caller's collectors attached) and keeps the first batches' outputs as the dense reference;
    `output_error()` then measures the changed layer against that reference."""

    def __init__(self, layer: nn.Module, inputs: LayerInputs, device: torch.device, error_batches: int, clock):
        self.layer, self.inputs, self.device = layer, inputs, device
        self.error_batches, self.clock = error_batches, clock
        self.dense_out: list[torch.Tensor] = []

    def _forward(self, hidden, args, kwargs) -> torch.Tensor:
        device = self.device
        return _hidden_of(self.layer(hidden.to(device), *_to(args, device), **_to(kwargs, device)))

    @torch.no_grad()
    def __call__(self) -> None:
        self.dense_out.clear()
        for i, hidden, args, kwargs in self.inputs.batches():
            out = self._forward(hidden, args, kwargs)
            if i < self.error_batches:
                self.dense_out.append(out)
        self.clock.lap("calibrate")

    @torch.no_grad()
    def errors(self, propagate: bool = False) -> tuple[float, float]:
        """(‖f'(X) − f(X)‖² / ‖f(X)‖², the mean over tokens of ‖f'(x) − f(x)‖² / ‖f(x)‖²) on the reference
        batches. The first is dominated by the few tokens with massive hidden states (the first token of a
        window holds up to 98% of ‖f(X)‖² in a mid layer of SmolLM2); the second weighs every token alike.
        With `propagate`, every batch's output replaces its input (the next layer's data)."""
        if not self.dense_out:
            raise RuntimeError("errors() needs the dense outputs: call the data first")
        err_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        ref_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        token_sum, tokens = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for i, hidden, args, kwargs in self.inputs.batches():
            if i >= self.error_batches and not propagate:
                break
            out = self._forward(hidden, args, kwargs)
            if i < self.error_batches:
                diff, ref = (out.float() - self.dense_out[i].float()).pow(2), self.dense_out[i].float().pow(2)
                err_sq += diff.sum()
                ref_sq += ref.sum()
                token_sum += (diff.sum(-1) / ref.sum(-1).clamp_min(1e-30)).sum()
                tokens += diff[..., 0].numel()
            if propagate:
                self.inputs.hidden[i] = out.to(hidden.device)
        return (err_sq / ref_sq.clamp_min(1e-30)).item(), (token_sum / max(tokens, 1)).item()

    @torch.no_grad()
    def propagate(self) -> None:
        """Replace every batch's input by the layer's output (the next layer's data), as errors(propagate=True)
        does, without measuring anything."""
        for i, hidden, args, kwargs in self.inputs.batches():
            self.inputs.hidden[i] = self._forward(hidden, args, kwargs).to(hidden.device)

    def output_error(self) -> float:
        """The changed layer's per-token error against the dense reference (see errors())."""
        return self.errors()[1]


def _error_batches(inputs: LayerInputs | None, error_tokens: int) -> int:
    if inputs is None:
        return 0
    count, tokens = 0, 0
    for hidden in inputs.hidden:
        if count and tokens >= error_tokens:
            break
        count, tokens = count + 1, tokens + hidden.shape[0] * hidden.shape[1]
    return count


def _tensors(layer: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(layer.named_parameters()) + list(layer.named_buffers())


def _move_to(layer: nn.Module, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.device | None]:
    """Move a layer's tensors to `device`, returning the originals (to reuse on the way back) and their device."""
    home = {}
    for name, tensor in _tensors(layer):
        home[name] = tensor.data
        tensor.data = tensor.data.to(device, non_blocking=True)
    real = [t.device for t in home.values() if t.device.type != "meta"]
    return home, (real[0] if real else None)


def _move_back(layer: nn.Module, home: dict[str, torch.Tensor], home_device: torch.device | None) -> None:
    """Copy the (changed) tensors into their original storage: no fresh host allocations to fault in.
    Tensors the change added or reshaped move to the layer's home device."""
    for name, tensor in _tensors(layer):
        original = home.get(name)
        if original is not None and original.shape == tensor.shape and original.dtype == tensor.dtype:
            if original.device != tensor.device:
                original.copy_(tensor.data)
                tensor.data = original
        elif home_device is not None and tensor.device != home_device:
            tensor.data = tensor.data.to(home_device)


class _PhaseClock:
    """Wall time per phase of one layer's step (synchronising the GPU at each lap)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.phases: dict[str, float] = {}
        self.last = self.first = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self.last, 4)
        self.last = now

    @property
    def total(self) -> float:
        return self.last - self.first


def _no_data() -> None:
    raise RuntimeError("this method declared no calibration data, so none was captured")
