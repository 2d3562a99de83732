"""Conformance of the op's routing table (fastcyclegan/ops.py): every route x implementation x layout x dtype
gives the float64 formula's output and gradients, and the table sends each call where it says."""

import contextlib

import pytest
import torch
from helpers import TOLERANCE, assert_close, reference_instance_norm, to_format

from fastcyclegan import norm_cpu, ops


class Marked(torch.Tensor):
    """A tensor subclass: calls on it must take the registered op (the dispatcher handles subclasses)."""


IMPLEMENTATIONS = ("triton", "c kernel", "pytorch")
ROUTES = ("direct", "autograd", "op")
CASES = [
    (route, implementation, layout, dtype)
    for implementation in IMPLEMENTATIONS
    for dtype in ((torch.float32, torch.bfloat16) if implementation != "pytorch" else (torch.float32, torch.float64))
    for layout in ("nchw", "channels_last")
    for route in ROUTES
]


def _select(implementation: str, monkeypatch, cpu_kernel_fixture):
    """Environment for `implementation`; a context that keeps it for the call."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if implementation == "triton" else "0")
    if implementation == "c kernel":
        cpu_kernel_fixture()
    return norm_cpu.disabled() if implementation == "pytorch" else contextlib.nullcontext()


@pytest.mark.parametrize("route, implementation, layout, dtype", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_every_route_and_implementation_matches_float64(route, implementation, layout, dtype, monkeypatch, request):
    make = torch.Generator().manual_seed(3)
    x64 = torch.randn(2, 3, 5, 6, generator=make, dtype=torch.float64) * 2 + 1
    r64 = torch.randn(2, 3, 5, 6, generator=make, dtype=torch.float64)
    w64, b64 = (
        torch.rand(3, generator=make, dtype=torch.float64) + 0.5,
        torch.randn(3, generator=make, dtype=torch.float64),
    )
    grad_out = torch.randn(2, 3, 7, 8, generator=make, dtype=torch.float64)

    with _select(implementation, monkeypatch, lambda: request.getfixturevalue("cpu_kernel")):
        x = to_format(x64.to(dtype), layout == "channels_last")
        residual = to_format(r64.to(dtype), layout == "channels_last")
        param_dtype = (
            torch.float64 if dtype == torch.float64 else torch.float32
        )  # affine parameters stay fp32 in half precision
        weight, bias = w64.to(param_dtype), b64.to(param_dtype)
        grads = route != "direct"
        leaves = [t.clone().requires_grad_(grads) for t in (x, residual, weight, bias)]
        x_in, r_in, w_in, b_in = leaves
        if route == "op":
            x_in, r_in = x_in.as_subclass(Marked), r_in.as_subclass(Marked)
        assert ops.route(x_in, r_in, w_in, b_in) == route
        assert ops.implementation_name(x.detach()) == implementation
        context = torch.no_grad() if route == "direct" else torch.enable_grad()
        with context:
            y = ops.instance_norm(x_in, r_in, weight=w_in, bias=b_in, relu=True, pad=1)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
        if grads:
            y.backward(grad_out.to(dtype))

    reference_leaves = [t.clone().requires_grad_() for t in (x64, r64, w64, b64)]
    expected = reference_instance_norm(
        *reference_leaves[:2], relu=True, pad=1, weight=reference_leaves[2], bias=reference_leaves[3]
    )
    assert_close(y.detach(), expected.detach(), dtype, f"{route} / {implementation} forward")
    if grads:
        expected.backward(grad_out)
        for name, ours, theirs in zip(("x", "residual", "weight", "bias"), leaves, reference_leaves):
            atol, rtol = TOLERANCE[dtype]
            scale = theirs.grad.abs().max().item()  # sums over planes: the tolerance scales with their size
            torch.testing.assert_close(
                ours.grad.double(),
                theirs.grad,
                atol=atol * max(scale, 1) * 4,
                rtol=rtol * 4,
                msg=lambda m, name=name: f"{route} / {implementation} d{name}: {m}",
            )
