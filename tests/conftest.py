"""Test configuration: without a GPU, the Triton kernels run through Triton's interpreter.

TRITON_INTERPRET must be set before Triton decorates the kernels (at the first import of fastcyclegan.kernels),
so it is set here, before any test module imports the package. Tests of the PyTorch fallback switch it off per
test (fastcyclegan.ops reads it at call time). On a CUDA machine the kernels are compiled for the GPU instead.

Tests marked `cuda` need a CUDA device and skip, saying so, without one (`pytest -m cuda` selects them).
"""

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if importlib.util.find_spec("triton") is not None:
        # Triton reads TRITON_INTERPRET when it first loads and when it decorates the kernels: both happen here,
        # not in whichever test first runs a kernel (one that switched the variable off for the PyTorch path
        # would leave compiled kernels that the interpreter cannot call)
        import fastcyclegan.kernels  # noqa: F401


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="requires CUDA (marked cuda; none on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def no_tf32():
    """fp32 comparisons on CUDA with TF32 off; the flags are restored after the test."""
    from fastcyclegan.parity import tf32_off  # after TRITON_INTERPRET is set above

    with tf32_off():
        yield


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def torch_fallback(monkeypatch):
    """Run fastcyclegan.ops through its CPU implementation (what CPU users run: the C kernel of norm_cpu where
    it runs, else norm_torch) instead of the Triton kernels; modules that test the model rather than the
    kernels use it for all their tests."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture
def cpu_kernel():
    """The C norm kernel of fastcyclegan.norm_cpu, loaded: skipped (the reason named) only on a machine
    without a C compiler; where there is one, a kernel that does not build fails the test."""
    import shutil

    from fastcyclegan import norm_cpu

    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler on PATH: fastcyclegan.norm_cpu cannot build its kernel here")
    lib = norm_cpu.library()
    assert lib is not None, "the C norm kernel did not build or load (see the RuntimeWarning)"
    return lib


@pytest.fixture
def triton(monkeypatch):
    """The Triton kernels, through the interpreter on a CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
