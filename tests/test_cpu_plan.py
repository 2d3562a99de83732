"""FastGenerator's recorded CPU inference plan (fastcyclegan.cpu_plan): replays give bitwise the unrecorded
path's outputs, are what runs, and are remade or refused whenever what they recorded no longer holds."""

import copy
import threading

import pytest
import torch

from fastcyclegan import FastGenerator, Generator, cpu_plan, fast, norm_cpu, onednn, workspace

pytestmark = pytest.mark.usefixtures("torch_fallback", "cpu_kernel")  # what CPU users run: no Triton interpreter
SIZE = 64  # ngf 8 at 64x64: the pre-packed path's threshold (convs.PACKED_MIN_STEM_OUTPUTS)
DTYPES = [torch.float32] + ([torch.bfloat16] if torch.bfloat16 in onednn._dtypes() else [])


def _model(blocks=2, dtype=torch.float32, affine=False):
    torch.manual_seed(0)
    return FastGenerator.from_module(Generator(blocks, ngf=8, affine=affine)).eval().to(dtype)


def _image(dtype=torch.float32, size=SIZE, seed=1):
    torch.manual_seed(seed)
    return (torch.rand(1, 3, size, size) * 2 - 1).to(dtype)


def _unplanned(model, x):
    with torch.inference_mode(), cpu_plan.disabled():
        return model(x)


def _plan(model):
    return workspace.per_thread(model).get("plan")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocks", [0, 2])
def test_replays_give_the_unrecorded_outputs_bit_for_bit(dtype, blocks):
    model, x = _model(blocks, dtype), _image(dtype)
    with torch.inference_mode():
        recorded, replayed, again = model(x), model(x), model(x)
    expected = _unplanned(model, x)
    assert torch.equal(recorded, expected) and torch.equal(replayed, expected) and torch.equal(again, expected)
    assert len(_plan(model).steps) == 3 + 2 * blocks + 2  # every conv + norm site recorded


def test_a_replay_runs_no_site_call_by_call(monkeypatch):
    model, x = _model(), _image()
    expected = _unplanned(model, x)
    with torch.inference_mode():
        model(x)

        def refuse(*args, **kwargs):
            raise AssertionError("a site ran call by call")

        monkeypatch.setattr(fast, "_conv_norm", refuse)
        replayed = model(x)
    assert torch.equal(replayed, expected)


def test_outputs_are_fresh_tensors_not_the_plans_buffers():
    model = _model()
    with torch.inference_mode():
        first = model(_image(seed=1))
        second = model(_image(seed=2))
    assert torch.equal(first, _unplanned(model, _image(seed=1)))
    assert not torch.equal(first, second)


@pytest.mark.parametrize(
    "change", ["in place", "load_state_dict", "assign", "reassigned", "new submodule", "new block", "affine"]
)
def test_a_parameter_update_makes_a_new_plan(change):
    model, x = _model(affine=change == "affine"), _image()
    with torch.inference_mode():
        model(x)
    block = model.model[model.layout.blocks[0]]
    conv = block.conv_block[model.layout.block_convs[0]]
    with torch.no_grad():
        if change == "in place":
            conv.weight.mul_(-0.5)
        elif change in ("load_state_dict", "assign"):  # copied into the parameters, or replacing them
            other = _model()
            for p in other.parameters():
                p.mul_(1.5)
            model.load_state_dict(other.state_dict(), assign=change == "assign")
        elif change == "reassigned":
            conv.weight = torch.nn.Parameter(conv.weight * -0.5)
        elif change == "new submodule":  # the same layer, other weights
            replacement = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size)
            replacement.weight.copy_(conv.weight * -0.5)
            block.conv_block[model.layout.block_convs[0]] = replacement
        elif change == "new block":
            replacement = copy.deepcopy(block)
            replacement.conv_block[model.layout.block_convs[0]].weight.mul_(-0.5)
            model.model[model.layout.blocks[0]] = replacement
        else:  # an affine norm's weight: the plan's fp32 copy of it is made at recording
            norm = model.model[model.layout.norm_after(model.layout.stem)]
            norm.weight.add_(0.25)
    with torch.inference_mode():
        got = model(x)
    assert torch.equal(got, _unplanned(model, x))


def test_a_new_input_size_makes_a_new_plan():
    model = _model()
    with torch.inference_mode():
        model(_image())
        got = model(_image(size=SIZE + 6))
        steps = _plan(model).steps
    assert torch.equal(got, _unplanned(model, _image(size=SIZE + 6)))
    assert steps[0][1] is None and all(source is not None for _, source, _ in steps[1:])


def test_no_plan_runs_with_the_c_kernel_off():
    model, x = _model(), _image()
    with torch.inference_mode():
        model(x)  # recorded with the C kernel
        with norm_cpu.disabled():
            got = model(x)
            expected = _unplanned(model, x)
    assert torch.equal(got, expected)  # ATen's norms, not a replay of the C kernel's


def test_a_stem_that_does_not_run_through_its_site_is_refused_and_runs_unrecorded():
    class OwnStem(FastGenerator):
        def _stem(self, h0, site):
            m, at = self.model, self.layout
            return fast.norm_after(m, at.stem, m[at.stem]._conv_forward(h0, m[at.stem].weight, None), relu=True)

    torch.manual_seed(0)
    model, x = OwnStem.from_module(Generator(2, ngf=8)).eval(), _image()
    with torch.inference_mode():
        first, second = model(x), model(x)
    assert _plan(model).head_input is None  # refused: down[0]'s input is neither the input nor a plan buffer
    assert torch.equal(first, _unplanned(model, x)) and torch.equal(second, first)


def test_autograd_runs_unrecorded():
    model, x = _model(), _image().requires_grad_()
    model(x).square().mean().backward()
    assert x.grad is not None and _plan(model) is None


def test_threads_replay_their_own_plans():
    model = _model()
    inputs = [_image(size=SIZE + 2 * k, seed=k) for k in range(3)]
    expected = [_unplanned(model, x) for x in inputs]
    results, errors = {}, []

    def worker(k):
        try:
            with torch.inference_mode():
                for _ in range(4):
                    results[k] = model(inputs[k])
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(results[k], expected[k]) for k in range(3))


def test_a_move_or_cast_drops_the_plan_and_its_buffers():
    model, x = _model(), _image()
    with torch.inference_mode():
        model(x)
    assert _plan(model) is not None
    model.to(torch.float64)
    assert _plan(model) is None


def _large_from_two_images(monkeypatch, x):
    """workspace.LARGE_BYTES just over two images' stem output (ngf 8): for 5 images the stem's and first down
    conv's outputs are large (scratch), the transposed convs' too (3 + 2 and 2 + 2 + 1 images at a time). Every
    norm output kept, as for large outputs in use (KEEP_BYTES is under LARGE_BYTES)."""
    monkeypatch.setattr(workspace, "LARGE_BYTES", 2 * 8 * SIZE * SIZE * x.element_size() + 1)
    monkeypatch.setattr(workspace, "KEEP_BYTES", 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_conv_outputs_are_recorded_into_scratch_buffers_and_by_image_groups(monkeypatch, dtype):
    model = _model(dtype=dtype)
    x = torch.cat([_image(dtype, seed=k) for k in range(5)])
    _large_from_two_images(monkeypatch, x)
    expected = _unplanned(model, x)
    with torch.inference_mode():
        recorded = model(x)

        def refuse(*args, **kwargs):
            raise AssertionError("a site ran call by call")

        monkeypatch.setattr(fast, "_conv_norm", refuse)
        replayed, again = model(x), model(x)
    plan = _plan(model)
    assert torch.equal(recorded, expected) and torch.equal(replayed, expected) and torch.equal(again, expected)
    # stem, two downs, 2 blocks of 2, the first transposed conv in 2 groups, the second in 3
    assert len(plan.steps) == 3 + 4 + 2 + 3
    with torch.inference_mode():  # the stem conv writes the plan's scratch buffer, whatever its input
        first, second = (plan.steps[0][0](model._stem_input(x * s)) for s in (1, -1))
    assert first.data_ptr() == second.data_ptr()


def test_image_groups_of_the_networks_input_are_refused_and_run_unrecorded(monkeypatch):
    """Where the stem cannot write into a scratch buffer its large output would be made from groups of the
    input, which is new at every call: no plan, the unrecorded path's outputs."""
    model = _model()
    x = torch.cat([_image(seed=k) for k in range(5)])
    _large_from_two_images(monkeypatch, x)
    monkeypatch.setattr(onednn, "writes_into_buffers", lambda: False)
    expected = _unplanned(model, x)
    with torch.inference_mode():
        first, second = model(x), model(x)
    assert _plan(model).head_input is None
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_dropping_the_model_frees_its_plan():
    """The plan (in the workspace, keyed weakly by the model) holds no reference back to the model."""
    import gc
    import weakref

    model, x = _model(), _image()
    with torch.inference_mode():
        model(x)
    assert _plan(model) is not None
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
