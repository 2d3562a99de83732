"""The CPU path's ATen calls: a constant number per norm site whatever the batch (no loop over images or
planes: on a shared CPU every parallel region's barrier waits for a scheduler slice), counted at the
dispatcher on a FastGenerator forward that runs the pre-packed channels-last path."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastcyclegan import FastGenerator, Generator
from fastcyclegan.norm_torch import fill_reflect_border

pytestmark = pytest.mark.usefixtures("torch_fallback")

# measured 57 for the whole forward below (9 norm sites; the C norm kernel's three outputs a site, the convs,
# the input's pad, the head): room for a few more, not for the ATen norm path's ~40 a site (379 in all)
CALLS_PER_NORM_SITE = 8


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.copies = 0
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        self.names.add(func.__name__.split(".")[0])
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        activation = source is not None and source.dim() == 4 and source.shape[-1] >= 8  # weights: kernel-sized
        self.copies += activation and func.__name__.split(".")[0] in ("copy_", "clone", "_to_copy")
        return func(*args, **(kwargs or {}))


def _calls(model, batch: int) -> int:
    x = torch.rand(batch, 3, 64, 64) * 2 - 1
    with torch.inference_mode(), _Count() as count:
        model(x)
    return count.calls


def test_a_forward_makes_the_same_aten_calls_at_any_batch_and_few_per_norm_site(cpu_kernel):
    fast = FastGenerator.from_module(Generator(2, ngf=8)).eval()  # ngf 8 at 64x64: the packed path's threshold
    sites = 3 + 2 * fast.num_blocks + 2
    _calls(fast, 2)  # the first forward packs the conv weights for oneDNN (once)
    calls = {batch: _calls(fast, batch) for batch in (1, 3, 5)}
    assert calls[1] == calls[3] == calls[5], calls
    assert calls[1] <= CALLS_PER_NORM_SITE * sites, calls


def test_a_one_pixel_border_is_filled_without_a_flip():
    y = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).view(2, 3, 6, 7)
    with _Count() as count:
        fill_reflect_border(y, 1)
    filled = torch.nn.functional.pad(y[:, :, 1:-1, 1:-1], (1, 1, 1, 1), mode="reflect")
    assert torch.equal(y, filled)
    assert "flip" not in count.names and "copy_" in count.names, count.names  # a flip copies


def test_a_cpu_training_step_copies_no_more_than_eager():
    """fp32 forward and backward on a CPU: FastGenerator copies no more activations than the reference (its
    transposed convs copy their channels-last weights, a fraction of an activation's size) and takes no
    slice's gradient (the residual and the decoder read the unpadded tensor itself, the transposed convs run
    NCHW under autograd instead of converting activations and gradients to channels-last and back)."""
    reference = Generator(2, ngf=8)
    fast = FastGenerator.from_module(reference)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    counts = []
    for model in (reference, fast):
        model(x).sum().backward()  # warm-up
        with _Count() as count:
            model(x).square().mean().backward()
        counts.append(count)
    assert counts[1].copies <= counts[0].copies, (counts[1].copies, counts[0].copies)
    assert "slice_backward" not in counts[1].names, counts[1].names
