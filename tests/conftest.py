"""CPU test configuration: the Triton kernels run through Triton's interpreter.

TRITON_INTERPRET must be set before Triton decorates the kernels (at the first import of fastcyclegan.kernels),
so it is set here, before any test module imports the package. Tests of the PyTorch fallback switch it off per
test (fastcyclegan.ops reads it at call time).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def torch_fallback(monkeypatch):
    """Run fastcyclegan.ops through its PyTorch implementation instead of the Triton kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
