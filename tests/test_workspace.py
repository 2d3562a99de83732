"""Large CPU inference writes the fast modules' norm outputs into buffers kept between calls
(fastcyclegan/workspace.py): outputs unchanged, buffers reused and shared by role, never under autograd,
dropped on a move or cast, one set per thread; the op's `out=` takes plain inference only."""

import threading
import weakref

import pytest
import torch

from fastcyclegan import FastDiscriminator, FastGenerator, Generator, cpu_plan, ops, workspace
from fastcyclegan.reference import Discriminator

pytestmark = pytest.mark.usefixtures("torch_fallback")


@pytest.fixture(autouse=True)
def call_by_call():
    """The workspace serves the forward that runs call by call: no recorded plans (`cpu_plan`, its own buffers)."""
    with cpu_plan.disabled():
        yield


@pytest.fixture
def keep_all(monkeypatch):
    """Every norm output kept (the default keeps those over 1 MB): small models exercise every role."""
    monkeypatch.setattr(workspace, "KEEP_BYTES", 0)


def _kept(*owners):
    """(owner's class, key) -> kept tensor, over every thread's set."""
    return {
        (type(owner).__name__, key): t
        for owner in owners
        for per_thread in workspace._kept.get(owner, {}).values()
        for key, t in per_thread.items()
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("blocks", [0, 1, 3])
def test_outputs_equal_the_fresh_path_and_the_buffers_are_reused_by_role(keep_all, dtype, blocks):
    torch.manual_seed(0)
    reference = Generator(blocks, ngf=8, affine=True).eval()
    fast = FastGenerator.from_module(reference).to(dtype).eval()
    x = (torch.rand(2, 3, 24, 28) * 2 - 1).to(dtype)
    with torch.inference_mode():
        first = fast(x)
        pointers = {k: t.data_ptr() for k, t in _kept(fast, fast.model).items()}
        again = fast(x)
        other = fast(x.flip(-1))
    assert torch.equal(first, again)
    # the residual stream's two buffers and the blocks' inner one, shared by every block
    roles = {key for (_, key) in pointers if isinstance(key, str)}
    assert roles == ({"h0", "h1", "t"} if blocks else {"h0"})
    assert len(pointers) == len(roles) + 4  # stem, first down, both ups: 7 buffers for any number of blocks
    assert {k: t.data_ptr() for k, t in _kept(fast, fast.model).items()} == pointers  # reused, not reallocated
    keep = workspace.KEEP_BYTES
    workspace.KEEP_BYTES = 1 << 62  # nothing kept: the fresh path
    try:
        with torch.inference_mode():
            fresh, fresh_other = fast(x), fast(x.flip(-1))
    finally:
        workspace.KEEP_BYTES = keep
    assert torch.equal(first, fresh) and torch.equal(other, fresh_other)
    assert first.data_ptr() not in pointers.values()  # what a forward returns is its own


def test_autograd_keeps_nothing_and_trains_as_before(keep_all):
    torch.manual_seed(0)
    fast = FastGenerator.from_module(Generator(1, ngf=8)).train()
    x = torch.rand(1, 3, 24, 24) * 2 - 1
    fast(x).square().mean().backward()
    assert _kept(fast, fast.model) == {}
    assert all(p.grad is not None for p in fast.parameters())


def test_a_move_or_cast_drops_the_buffers(keep_all):
    fast = FastGenerator.from_module(Generator(1, ngf=8)).eval()
    with torch.no_grad():
        fast(torch.rand(1, 3, 24, 24))
    assert _kept(fast, fast.model)
    fast.to(torch.bfloat16)
    assert _kept(fast, fast.model) == {}


def test_threads_keep_their_own_buffers(keep_all):
    torch.manual_seed(0)
    fast = FastGenerator.from_module(Generator(2, ngf=8)).eval()
    inputs = [torch.rand(1, 3, 24, 24) * 2 - 1 for _ in range(4)]
    with torch.no_grad():
        expected = [fast(x) for x in inputs]
    results, errors = {}, []

    def worker(k):
        try:
            with torch.no_grad():
                for _ in range(5):
                    results[k] = fast(inputs[k])
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(results[k], expected[k]) for k in range(4))
    assert len(workspace._kept[fast.model]) >= 4  # one set per thread


def test_the_discriminator_keeps_its_large_norm_outputs_too(keep_all):
    torch.manual_seed(0)
    reference = Discriminator(ndf=8).eval()
    fast = FastDiscriminator.from_module(reference).eval()
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        out, again, expected = fast(x), fast(x), reference(x)
    assert torch.equal(out, again) and len(_kept(fast.model)) == 3  # its three norms
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_the_ops_out_takes_plain_inference_only():
    x = torch.randn(1, 4, 6, 6)
    out = torch.empty(1, 4, 8, 8)
    with torch.no_grad():
        assert ops.instance_norm(x, pad=1, out=out) is out
        with pytest.raises(ValueError, match=r"out must be a tensor of shape \(1, 4, 8, 8\)"):
            ops.instance_norm(x, pad=1, out=torch.empty(1, 4, 6, 6))
        with pytest.raises(ValueError, match="must not share memory"):
            ops.instance_norm(x, out=x)
        with pytest.raises(ValueError, match="memory format"):
            ops.instance_norm(x, pad=1, out=torch.empty(1, 4, 8, 8).contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="out= takes plain inference only"):
        ops.instance_norm(x.requires_grad_(), pad=1, out=out)


BF16_NATIVE = torch.ops.mkldnn._is_mkldnn_bf16_supported()
NEEDS_BF16 = pytest.mark.skipif(not BF16_NATIVE, reason="this CPU has no native bf16 (oneDNN's bf16 check)")


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=NEEDS_BF16)])
def test_large_conv_outputs_go_into_kept_scratch_and_transposed_ones_by_image_groups(monkeypatch, keep_all, dtype):
    """With LARGE_BYTES set just over two images' stem output: the stem and first down conv write into scratch
    buffers kept per shape (the same ones at every call), the up-convs run 3 + 2 and 2 + 2 + 1 images at a time
    into their norms' kept buffers; outputs equal the fresh path's to rounding."""
    from fastcyclegan import convs

    torch.manual_seed(0)
    reference = Generator(2, ngf=8, affine=True).eval()
    fast = FastGenerator.from_module(reference).to(dtype).eval()
    x = (torch.rand(5, 3, 64, 64) * 2 - 1).to(dtype)  # ngf * H * W = 2^15: the packed path in fp32 too
    monkeypatch.setattr(workspace, "LARGE_BYTES", 1 << 62)  # the fresh path
    with torch.inference_mode():
        expected = fast(x)
    image = 8 * 64 * 64 * x.element_size()  # one image's stem output
    monkeypatch.setattr(workspace, "LARGE_BYTES", 2 * image + 1)
    written, batches, transposed, lingering = [], [], [], []
    conv = convs.conv_without_bias

    def recorded(layer, h, out=None):
        written.append(out is not None)
        batches.append((type(layer).__name__, h.shape[0]))
        if isinstance(layer, torch.nn.ConvTranspose2d):  # the groups' outputs alive when the next one is made
            lingering.append(sum(ref() is not None for ref in transposed))
        z = conv(layer, h, out=out)
        if isinstance(layer, torch.nn.ConvTranspose2d):
            transposed.append(weakref.ref(z))
        return z

    monkeypatch.setattr(convs, "conv_without_bias", recorded)
    with torch.inference_mode():
        first = fast(x)
        scratch = {k: t.data_ptr() for k, t in _kept(fast).items() if k[1][0] == "scratch"}
        again = fast(x)
    # oneDNN's transposed kernel may sum in another order for a smaller batch: equal to rounding, not bit for bit
    torch.testing.assert_close(first, expected, atol=1e-5 if dtype == torch.float32 else 4e-2, rtol=0)
    assert torch.equal(again, first)
    assert written[:2] == [True, True] and sum(written) == 4  # the stem, the first down conv, at each call
    assert [b for kind, b in batches if kind == "ConvTranspose2d"] == [3, 2, 2, 2, 1] * 2
    # each group's output freed before the next is made: glibc hands the same block back instead of growing
    # the heap past its trim threshold (faults at every forward; bench/results/TUNING.md)
    assert lingering == [0] * 10
    assert len(scratch) == 2  # one per channel count
    assert {k: t.data_ptr() for k, t in _kept(fast).items() if k[1][0] == "scratch"} == scratch
    with torch.inference_mode():  # images of other sizes: the same two buffers, remade, not more of them
        for size in (72, 80):
            fast(torch.rand(5, 3, size, size).to(dtype))
    assert len([k for k in _kept(fast) if k[1][0] == "scratch"]) == 2


def test_a_packed_conv_writes_into_a_buffer_exactly():
    """onednn.conv2d(..., out=): the conv's values (zeros added) into the buffer given, whatever it held."""
    from torch import nn

    from fastcyclegan import onednn

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    out = torch.full((2, 16, 10, 10), float("nan")).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert onednn.usable(x, conv) and onednn.writes_into_buffers()
        expected = onednn.conv2d(conv, x, None)
        assert onednn.conv2d(conv, x, None, out=out) is out and torch.equal(out, expected)
        assert torch.equal(onednn.conv2d(conv, x, None, out=out), expected)  # not added to the last result
