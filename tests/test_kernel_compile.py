"""The Triton kernels compile for Hopper (sm_90) without a GPU, and channels-last tiles move 16-byte vectors.

The interpreter runs the kernels' maths but not Triton's compiler. sm90_compile.py compiles each kernel the
way a real launch specializes it, down to a cubin with the ptxas that Triton ships, in a process of its own.
"""

import importlib.util
import inspect
import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def compiled():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    from triton.compiler import ASTSource

    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("this Triton's ASTSource predates the constexprs argument (Triton < 3.3)")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, str(HERE / "sm90_compile.py")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", ["bf16-cl", "fp32-nchw"])
@pytest.mark.parametrize("kernel", ["fwd_stats", "fwd_apply", "fwd_apply_flat", "bwd_reduce", "bwd_apply"])
def test_kernel_compiles_for_sm90(compiled, kernel, layout):
    result = compiled[f"{kernel}-{layout}"]
    if not result["ok"] and "ptxas" in result.get("error", "").lower():
        pytest.skip(f"Triton's CUDA backend cannot assemble here: {result['error'][:200]}")
    assert result["ok"], result.get("error")


@pytest.mark.parametrize("kernel", ["fwd_apply", "fwd_apply_flat", "bwd_apply"])
def test_channels_last_bf16_tiles_move_16_byte_vectors(compiled, kernel):
    result = compiled[f"{kernel}-bf16-cl"]
    assert result["ok"], result.get("error")
    assert result["v4_loads"] >= 2 and result["v4_stores"] >= 1, result


@pytest.mark.parametrize("kernel", ["fwd_apply_flat", "bwd_apply"])
def test_nchw_fp32_rows_move_16_byte_vectors(compiled, kernel):
    result = compiled[f"{kernel}-fp32-nchw"]
    assert result["v4_loads"] >= 2 and result["v4_stores"] >= 1, result
