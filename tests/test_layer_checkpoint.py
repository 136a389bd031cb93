"""LayerCheckpoint (compress/prune/checkpoint.py) under prune_model, in process: a pass stopped by an error
after any layer, then resumed on a fresh copy of the model, ends with the weights, permutations and report of
a pass that never stopped (the hidden states entering the next layer rebuilt by replaying the restored layers)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from compress.prune.apply import PruneConfig, prune_model
from compress.prune.checkpoint import PROGRESS, LayerCheckpoint, layers_done
from tests.conftest import tiny_llama_config

LAYERS = 4


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def dense():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(num_hidden_layers=LAYERS)).eval()


@pytest.fixture(scope="module")
def calibration():
    return torch.randint(0, 320, (4, 32), generator=torch.Generator().manual_seed(1))


CONFIG = PruneConfig(method="sparsegpt", pattern="2:4", permute="heuristic", calib_batch=2)


def rows(result) -> list:
    """The report rows without timings and the resumed mark."""
    out = []
    for step in result.steps:
        info = {k: v for k, v in step.info.items() if k not in ("phase_seconds", "resumed")}
        out.append((step.index, step.name, step.relative_error, step.token_error, json.dumps(info, sort_keys=True)))
    return out


@pytest.fixture(scope="module")
def reference(dense, calibration):
    model = copy.deepcopy(dense)
    return model, prune_model(model, CONFIG, calibration)


@pytest.mark.parametrize("stop_after", [0, LAYERS - 2])
def test_a_pass_stopped_after_any_layer_resumes_to_the_same_result(dense, calibration, reference, tmp_path,
                                                                   stop_after):
    expected_model, expected = reference
    first = copy.deepcopy(dense)

    def stop(step, total):
        if step.index == stop_after:
            raise Stop

    with pytest.raises(Stop):
        prune_model(first, CONFIG, calibration, on_layer=stop, checkpoint=LayerCheckpoint(tmp_path))
    assert layers_done(tmp_path) == (stop_after + 1, LAYERS)

    model = copy.deepcopy(dense)
    checkpoint = LayerCheckpoint(tmp_path)
    result = prune_model(model, CONFIG, calibration, checkpoint=checkpoint)
    assert checkpoint.stats["layers_restored"] == stop_after + 1 and checkpoint.stats["replay_seconds"] > 0
    assert checkpoint.stats["layers_saved"] == LAYERS - checkpoint.stats["layers_restored"]
    for (name, value), (_, reference_value) in zip(model.state_dict().items(), expected_model.state_dict().items()):
        assert torch.equal(value, reference_value), name
    assert rows(result) == rows(expected) and result.linears == expected.linears
    assert result.permutations.keys() == expected.permutations.keys()
    assert all(torch.equal(result.permutations[k], expected.permutations[k]) for k in expected.permutations)
    assert result.permutation_sites == expected.permutation_sites
    assert layers_done(tmp_path) == (LAYERS, LAYERS)


def test_a_checkpoint_of_other_layers_is_refused(dense, calibration, tmp_path):
    from compress.errors import BadInput

    prune_model(copy.deepcopy(dense), CONFIG, calibration, checkpoint=LayerCheckpoint(tmp_path))
    from transformers import LlamaForCausalLM

    other = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=LAYERS + 1)).eval()
    with pytest.raises(BadInput, match="other decoder layers"):
        prune_model(other, CONFIG, calibration, checkpoint=LayerCheckpoint(tmp_path))
    (tmp_path / PROGRESS).write_bytes(b"cut short")
    with pytest.raises(BadInput, match="unreadable checkpoint"):
        prune_model(copy.deepcopy(dense), CONFIG, calibration, checkpoint=LayerCheckpoint(tmp_path))


@pytest.mark.gpu
def test_a_gpu_pass_checkpoints_its_layers_as_they_were_and_resumes(dense, calibration, tmp_path):
    """On a GPU the writer thread copies each finished layer on a stream of its own while the pass goes on:
    every saved layer equals the pruned model's layer, and a resume ends where an uninterrupted pass does."""
    from compress.prune.checkpoint_writer import read_checkpoint

    expected_model = copy.deepcopy(dense).cuda()
    expected = prune_model(expected_model, CONFIG, calibration, "cuda")
    stop_after = LAYERS - 2

    def stop(step, total):
        if step.index == stop_after:
            raise Stop

    with pytest.raises(Stop):
        prune_model(copy.deepcopy(dense).cuda(), CONFIG, calibration, "cuda", on_layer=stop,
                    checkpoint=LayerCheckpoint(tmp_path))
    model = copy.deepcopy(dense).cuda()
    checkpoint = LayerCheckpoint(tmp_path)
    result = prune_model(model, CONFIG, calibration, "cuda", checkpoint=checkpoint)
    # the model lives on the GPU: the writer thread made the host copies
    assert checkpoint.stats["layers_restored"] == stop_after + 1 and checkpoint.stats["writer_copy_seconds"] > 0
    for (name, value), (_, reference_value) in zip(model.state_dict().items(), expected_model.state_dict().items()):
        assert torch.equal(value, reference_value), name
    assert rows(result) == rows(expected)
    for index, layer in enumerate(model.model.layers):
        _, tensors = read_checkpoint(tmp_path / f"layer-{index:05d}.safetensors")
        for key, value in layer.state_dict().items():
            assert torch.equal(tensors["state." + key], value.cpu()), (index, key)
