"""Test configuration: without a GPU, the Triton kernels run through Triton's interpreter.

TRITON_INTERPRET must be set before Triton decorates the kernels (at the first import of fastcyclegan.kernels),
so it is set here, before any test module imports the package. Tests of the PyTorch fallback switch it off per
test (fastcyclegan.ops reads it at call time). On a CUDA machine the kernels are compiled for the GPU instead.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def torch_fallback(monkeypatch):
    """Run fastcyclegan.ops through its PyTorch implementation instead of the Triton kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
