"""The engine follows structural change: a stage that swaps each layer's MLP for a module with new
parameters (and trains one with gradients) gives the same model whether the layers live in CPU memory,
on disk, or nowhere special."""
import json

import torch
from torch import nn
from safetensors.torch import load_file

from compress.calibrate.engine import walk_layers
from compress.model.layers import decoder_layers
from compress.model.loading import load_model
from compress.model.placement import DeviceMap
from tests.conftest import save_tiny_model
from tests.test_offload import SPLIT


class TwoExperts(nn.Module):
    """A gated MLP split into two halves of its intermediate neurons (new Linears), both always active,
    plus a new trainable scale."""

    def __init__(self, mlp):
        super().__init__()
        half = mlp.gate_proj.out_features // 2
        self.experts = nn.ModuleList()
        for part in (slice(0, half), slice(half, 2 * half)):
            expert = nn.Module()
            expert.gate_proj = nn.Linear(mlp.gate_proj.in_features, half, bias=False)
            expert.up_proj = nn.Linear(mlp.up_proj.in_features, half, bias=False)
            expert.down_proj = nn.Linear(half, mlp.down_proj.out_features, bias=False)
            expert.gate_proj.weight.data = mlp.gate_proj.weight.data[part].clone()
            expert.up_proj.weight.data = mlp.up_proj.weight.data[part].clone()
            expert.down_proj.weight.data = mlp.down_proj.weight.data[:, part].clone()
            self.experts.append(expert)
        self.scale = nn.Parameter(torch.ones(()))
        self.act = mlp.act_fn

    def forward(self, x):
        return self.scale * sum(e.down_proj(self.act(e.gate_proj(x)) * e.up_proj(x)) for e in self.experts)


def swap_and_train(index, name, layer, data):
    assert torch.is_grad_enabled()
    layer.mlp = TwoExperts(layer.mlp).to(next(layer.parameters()).device)
    x = torch.randn(4, layer.mlp.experts[0].gate_proj.in_features, generator=torch.Generator().manual_seed(index))
    target = 1.5 * layer.mlp(x).detach()
    optimiser = torch.optim.SGD([layer.mlp.scale], lr=0.5)
    for _ in range(50):
        optimiser.zero_grad()
        ((layer.mlp(x) - target).pow(2).mean() / target.pow(2).mean()).backward()
        optimiser.step()
    layer.mlp.requires_grad_(False)
    return {"scale": float(layer.mlp.scale)}


def test_swapped_mlps_with_new_parameters_follow_the_layer_home(tmp_path):
    source = save_tiny_model(tmp_path / "llama", seed=3, num_hidden_layers=3)
    whole, _, _ = load_model(str(source), "float32", "cpu")
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(SPLIT))
    placed, _, _ = load_model(str(source), "float32", "cpu",
                              device_map=DeviceMap(SPLIT, offload_folder=str(tmp_path / "off")))
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = whole(input_ids=ids).logits
    for model in (whole, placed):
        steps = walk_layers(decoder_layers(model), None, torch.device("cpu"), swap_and_train, grad=True)
        assert all(abs(step.info["scale"] - 1.5) < 1e-3 for step in steps)
    with torch.no_grad():
        expected, got = whole(input_ids=ids).logits, placed(input_ids=ids).logits
    assert torch.equal(expected, got)
    assert not torch.allclose(expected, before)  # the swap (scale 1.5) did change the model
    # offloaded layers keep their new tensors in their store: meta in the module, real in the checkpoint
    assert placed.model.layers[1].mlp.experts[0].gate_proj.weight.device.type == "meta"
    placed.save_pretrained(tmp_path / "saved", safe_serialization=True)
    saved = {}
    for file in (tmp_path / "saved").glob("*.safetensors"):
        saved.update(load_file(file))
    reference = whole.state_dict()
    for layer in range(3):
        for key in (f"model.layers.{layer}.mlp.experts.1.down_proj.weight", f"model.layers.{layer}.mlp.scale"):
            assert torch.equal(saved[key], reference[key]), key
        assert f"model.layers.{layer}.mlp.gate_proj.weight" not in saved
    assert (source / "model.safetensors").is_file()  # the input checkpoint is untouched
