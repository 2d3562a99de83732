"""CPU inference convs on oneDNN pre-packed weights (fastcyclegan.onednn): same values as F.conv2d and
F.conv_transpose2d, any input size and layout, fp32 and natively run bf16, re-packed when the weights change,
never used where autograd or other dtypes run."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastcyclegan import FastGenerator, Generator, onednn

pytestmark = pytest.mark.skipif(not onednn._has_ops(), reason="this torch build has no oneDNN pointwise conv op")


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(3, 16, 7), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 3, 7)],
    ids=["stem", "down", "block", "head"],
)
def test_packed_conv_equals_conv2d_at_every_size_and_layout(conv):
    torch.manual_seed(0)
    with torch.no_grad():
        for size, fmt in ((20, torch.channels_last), (33, torch.contiguous_format), (9, torch.channels_last)):
            x = torch.randn(2, conv.in_channels, size, size).contiguous(memory_format=fmt)
            assert onednn.usable(x, conv)
            y = onednn.conv2d(conv, x, conv.bias)  # packed at the first size, reused at the others
            torch.testing.assert_close(y, conv(x), atol=1e-5, rtol=1e-4)
            assert (
                onednn.conv2d(conv, x, None).sub(F.conv2d(x, conv.weight, None, conv.stride, conv.padding)).abs().max()
                < 1e-4
            )


@pytest.mark.parametrize("out_channels, k", [(3, 7), (1, 3), (4, 5)])
def test_blocked_2x2_conv_equals_the_conv(out_channels, k):
    """A conv with few output channels as one stride-2 conv over 2x2 output blocks and a pixel shuffle: the
    conv's values (float64 reference, the plain packed conv's error), with and without bias, at output
    sizes 2 and 20; its weight re-blocked when it changes."""
    torch.manual_seed(k)
    conv = nn.Conv2d(16, out_channels, k)
    with torch.no_grad():
        for size in (k + 1, k + 19):
            x = torch.randn(2, 16, size, size + 2).contiguous(memory_format=torch.channels_last)
            assert onednn.usable(x, conv) and onednn.blocked_2x2_fits(conv, x)
            for bias in (conv.bias, None):
                y = onednn.conv2d_blocked_2x2(conv, x, bias)
                expected = F.conv2d(x.double(), conv.weight.double(), None if bias is None else bias.double())
                assert y.shape == expected.shape and y.dtype == torch.float32
                plain = onednn.conv2d(conv, x, bias).double().sub(expected).abs().max()
                assert y.double().sub(expected).abs().max() <= 2 * plain + 1e-6
        first = onednn.conv2d_blocked_2x2(conv, x, None)
        conv.weight.mul_(2)
        torch.testing.assert_close(onednn.conv2d_blocked_2x2(conv, x, None), 2 * first)
        # the bias, repeated for the blocks once per version, follows in-place updates and new tensors too
        with_bias = onednn.conv2d_blocked_2x2(conv, x, conv.bias)
        conv.bias.add_(1)
        torch.testing.assert_close(onednn.conv2d_blocked_2x2(conv, x, conv.bias), with_bias + 1)
        other = torch.full_like(conv.bias, -3.0)
        torch.testing.assert_close(onednn.conv2d_blocked_2x2(conv, x, other), 2 * first - 3)


def test_blocked_2x2_fits_only_small_unpadded_stride_1_convs_with_even_outputs():
    x = torch.randn(1, 16, 14, 14)
    assert onednn.blocked_2x2_fits(nn.Conv2d(16, 3, 7), x)  # 8x8 outputs
    assert not onednn.blocked_2x2_fits(nn.Conv2d(16, 3, 7), x[:, :, :13])  # 7 output rows
    assert not onednn.blocked_2x2_fits(nn.Conv2d(16, 5, 7), x)  # 20 channels: more than one vector's 16
    assert not onednn.blocked_2x2_fits(nn.Conv2d(16, 3, 7, padding=1), x)
    assert not onednn.blocked_2x2_fits(nn.Conv2d(16, 3, 7, stride=2), x)
    assert not onednn.blocked_2x2_fits(nn.Conv2d(16, 3, 7, dilation=2), torch.randn(1, 16, 20, 20))


def test_changed_weights_are_packed_again():
    conv = nn.Conv2d(4, 4, 3)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        first = onednn.conv2d(conv, x, None)
        conv.weight.mul_(2)  # in place: a new version of the same storage
        torch.testing.assert_close(onednn.conv2d(conv, x, None), 2 * first)
        conv.load_state_dict({"weight": torch.zeros(4, 4, 3, 3), "bias": torch.zeros(4)})
        assert onednn.conv2d(conv, x, None).abs().max() == 0
        conv.weight = nn.Parameter(torch.ones(4, 4, 3, 3))  # another parameter
        torch.testing.assert_close(onednn.conv2d(conv, x, None), F.conv2d(x, conv.weight))


BF16_NATIVE = torch.ops.mkldnn._is_mkldnn_bf16_supported()
NEEDS_BF16 = pytest.mark.skipif(not BF16_NATIVE, reason="this CPU has no native bf16 (oneDNN's bf16 check)")


def test_only_plain_inference_in_fp32_or_native_bf16_uses_it():
    conv = nn.Conv2d(4, 4, 3)
    x = torch.randn(1, 4, 8, 8)
    assert not onednn.usable(x, conv)  # grad enabled and the weight requires it: autograd needs F.conv2d
    with torch.no_grad():
        assert onednn.usable(x, conv)
        assert onednn.usable(x, nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1))
        assert onednn.usable(x.bfloat16(), conv.bfloat16()) == BF16_NATIVE  # elsewhere ATen's bf16 conv is not oneDNN's
        assert not onednn.usable(x.double(), conv.double())
        assert not onednn.usable(x.half(), conv.half())
        assert not onednn.usable(x, nn.Conv2d(4, 4, 3).bfloat16())  # mixed dtypes: F.conv2d says what is wrong
        assert not onednn.usable(x, nn.Conv2d(4, 4, 3, groups=2))
        assert not onednn.usable(x, nn.ConvTranspose2d(4, 4, 3, groups=2))
        assert not onednn.usable(x, nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
        with torch.backends.mkldnn.flags(enabled=False):
            assert not onednn.usable(x, conv)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the pointwise ops would bypass it
            assert not onednn.usable(x, conv)


DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=NEEDS_BF16)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_transposed_conv_equals_conv_transpose2d(dtype):
    """The generator's up-convs (stride 2, padding 1, output padding 1) on a pre-packed weight: F.conv_transpose2d's
    values exactly (the same oneDNN kernel) at sizes other than the one packed for, with and without bias;
    packed again when the weight changes."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1).to(dtype)
    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for size in (6, 11, 4):
            x = torch.randn(2, 16, size, size + 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
            assert onednn.usable(x, conv)
            for bias in (conv.bias, None):
                y = onednn.conv_transpose2d(conv, x, bias)
                expected = F.conv_transpose2d(x, conv.weight, bias, 2, 1, 1)
                assert y.shape == expected.shape and y.dtype == dtype
                assert torch.equal(y, expected)
        first = onednn.conv_transpose2d(conv, x, None)
        conv.weight.mul_(2)
        torch.testing.assert_close(onednn.conv_transpose2d(conv, x, None), 2 * first)


def test_fast_generator_inference_runs_on_packed_weights(monkeypatch, torch_fallback):
    torch.manual_seed(0)
    reference = Generator(1, ngf=8).eval()
    fast = FastGenerator.from_module(reference)
    calls = []
    packed = onednn.conv_call  # what conv2d and the recorded plan (`cpu_plan`) run a packed conv by
    monkeypatch.setattr(
        onednn,
        "conv_call",
        lambda conv, h, bias: (
            (type(conv) is nn.Conv2d and calls.append(h.is_contiguous(memory_format=torch.channels_last)))
            or packed(conv, h, bias)
        ),
    )
    blocked = []
    head = onednn.conv2d_blocked_2x2
    monkeypatch.setattr(onednn, "conv2d_blocked_2x2", lambda conv, h, bias: blocked.append(conv) or head(conv, h, bias))
    x = torch.rand(2, 3, 64, 64) * 2 - 1  # ngf * H * W = 2^15 stem outputs an image: wide enough to pay
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x), atol=1e-5, rtol=0)
        assert len(calls) == 5 and all(calls)  # stem, 2 downs, 2 block convs: channels-last activations
        assert blocked == [fast.model[fast.layout.head]]  # the 3-channel head as 2x2 output blocks
        calls.clear()
        odd = torch.rand(1, 3, 67, 65) * 2 - 1  # the transposed convs double: the head's outputs stay even
        torch.testing.assert_close(fast(odd), reference(odd), atol=1e-5, rtol=0)
        assert len(calls) == 5 and len(blocked) == 2
        calls.clear()
        torch.testing.assert_close(fast(x[:, :, :32, :32]), reference(x[:, :, :32, :32]), atol=1e-5, rtol=0)
        assert calls == []  # a quarter of that: the fixed cost per layer would outweigh the gain
    fast(x).sum().backward()  # training: plain convs, autograd through them
    assert calls == [] and fast.model[1].weight.grad is not None


def test_half_precision_inference_runs_the_head_as_2x2_blocks(monkeypatch, torch_fallback):
    """bf16 on a CPU: the head as 2x2 output blocks (on a pre-packed blocked weight where oneDNN runs bf16
    natively, else on a cached blocked copy), within bf16 rounding of the float64 reference as the plain head
    is; not under autograd."""
    torch.manual_seed(0)
    reference = Generator(1, ngf=8).eval()
    fast = FastGenerator.from_module(reference).to(torch.bfloat16)
    blocked = []
    head = onednn.conv2d_blocked_2x2
    monkeypatch.setattr(onednn, "conv2d_blocked_2x2", lambda conv, h, bias: blocked.append(conv) or head(conv, h, bias))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    expected = Generator(1, ngf=8).double().eval()
    expected.load_state_dict(reference.state_dict())
    with torch.no_grad():
        y = fast(x.bfloat16())
        plain = reference.to(torch.bfloat16)(x.bfloat16())
        truth = expected(x.double())
    assert blocked == [fast.model[fast.layout.head]] and y.dtype == torch.bfloat16
    error, plain_error = ((t.double() - truth).square().mean().sqrt() for t in (y, plain))
    assert error <= 1.5 * plain_error, (error, plain_error)
    fast(x.bfloat16()).float().sum().backward()  # training: the module's own head
    assert len(blocked) == 1 and fast.model[fast.layout.head].weight.grad is not None


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_planned_forward_runs_every_conv_on_its_packed_weight_without_a_reorder(capfd, torch_fallback, dtype):
    """oneDNN's own log of a CPU inference forward after the first (the recorded plan's replay): 5 convs and 2
    transposed convs executed, and no reorder, so every packed weight has the layout oneDNN's kernel wants (a
    weight in another layout is reordered at every call: 0.16 ms for a 256x256x3x3 bf16 one). The CPU's own
    kernel choice decides the layout (AMX kernels want others than AVX-512's): this runs on whatever CPU runs it."""
    torch.manual_seed(0)
    fast = FastGenerator(1, ngf=8).eval().to(dtype)
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).to(dtype)  # ngf * H * W = 2^15: the pre-packed path
    with torch.inference_mode():
        fast(x)
        capfd.readouterr()
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            fast(x)
    log = [line.split(",") for line in capfd.readouterr().out.splitlines() if ",exec," in line]
    executed = [fields[fields.index("exec") + 2] for fields in log]  # ...,exec,cpu,<primitive kind>,...
    assert sorted(set(executed)) == ["convolution", "deconvolution"], executed
    assert executed.count("convolution") == 6 and executed.count("deconvolution") == 2  # the head: 2x2 blocked
