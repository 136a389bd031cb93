"""benchmarks/cmoe_reference.py: the stand-ins it runs CMoE's reference code with, and that code on a tiny Llama.

The tests marked `needs_checkout` run only with CMOE_SRC set to a checkout of JarvisPei/CMoE.
"""
from __future__ import annotations

import copy
import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import cmoe_reference as cr
from tests.conftest import tiny_llama_config

CMOE_SRC = os.environ.get("CMOE_SRC")
needs_checkout = pytest.mark.skipif(not CMOE_SRC or not Path(CMOE_SRC, "CMoE_utils.py").is_file(),
                                    reason="CMOE_SRC is not a CMoE checkout")


def tiny_model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


def calibration():
    return torch.randint(3, 320, (cr.CARVE_BATCH, 32), generator=torch.Generator().manual_seed(0))


def test_scipy_stand_in_for_lapjv_is_an_optimal_assignment():
    cost = np.random.default_rng(0).integers(0, 4, (6, 6)).astype(float)  # ties, as repeated centroids make
    total, row_to_col, col_to_row = cr.lapjv_by_scipy(cost)
    best = min(sum(cost[i, p[i]] for i in range(6)) for p in itertools.permutations(range(6)))
    assert total == best == cost[np.arange(6), row_to_col].sum()
    assert sorted(row_to_col) == list(range(6))
    assert all(col_to_row[row_to_col[i]] == i for i in range(6))


def test_cuda_as_cpu_lands_on_the_cpu_and_is_undone():
    before = (torch.Tensor.to, torch.zeros, torch.nn.Module.cuda)
    with cr.cuda_as_cpu():
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.ones(2).to("cuda").device.type == "cpu"
        moved = torch.ones(2).to(device=torch.device("cuda:0"), dtype=torch.float64)
        assert moved.device.type == "cpu" and moved.dtype == torch.float64
        layer = torch.nn.Linear(2, 2)
        assert layer.cuda() is layer
    assert (torch.Tensor.to, torch.zeros, torch.nn.Module.cuda) == before


def test_rope_from_position_ids_gives_the_attention_the_models_own_call():
    model = tiny_model()
    x = torch.randn(2, 10, model.config.hidden_size)
    positions = torch.arange(10)[None]
    attention = model.model.layers[1].self_attn
    with torch.no_grad():
        expected = attention(x, position_embeddings=model.model.rotary_emb(x, position_ids=positions),
                             attention_mask=None)[0]
        with cr.rope_from_position_ids(model):
            got = attention(hidden_states=x, attention_mask=None, position_ids=positions)[0]
    assert torch.equal(got, expected)
    assert "forward" not in vars(attention)


@needs_checkout
def test_reference_carves_a_partition_of_neurons_at_the_asked_share():
    ref = cr.load_reference(CMOE_SRC)
    assert "CMoE_model" not in sys.modules and "sft_utils" not in sys.modules
    model = tiny_model()
    dense = copy.deepcopy(model)
    cr.cmoe_convert(ref, model, calibration(), shared=2, activated=2, experts=16)
    share = cr.active_share(model)
    assert share["active_share"] == 0.25 and share["neurons_total"] == model.config.intermediate_size
    for carved, original in zip(model.model.layers, dense.model.layers):
        parts = [carved.mlp.shared_experts, *carved.mlp.experts]
        gate = torch.cat([p.gate_proj.weight for p in parts])
        neuron = torch.cdist(gate, original.mlp.gate_proj.weight).argmin(dim=1)  # each carved row's dense row
        assert sorted(neuron.tolist()) == list(range(model.config.intermediate_size))
        assert torch.equal(gate, original.mlp.gate_proj.weight[neuron])
        assert torch.equal(torch.cat([p.up_proj.weight for p in parts]), original.mlp.up_proj.weight[neuron])
        assert torch.equal(torch.cat([p.down_proj.weight for p in parts], dim=1),
                           original.mlp.down_proj.weight[:, neuron])


@needs_checkout
def test_every_expert_active_is_the_dense_model():
    ref = cr.load_reference(CMOE_SRC)
    model = tiny_model()
    ids = calibration()[:2]
    with torch.no_grad():
        dense = model(ids).logits
        cr.cmoe_convert(ref, model, calibration(), shared=2, activated=14, experts=16)
        assert torch.allclose(model(ids).logits, dense, atol=1e-5)


@needs_checkout
def test_carving_sees_the_hidden_states_the_carved_model_computes():
    ref = cr.load_reference(CMOE_SRC)
    model = tiny_model()
    construct, outputs = ref.run.construct_moe, []

    def recording(*args, **kwargs):
        outputs.append(construct(*args, **kwargs))
        return outputs[-1]

    ref.run.construct_moe = recording
    cr.cmoe_convert(ref, model, calibration(), shared=2, activated=2, experts=16)
    with torch.no_grad():
        states = model(calibration(), output_hidden_states=True).hidden_states
    assert len(outputs) == model.config.num_hidden_layers
    for layer in range(model.config.num_hidden_layers - 1):  # the last state is after the final norm
        assert torch.allclose(outputs[layer], states[layer + 1], atol=1e-5)
