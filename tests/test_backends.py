"""fastcyclegan.backends: every CPU backend builds, runs, and passes the parity rule; the rest say why not."""

import numpy as np
import pytest
import torch
from helpers import generator_parity, hide_module

from fastcyclegan import FastGenerator, Generator
from fastcyclegan.harness.backends import (
    BACKENDS,
    DEFAULT_BACKENDS,
    available_backends,
    build_backend,
    unavailable_reason,
)
from fastcyclegan.harness.measure import generator_gflop
from fastcyclegan.parity import parity

# the model as CPU users run it: the op's PyTorch path (the kernels are tested in test_ops.py)
pytestmark = pytest.mark.usefixtures("torch_fallback")

CPU = torch.device("cpu")


def test_cpu_backends_and_the_reasons_for_the_others():
    # the test extra installs onnxruntime and openvino: the deployment runtimes are in the CPU's default matrix
    expected = ["eager", "eager_cl", "compiled", "compiled_frozen", "fast", "fast_compiled", "onnxruntime", "openvino"]
    assert available_backends(CPU) == expected
    assert (
        unavailable_reason("onnxruntime", CPU, dtype=torch.bfloat16)
        == "onnxruntime runs float32 on a CPU here, not bfloat16"
    )
    assert unavailable_reason("openvino", CPU, training=True) == "openvino is an inference runtime: no training step"
    assert "no training step" in unavailable_reason("compiled_frozen", CPU, training=True)
    assert "not wired" in unavailable_reason("onnxruntime", torch.device("cuda"))
    assert unavailable_reason("tensorrt", CPU) == "tensorrt requires CUDA"
    assert unavailable_reason("compiled_max_autotune", CPU) == "compiled_max_autotune requires CUDA"
    assert "compiled_max_autotune" in BACKENDS and "compiled_max_autotune" not in DEFAULT_BACKENDS
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        unavailable_reason("nope", CPU)
    with pytest.raises(RuntimeError, match="tensorrt is unavailable"):
        build_backend("tensorrt", Generator(1, ngf=4), device=CPU, dtype=torch.float32)


@pytest.mark.parametrize(
    "name",
    [
        "eager",
        "eager_cl",
        "fast",
        "onnxruntime",
        "openvino",
        pytest.param("compiled", marks=pytest.mark.slow),
        pytest.param("compiled_frozen", marks=pytest.mark.slow),
    ],
)
def test_backend_output_passes_parity(name):
    reference = Generator(1, ngf=8).eval()
    x = torch.rand(2, 3, 20, 20) * 2 - 1
    torch._dynamo.reset()
    backend = build_backend(name, reference, device=CPU, dtype=torch.float32)
    assert backend.module is not reference  # weights are copied, never shared
    check = generator_parity(reference, lambda x: backend.run(backend.prepare(x)), torch.float32, x.shape)
    assert check.passed, check
    assert isinstance(backend.module, FastGenerator) == name.startswith("fast")
    assert backend.prepare(x).is_contiguous(memory_format=torch.channels_last) == backend.channels_last_input


def test_parity_rule_catches_a_wrong_output():
    expected = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    same = expected.float()
    assert parity(same, same, expected).passed
    assert not parity(same + 1e-2, same, expected).passed
    assert not parity(same[:, :2], same, expected).passed  # wrong shape
    assert not parity(same * float("nan"), same, expected).passed
    assert not parity([same, same], [same], [expected]).passed  # a missing seed


def _seeds(ratios, ref_err=1e-3):
    """Outputs whose RMS errors are ratio * ref_err, against references with exactly ref_err."""
    expected = [torch.zeros(1, 1, 4, 4, dtype=torch.float64) for _ in ratios]
    return [e + r * ref_err for e, r in zip(expected, ratios)], [e + ref_err for e in expected], expected


@pytest.mark.parametrize(
    "ratios, passes",
    [
        ((1.0, 1.0, 1.0, 1.0), True),
        ((0.9, 1.0, 1.1, 1.4), True),  # median of four: the mean of the middle two, 1.05
        ((0.9, 1.05, 1.2, 1.3), False),  # median 1.125
        ((1.2, 1.2, 1.0, 1.0), True),  # median 1.1: at the bound
        ((1.2, 1.2, 1.2, 1.0), False),  # median 1.2
        ((0.5, 0.5, 0.5, 1.6), False),  # one seed above 1.5x
    ],
)
def test_parity_rule_is_a_median_with_a_worst_seed_bound(ratios, passes):
    check = parity(*_seeds(ratios))
    assert check.passed == passes, check
    assert check.error == pytest.approx(sorted(ratios)[1:3][0] * 5e-4 + sorted(ratios)[1:3][1] * 5e-4)


def test_flop_count_matches_the_design_figures():
    assert generator_gflop(256, 9) == pytest.approx(99.1, abs=0.05)
    assert generator_gflop(128, 6) == pytest.approx(17.5, abs=0.05)


def test_a_runtime_without_its_package_says_which_extra(monkeypatch):
    hide_module(monkeypatch, "openvino")
    assert unavailable_reason("openvino", CPU) == "openvino not installed (pip install 'fastcyclegan[openvino]')"
    assert "openvino" not in available_backends(CPU)
    # the file it runs comes from the exporter: without it, the extra that installs the exporter is named
    monkeypatch.undo()  # openvino back
    hide_module(monkeypatch, "onnxscript")
    assert unavailable_reason("openvino", CPU) == "onnxscript not installed (pip install 'fastcyclegan[onnx]')"


def test_openvino_in_bf16_runs_where_the_cpu_has_native_bf16():
    from fastcyclegan.harness.runtimes import _openvino_capabilities

    if "BF16" not in _openvino_capabilities():
        assert "no native bf16" in unavailable_reason("openvino", CPU, dtype=torch.bfloat16)
        pytest.skip("this CPU has no native bf16: OpenVINO's bf16 precision is refused (asserted above)")
    reference = Generator(1, ngf=8).eval()
    backend = build_backend("openvino", reference, device=CPU, dtype=torch.bfloat16)
    check = generator_parity(reference, backend.run, torch.bfloat16, (2, 3, 24, 24))
    assert check.passed, check
    assert backend.run(torch.rand(1, 3, 24, 24, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_the_runtimes_take_bf16_images_widened_by_numpy_not_by_a_pytorch_op():
    """The hand-over before the runtime's own call runs no PyTorch copy: a parallel one leaves the OpenMP threads
    spinning beside the runtime's threads through its call. Bit for bit the widening PyTorch makes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastcyclegan.harness.runtimes import float32_array

    class Ops(TorchDispatchMode):
        names: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 3, 5, 7).bfloat16()
    x[0, 0, 0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])
    with Ops() as ops:
        widened = float32_array(x)
    assert not [name for name in ops.names if "copy" in name], ops.names
    assert widened.dtype == np.float32 and np.array_equal(widened, x.float().numpy(), equal_nan=True)
    assert np.signbit(widened[0, 0, 0, 3])
    fp32 = torch.randn(1, 3, 4, 4)
    assert np.shares_memory(float32_array(fp32), fp32.numpy())  # zero-copy


def test_the_runtimes_bf16_outputs_are_rounded_by_numpy_as_pytorch_rounds():
    from fastcyclegan.harness.runtimes import tensor_of

    values = torch.randn(4096) * torch.logspace(-40, 38, 4096)  # normals, subnormals, near-overflow
    ties = (torch.arange(-64, 64, dtype=torch.int32) << 16 | 0x8000).view(torch.float32)  # halfway: even wins
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 3.3895e38, -3.3895e38])
    out = torch.cat([values, ties, special]).numpy()
    got = tensor_of(out, torch.bfloat16)
    expected = torch.from_numpy(out).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.view(torch.int16)[~expected.isnan()], expected.view(torch.int16)[~expected.isnan()])
    assert torch.equal(got.isnan(), expected.isnan())
    kept = tensor_of(out, torch.float32)
    assert np.array_equal(kept.numpy(), out, equal_nan=True) and not np.shares_memory(kept.numpy(), out)  # a copy
