"""Compiles every Triton kernel for sm_90 the way a real launch specializes it; prints one JSON line.

Run in its own process with TRITON_INTERPRET=0 (test_kernel_compile.py does): Triton decides at import time
whether `@triton.jit` builds compilable or interpreted functions, and the CPU tests import it interpreted.
"""

import inspect
import json
import re
import sys

import fastcyclegan.kernels.instance_norm as K
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNELS = {
    "fwd_stats": (K._in_fwd_stats_kernel, {}),
    "fwd_apply": (
        K._in_fwd_apply_kernel,
        {"RELU": True, "HAS_RESIDUAL": True, "SPLIT_BLOCK": 8, "PAD": 1, "FLAT": False},
    ),
    "fwd_apply_flat": (
        K._in_fwd_apply_kernel,
        {"RELU": True, "HAS_RESIDUAL": True, "SPLIT_BLOCK": 8, "PAD": 0, "FLAT": True},
    ),
    "bwd_reduce": (K._in_bwd_reduce_kernel, {"RELU": True}),
    "bwd_apply": (K._in_bwd_apply_kernel, {"RELU": True, "SPLIT_BLOCK": 8}),
}
TENSOR_ARGS = {"x_ptr", "res_ptr", "y_ptr", "dy_ptr", "dx_ptr"}  # in the storage dtype; other pointers are fp32
FLOAT_ARGS = {"eps", "slope"}  # the scalar arguments that are fp32 (the rest are sizes and strides)
# the unit strides that Triton turns into constants at a real launch (it specializes integer arguments of 1)
UNIT_STRIDES = {
    True: ("stride_c", "x_stride_c", "res_stride_c", "y_stride_c"),
    False: ("stride_p", "x_stride_w", "res_stride_w", "y_stride_w", "x_stride_p"),
}


def compile_for_sm90(kernel, flags: dict, dtype: str, channels_last: bool):
    names = list(inspect.signature(kernel.fn).parameters)
    plan = K.plan(8, 256, 64 * 64, channels_last, torch.device("cpu"), split=4)
    consts = {**flags, "BLOCK_P": plan.block_p, "BLOCK_C": plan.block_c}
    consts.update({name: 1 for name in UNIT_STRIDES[channels_last] if name in names})
    signature, divisible = {}, []
    for name in names:
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}" if name in TENSOR_ARGS else "*fp32"
            divisible.append(name)
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
            if name != "split" and name not in FLOAT_ARGS:
                divisible.append(name)  # the generator's sizes and strides are multiples of 16
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in consts.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in divisible},
    )
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": plan.num_warps})


def main() -> int:
    results = {}
    for dtype, channels_last in (("bf16", True), ("fp32", False)):
        for label, (kernel, flags) in KERNELS.items():
            key = f"{label}-{dtype}-{'cl' if channels_last else 'nchw'}"
            try:
                compiled = compile_for_sm90(kernel, flags, dtype, channels_last)
            except Exception as err:  # reported, not raised: the test names every kernel that fails
                results[key] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000]}
                continue
            ptx = compiled.asm["ptx"]
            results[key] = {
                "ok": bool(compiled.asm.get("cubin")),
                "v4_loads": len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.b32", ptx)),
                "v4_stores": len(re.findall(r"st\.global(?:\.\w+)*\.v4\.b32", ptx)),
            }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
