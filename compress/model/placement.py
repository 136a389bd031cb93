"""Models spread over several devices by accelerate: device maps for loading, and offloaded layers for the engine.

A model loaded with a `device_map` carries accelerate hooks. A layer that lives on a device runs there.
An offloaded layer (its weights in CPU memory or on disk, "meta" in the module) runs on its hook's
execution device, and the hooks load the weights for every forward. The engine must change those
weights, so it loads them once, pauses the hooks, and writes the changed weights back to their store
at the end of the layer's step.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from compress.errors import BadInput

__all__ = ["DeviceMap", "parse_device_map", "parse_max_memory", "is_dispatched", "has_offloaded", "main_device",
           "execution_device", "OffloadedLayer"]

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class DeviceMap:
    """How to spread a model at load time: an accelerate strategy name or an explicit {module: device}."""

    map: str | dict
    max_memory: dict | None = None  # {0: "70GiB", "cpu": "200GiB"}
    offload_folder: str | None = None  # for "disk" entries; default: a temporary folder removed at exit

    def load_kwargs(self) -> dict:
        folder = self.offload_folder or _temporary_folder()
        kwargs = {"device_map": self.map, "offload_folder": folder}
        if self.max_memory:
            kwargs["max_memory"] = self.max_memory
        return kwargs

    def compute_device(self) -> str | None:
        """'cpu' when an explicit map puts nothing on an accelerator (so --dtype auto means float32)."""
        if isinstance(self.map, dict) and all(str(d) in ("cpu", "disk") for d in self.map.values()):
            return "cpu"
        return None


def _temporary_folder() -> str:
    folder = tempfile.mkdtemp(prefix="compress-offload-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _check_device(value, where: str):
    import torch

    if isinstance(value, int) and value >= 0 or value in ("cpu", "disk"):
        return value
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        raise BadInput(f"{where}: unknown device {value!r} (use a GPU index, 'cuda:N', 'cpu' or 'disk')") from None
    return value


def parse_device_map(value: str | None, max_memory: str | None = None,
                     offload_folder: str | None = None) -> DeviceMap | None:
    """--device-map auto|balanced|balanced_low_0|sequential|FILE.json, with --max-memory and --offload-folder."""
    if value is None:
        if max_memory or offload_folder:
            raise BadInput("--max-memory and --offload-folder go with --device-map")
        return None
    if value in STRATEGIES:
        chosen: str | dict = value
    else:
        path = Path(value)
        if not path.is_file():
            raise BadInput(f"--device-map {value!r}: choose {', '.join(STRATEGIES)} or a JSON file of module: device")
        try:
            chosen = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BadInput(f"--device-map {value}: not readable JSON ({exc})") from exc
        if not isinstance(chosen, dict) or not chosen:
            raise BadInput(f"--device-map {value}: expected a JSON object of module name: device")
        for module, device in chosen.items():
            _check_device(device, f"--device-map {value} ({module})")
    if offload_folder is not None and Path(offload_folder).exists() and not Path(offload_folder).is_dir():
        raise BadInput(f"--offload-folder {offload_folder} exists and is not a directory")
    return DeviceMap(chosen, parse_max_memory(max_memory), offload_folder)


def parse_max_memory(value: str | None) -> dict | None:
    """'0=70GiB,1=70GiB,cpu=200GiB' -> {0: '70GiB', 1: '70GiB', 'cpu': '200GiB'} (accelerate's max_memory)."""
    if not value:
        return None
    from accelerate.utils import convert_file_size_to_int

    limits: dict = {}
    for item in value.split(","):
        key, sep, size = item.strip().partition("=")
        if not sep or not key or not size:
            raise BadInput(f"--max-memory {value!r}: expected DEVICE=SIZE pairs such as 0=70GiB,cpu=200GiB")
        key = key.strip().removeprefix("cuda:")
        key = int(key) if key.isdigit() else key
        if not isinstance(key, int) and key not in ("cpu", "disk", "mps"):
            raise BadInput(f"--max-memory: unknown device {key!r} (a GPU index, cuda:N, cpu or disk)")
        try:
            convert_file_size_to_int(size)
        except ValueError:
            raise BadInput(f"--max-memory: bad size {size!r} for {key} (e.g. 70GiB, 500MB)") from None
        limits[key] = size
    return limits


def _hooks(module) -> list:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])  # a SequentialHook holds several


def is_dispatched(model) -> bool:
    """True when accelerate hooks place the model's modules (loaded with a device_map, or offloaded)."""
    return any(hasattr(m, "_hf_hook") for m in model.modules())


def has_offloaded(model) -> bool:
    """True when some weights live in an offload store (CPU memory or disk) and are "meta" in the module."""
    return any(getattr(hook, "offload", False) for m in model.modules() for hook in _hooks(m))


def _as_device(device):
    import torch

    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def execution_device(module, default):
    """Where accelerate runs `module` (the first hook inside it that says), else `default`."""
    for sub in module.modules():
        for hook in _hooks(sub):
            if getattr(hook, "execution_device", None) is not None:
                return _as_device(hook.execution_device)
    return default


def main_device(model, default):
    """The device a dispatched model takes its inputs on (its root hook's), else `default`."""
    for hook in _hooks(model):
        if getattr(hook, "execution_device", None) is not None:
            return _as_device(hook.execution_device)
    return execution_device(model, default)


class OffloadedLayer:
    """The offloaded modules of one layer: loaded on the execution device for a step, written back after."""

    def __init__(self, parts: list):
        self.parts = parts  # (module, hook, tensor names)

    @classmethod
    def find(cls, layer) -> "OffloadedLayer | None":
        from accelerate.utils import named_module_tensors

        parts = []
        for module in layer.modules():
            for hook in _hooks(module):
                if getattr(hook, "offload", False) and hook.weights_map is not None:
                    names = [n for n, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                                                recurse=hook.place_submodules, remove_non_persistent=True)]
                    parts.append((module, hook, names))
        return cls(parts) if parts else None

    def load(self, device) -> None:
        """Put the stored weights into the modules on `device` and pause the hooks' load/offload."""
        from accelerate.utils import set_module_tensor_to_device

        for module, hook, names in self.parts:
            for name in names:
                set_module_tensor_to_device(module, name, device, value=hook.weights_map[name])
            hook.offload = False

    def store(self, layer=None, layer_name: str | None = None, device=None) -> None:
        """Write the (changed) weights back to their store, free them ("meta") and resume the hooks.

        With `layer` and its `layer_name`, a change that replaced modules is followed: modules no longer in
        the layer leave the store's index (files are never deleted), and new modules holding tensors get
        offload hooks like their siblings', their tensors written beside the others'."""
        from accelerate.utils import set_module_tensor_to_device

        inside = {id(m) for m in layer.modules()} if layer is not None else None
        _, first_hook, first_names = self.parts[0]
        in_memory = bool(first_names) and _in_memory(first_hook.weights_map, first_names[0])
        kept = []
        for module, hook, names in self.parts:
            if inside is not None and id(module) not in inside:
                for name in names:
                    _forget(hook.weights_map, name)
                continue
            kept.append((module, hook, names))
            for name in _current_names(module, hook):
                _write(hook.weights_map, name, _tensor(module, name))
                set_module_tensor_to_device(module, name, "meta")
            hook.offload = True
        if layer is not None:
            self.parts = kept
            self._adopt_new_modules(layer, layer_name, device, first_hook, in_memory)

    def _adopt_new_modules(self, layer, layer_name: str, device, sample_hook, in_memory: bool) -> None:
        from accelerate.hooks import AlignDevicesHook, add_hook_to_module
        from accelerate.utils import PrefixedDataset, set_module_tensor_to_device

        hooked = {id(module) for module, _, _ in self.parts}
        base = sample_hook.weights_map.dataset if isinstance(sample_hook.weights_map, PrefixedDataset) \
            else sample_hook.weights_map
        # submodules whose tensors an existing hook already places (place_submodules)
        covered = {id(sub) for m, h, _ in self.parts if h.place_submodules for sub in m.modules()}
        for name, module in layer.named_modules():
            own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            if id(module) in hooked or not own or id(module) in covered:
                continue
            prefix = f"{layer_name}.{name}." if name else f"{layer_name}."
            weights = PrefixedDataset(base, prefix)
            hook = AlignDevicesHook(execution_device=sample_hook.execution_device or device, offload=True,
                                    weights_map=weights, offload_buffers=sample_hook.offload_buffers)
            for tensor_name, tensor in own:
                _write(weights, tensor_name, tensor.data, to_memory=in_memory)
                set_module_tensor_to_device(module, tensor_name, "meta")
            add_hook_to_module(module, hook, append=True)
            self.parts.append((module, hook, [n for n, _ in own]))


def _current_names(module, hook) -> list[str]:
    from accelerate.utils import named_module_tensors

    return [n for n, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                               recurse=hook.place_submodules, remove_non_persistent=True)]


def _in_memory(weights_map, name: str) -> bool:
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset

    store, key = weights_map, name
    if isinstance(store, PrefixedDataset):
        store, key = store.dataset, store.prefix + name
    memory = store.state_dict if isinstance(store, OffloadedWeightsLoader) else store
    return key in memory


def _forget(weights_map, name: str) -> None:
    """Drop an entry from the store's index (host memory or disk index); files stay where they are."""
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset

    store, key = weights_map, name
    if isinstance(store, PrefixedDataset):
        store, key = store.dataset, store.prefix + name
    if isinstance(store, OffloadedWeightsLoader):
        store.state_dict.pop(key, None)
        store.index.pop(key, None)
        if key in getattr(store, "all_keys", []):
            store.all_keys.remove(key)
    elif isinstance(store, dict):
        store.pop(key, None)


def _tensor(module, name: str):
    owner, _, leaf = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf).data


def _write(weights_map, name: str, tensor, to_memory: bool = False) -> None:
    """Write into the store behind a hook: host memory in place, disk as a new file in the offload folder.

    Disk entries may point into the input checkpoint's safetensors; those are never written. The new
    file is indexed instead, so the hooks and `save_pretrained` read the changed weights.
    """
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset

    store, key = weights_map, name
    if isinstance(store, PrefixedDataset):
        store, key = store.dataset, store.prefix + name
    memory = store.state_dict if isinstance(store, OffloadedWeightsLoader) else store
    if key in memory:
        if memory[key].data_ptr() != tensor.data_ptr():
            memory[key].copy_(tensor)
        return
    if isinstance(store, OffloadedWeightsLoader) and key not in store.all_keys:
        store.all_keys.append(key)  # a tensor a change added
    # disk entries without a folder to write to, or new tensors of a layer held in memory: keep in memory
    if to_memory or getattr(store, "save_folder", None) is None:
        memory[key] = tensor.to("cpu", copy=True)
        return
    from safetensors.torch import save_file

    path = os.path.join(store.save_folder, f"{key}.safetensors")
    save_file({key: tensor.detach().to("cpu").contiguous()}, path)
    store.index[key] = {"safetensors_file": path, "weight_name": key, "dtype": str(tensor.dtype).removeprefix("torch.")}
