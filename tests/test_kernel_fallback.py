"""SparseLinear records the path each forward took and why it fell back; kernel_usage names them per path.

On the CPU the kernel entries are stand-ins (the dispatch is told the input is on a GPU); the last test
runs the real kernels on CUDA."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from compress.kernels import sparse_linear
from compress.kernels.sparse_linear import SparseLinear, kernel_fallbacks, kernel_usage, use_kernels
from compress.prune import nm_mask


def sparse_model(n=2, m=4, device="cpu", dtype=torch.float32):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, device=device, dtype=dtype)
    linear.weight.data *= nm_mask(torch.rand(32, 64, device=device), n, m)
    module = SparseLinear.from_linear(linear, n, m)
    return torch.nn.Sequential(OrderedDict(proj=module)), module


def reference(module, x):
    return F.linear(x, module.dense_weight(), module.bias)


class RefusingCslt:
    def mm_t(self, x2d, bias=None):
        raise RuntimeError("CUSPARSE_STATUS_NOT_SUPPORTED")


class FakeCslt:
    def __init__(self, module):
        self.weight = module.stored_weight()

    def mm_t(self, x2d, bias=None):
        out = self.weight @ x2d.t()
        return out if bias is None else out + bias[:, None]


@pytest.fixture
def on_gpu(monkeypatch):
    """The dispatch believes every input is on CUDA; the Triton entry computes the dense product."""
    monkeypatch.setattr(sparse_linear, "_on_gpu", lambda x: True)
    monkeypatch.setattr(SparseLinear, "_decode", reference)


def test_a_refused_cusparselt_call_is_recorded_and_named(on_gpu):
    model, module = sparse_model()
    module.kernels, module.contiguous_output, module._cslt = True, False, RefusingCslt()
    x = torch.randn(1, 32, 64)
    with pytest.warns(UserWarning, match="cuSPARSELt refused 32x64"):
        out = model(x)
    assert torch.allclose(out, reference(module, x))
    assert module.ran_on == "dense" and module.fallback_reason.startswith("cuSPARSELt refused 32x64")
    assert kernel_usage(model) == {"dense": ["proj"]}
    assert kernel_fallbacks(model) == {"proj": module.fallback_reason}

    model(torch.randn(1, 4, 64))  # few tokens: the Triton path, still a fallback from cuSPARSELt
    assert kernel_usage(model) == {"triton": ["proj"]}
    assert "cuSPARSELt refused" in kernel_fallbacks(model)["proj"]


def test_the_kernel_meant_for_a_module_is_no_fallback(on_gpu):
    model, module = sparse_model()
    module.kernels, module.contiguous_output, module._cslt = True, False, FakeCslt(module)
    x = torch.randn(1, 20, 64)
    assert torch.allclose(model(x), reference(module, x), atol=1e-5)
    assert kernel_usage(model) == {"cusparselt": ["proj"]} and kernel_fallbacks(model) == {}

    model(torch.randn(1, 1, 64))
    assert module.ran_on == "cusparselt"  # one fp32 token still goes to cuSPARSELt
    model.bfloat16()
    module._dense = None
    model(torch.randn(1, 1, 64, dtype=torch.bfloat16))  # one bf16 token: Triton by design
    assert kernel_usage(model) == {"triton": ["proj"]} and kernel_fallbacks(model) == {}


def test_a_failing_triton_kernel_is_not_hidden(monkeypatch):
    monkeypatch.setattr(sparse_linear, "_on_gpu", lambda x: True)

    def broken(self, x):
        raise RuntimeError("triton compile failed")

    monkeypatch.setattr(SparseLinear, "_decode", broken)
    model, module = sparse_model()
    module.kernels = True
    with pytest.raises(RuntimeError, match="triton compile failed"):
        model(torch.randn(1, 4, 64))


def test_no_prefill_kernel_for_4_8_is_a_named_fallback(on_gpu):
    model, module = sparse_model(4, 8)
    module.kernels = True
    model(torch.randn(1, 32, 64))
    assert kernel_usage(model) == {"dense": ["proj"]}
    assert kernel_fallbacks(model) == {"proj": "no sparse kernel for 4:8 at 32 tokens"}
    model(torch.randn(1, 8, 64))
    assert kernel_usage(model) == {"triton": ["proj"]} and kernel_fallbacks(model) == {}


def test_use_kernels_resets_the_record_and_cpu_inputs_are_a_fallback():
    model, module = sparse_model(4, 8)
    assert kernel_usage(model) == {}  # nothing ran yet
    model(torch.randn(1, 8, 64))
    assert kernel_usage(model) == {"dense": ["proj"]} and kernel_fallbacks(model) == {}  # kernels off: no fallback
    assert use_kernels(model) == 1 and kernel_usage(model) == {}
    model(torch.randn(1, 8, 64))
    assert kernel_fallbacks(model) == {"proj": "input on cpu: the kernels need CUDA"}
    use_kernels(model, enabled=False)
    model(torch.randn(1, 8, 64))
    assert kernel_usage(model) == {"dense": ["proj"]} and kernel_fallbacks(model) == {}


@pytest.mark.gpu
def test_real_kernels_record_their_paths_and_a_refusal(monkeypatch):
    from compress.kernels.cslt import CsltWeight, cslt_available

    model, module = sparse_model(device="cuda", dtype=torch.float16)
    use_kernels(model)
    with torch.no_grad():
        model(torch.randn(1, 64, 64, device="cuda", dtype=torch.float16))
        assert module.ran_on == ("cusparselt" if cslt_available() else "dense")
        model(torch.randn(1, 4, 64, device="cuda", dtype=torch.float16))
        assert module.ran_on == ("cusparselt" if cslt_available() else "triton")
        if not cslt_available():
            assert kernel_fallbacks(model) == {"proj": "cuSPARSELt is not available"}
            return

        def refuse(self, x2d, bias=None):
            raise RuntimeError("refused for the test")

        monkeypatch.setattr(CsltWeight, "mm_t", refuse)
        x = torch.randn(1, 64, 64, device="cuda", dtype=torch.float16)
        with pytest.warns(UserWarning, match="cuSPARSELt refused"):
            out = model(x)
    assert torch.allclose(out, reference(module, x), atol=1e-2)
    assert kernel_usage(model) == {"dense": ["proj"]}
    assert "refused for the test" in kernel_fallbacks(model)["proj"]


def test_eval_kernels_exits_1_naming_the_linears_that_fell_back(tiny_model_dir, text_file, monkeypatch):
    """The CLI side: a fallback reported by the kernel rows is exit 1 with the names (CUDA itself is faked)."""
    from typer.testing import CliRunner

    from compress.cli import app
    from compress.pipeline import compare

    seen = {}

    def rows(model, ids, context, device, source, bos_id, allow_fallback):
        seen["allow"] = allow_fallback
        if not allow_fallback:
            raise compare.KernelFallback({"model.layers.0.mlp.down_proj": "cuSPARSELt refused the shape"})
        return [{"model": source, "path": "kernels", "perplexity": 1.0, "tokens": 1, "context": context,
                 "seconds": 1.0, "windows": 1, "nll": 0.0, "bos": False}]

    monkeypatch.setattr(compare, "_kernel_rows", rows)
    args = ["eval", str(tiny_model_dir), "--kernels", "--text", str(text_file), "--context", "32", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "model.layers.0.mlp.down_proj" in result.output and "--allow-fallback" in result.output
    assert CliRunner().invoke(app, [*args, "--allow-fallback", "--json"]).exit_code == 0 and seen["allow"]
