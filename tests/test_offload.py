"""Models placed by accelerate (device_map, CPU-memory and disk offload) prune, evaluate and save exactly
like the same model loaded whole."""
import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app
from compress.evaluate import perplexity
from compress.model.loading import load_model
from compress.model.layers import decoder_layers
from compress.model.placement import DeviceMap, is_dispatched, parse_max_memory
from compress.prune.apply import PruneConfig, prune_model
from tests.conftest import save_tiny_model

# layer 0 lives in CPU memory, layers 1 and 2 and the lm_head on disk ("meta" in the module)
SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
         "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "disk"}


@pytest.fixture(scope="module")
def three_layer_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny3") / "llama", seed=3, num_hidden_layers=3)


def calibration():
    return torch.randint(0, 320, (8, 32), generator=torch.Generator().manual_seed(0))


def held_out():
    return torch.randint(0, 320, (512,), generator=torch.Generator().manual_seed(1))


def full_state(model) -> dict:
    """Every tensor of the model, offloaded ones read back from their store."""
    from transformers.integrations.accelerate import load_offloaded_parameter

    return {k: load_offloaded_parameter(model, k) if v.device.type == "meta" else v
            for k, v in model.state_dict().items()}


def digest(folder) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))).hexdigest()


def split_model(path, folder):
    model, _, _ = load_model(str(path), "float32", "cpu", device_map=DeviceMap(SPLIT, offload_folder=str(folder)))
    assert is_dispatched(model)
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    assert model.model.layers[0].mlp.up_proj.weight.device.type == "cpu"
    return model


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_cpu_disk_split_prunes_and_evaluates_like_the_whole_model(method, three_layer_dir, tmp_path):
    before = digest(three_layer_dir)
    whole, _, _ = load_model(str(three_layer_dir), "float32", "cpu")
    split = split_model(three_layer_dir, tmp_path / "offload")
    assert perplexity(split, held_out(), 128).perplexity == perplexity(whole, held_out(), 128).perplexity

    config = PruneConfig(method=method, pattern="2:4")
    whole_result = prune_model(whole, config, calibration())
    split_result = prune_model(split, config, calibration())

    assert model_layers_on(split) == ["cpu", "meta", "meta"]  # offloaded layers went back to their store
    expected, got = whole.state_dict(), full_state(split)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name] == 0, tensor == 0), name  # same masks
        assert torch.equal(got[name], tensor), name  # and the same kept weights
    assert [s.relative_error for s in split_result.steps] == [s.relative_error for s in whole_result.steps]
    assert split_result.overall_sparsity == pytest.approx(0.5)
    assert perplexity(split, held_out(), 128).perplexity == perplexity(whole, held_out(), 128).perplexity
    assert digest(three_layer_dir) == before  # disk entries pointing into the input were not written


def model_layers_on(model) -> list[str]:
    return [layer.mlp.up_proj.weight.device.type for _, layer in decoder_layers(model)]


def test_memory_offloaded_model_prunes_like_the_whole_model(three_layer_dir):
    from accelerate import cpu_offload

    whole, _, _ = load_model(str(three_layer_dir), "float32", "cpu")
    offloaded, _, _ = load_model(str(three_layer_dir), "float32", "cpu")
    cpu_offload(offloaded, execution_device="cpu")  # every weight "meta", kept in a host-memory store
    assert model_layers_on(offloaded) == ["meta"] * 3
    config = PruneConfig(method="sparsegpt", pattern="4:8")
    prune_model(whole, config, calibration())
    prune_model(offloaded, config, calibration())
    assert model_layers_on(offloaded) == ["meta"] * 3
    with torch.no_grad():
        ids = held_out()[:64].view(2, 32)
        assert torch.equal(offloaded(input_ids=ids).logits, whole(input_ids=ids).logits)


def test_saved_checkpoint_of_an_offloaded_model_is_complete(three_layer_dir, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(SPLIT))
    common = ["--text", text_file, "--nsamples", 8, "--seqlen", 64, "--device", "cpu", "--json"]
    runs = {}
    for kind, extra in {"whole": [], "split": ["--device-map", map_file, "--offload-folder", tmp_path / "off"]}.items():
        result = invoke("prune", three_layer_dir, "--method", "wanda", "--out", tmp_path / kind, *common, *extra)
        assert result.exit_code == 0, result.output
        runs[kind] = json.loads(result.stdout)
    assert runs["split"]["device_map"]["model.layers.1"] == "disk" and runs["whole"]["device_map"] is None
    whole = AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    split = AutoModelForCausalLM.from_pretrained(tmp_path / "split").state_dict()
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert split["model.layers.2.mlp.down_proj.weight"].eq(0).float().mean() == 0.5


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_auto_map_under_a_memory_limit_offloads_and_evaluates(tiny_model_dir, text_file, tmp_path):
    args = ["--text", text_file, "--context", 128, "--max-tokens", 1024, "--device", "cpu", "--json"]
    plain = invoke("eval", tiny_model_dir, *args)
    limited = invoke("eval", tiny_model_dir, *args, "--device-map", "auto", "--max-memory", "cpu=100KB",
                     "--offload-folder", tmp_path / "off")
    assert plain.exit_code == 0 and limited.exit_code == 0, limited.output
    assert json.loads(limited.stdout)["results"][0]["perplexity"] == json.loads(plain.stdout)["results"][0]["perplexity"]


@pytest.mark.parametrize("args,message", [
    (["--device-map", "everywhere"], "choose auto"),
    (["--device-map", "auto", "--max-memory", "0=lots"], "bad size"),
    (["--device-map", "auto", "--max-memory", "gpu=1GiB"], "unknown device"),
    (["--max-memory", "cpu=1GiB"], "go with device_map"),
])
def test_bad_device_map_options_exit_2(args, message, tiny_model_dir, tmp_path):
    result = invoke("prune", tiny_model_dir, "--out", tmp_path / "out", "--device", "cpu", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_bad_map_file_exits_2(tiny_model_dir, tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"model": "gpu7"}))
    result = invoke("eval", tiny_model_dir, "--device-map", bad)
    assert result.exit_code == 2 and "unknown device 'gpu7'" in result.output, result.output


def test_parse_max_memory():
    assert parse_max_memory("0=70GiB, cuda:1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    assert parse_max_memory(None) is None


@pytest.mark.gpu
def test_gpu_cpu_disk_split_matches_whole_model_on_the_gpu(three_layer_dir, tmp_path):
    split_map = dict(SPLIT, **{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu"})
    whole, _, _ = load_model(str(three_layer_dir), "float32", "cuda")
    split, _, _ = load_model(str(three_layer_dir), "float32", "cuda",
                             device_map=DeviceMap(split_map, offload_folder=str(tmp_path / "off")))
    config = PruneConfig(method="wanda", pattern="2:4")
    prune_model(whole, config, calibration(), "cuda")
    prune_model(split, config, calibration(), "cuda")
    assert model_layers_on(split) == ["cuda", "meta", "meta"]
    got = full_state(split)
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(got[name].cpu(), tensor, rtol=1e-5, atol=1e-6)
        assert ((got[name].cpu() == 0) == (tensor == 0)).float().mean() > 0.995, name


def test_compressed_export_of_an_offloaded_model_is_refused(tiny_model_dir, tmp_path):
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps({"model": "cpu", "lm_head": "disk"}))
    result = invoke("prune", tiny_model_dir, "--export", "compressed", "--out", tmp_path / "out", "--device", "cpu",
                    "--device-map", map_file, "--offload-folder", tmp_path / "off")
    assert result.exit_code == 2 and "--export: the compressed export cannot read offloaded weights" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_layers_run_on_their_hooks_execution_device(three_layer_dir, tmp_path):
    from compress.model.placement import OffloadedLayer, execution_device, has_offloaded

    split = split_model(three_layer_dir, tmp_path / "off")
    plain, _, _ = load_model(str(three_layer_dir), "float32", "cpu")
    elsewhere = torch.device("meta")  # what the engine would use without a hook
    assert [execution_device(layer, elsewhere) for _, layer in decoder_layers(split)] == [torch.device("cpu")] * 3
    assert execution_device(plain.model.layers[0], elsewhere) == elsewhere
    assert OffloadedLayer.find(split.model.layers[0]) is None and OffloadedLayer.find(plain.model.layers[0]) is None
    assert len(OffloadedLayer.find(split.model.layers[1]).parts) == 9  # 7 Linears, 2 norms
    assert has_offloaded(split) and not has_offloaded(plain)


def test_multi_gpu_benchmark_runs_tiny_on_cpu(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "prune_multi_gpu.py"
    monkeypatch.setattr("sys.argv", [str(script), "--tiny"])
    monkeypatch.syspath_prepend(str(script.parent))  # as `python benchmarks/...` would: its helpers beside it
    runpy.run_path(str(script), run_name="__main__")
    report = json.loads(capsys.readouterr().out)
    assert report["modules_per_device"] == {"cpu": 5, "disk": 3} and report["sparsity"] == 0.5
    assert report["perplexity"] > 1
