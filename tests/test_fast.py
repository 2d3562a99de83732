"""FastGenerator: a drop-in for Generator (keys, outputs, gradients), compile-ready, with clear errors.

The norms run through the op's PyTorch implementation here, the path CPU users run; tests that take the
`triton` fixture (or are parametrized over `path`) run the Triton kernels through the interpreter instead.
"""

import copy

import pytest
import torch
from helpers import LOW_PRECISION, PublicResnetGenerator, generator_parity, to_format

from fastcyclegan import FastGenerator, Generator, load_generator
from fastcyclegan.fast import min_input_size


@pytest.fixture(autouse=True)
def _pytorch_path(torch_fallback):
    pass


@pytest.fixture(params=["pytorch", "triton"])
def path(request, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1" if request.param == "triton" else "0")
    return request.param


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize(
    "num_blocks, size, batch, kernels",
    [(9, (38, 26), 3, "0"), (6, 32, 1, "0"), (2, (17, 13), 1, "1")],
    ids=["9-blocks-pytorch", "6-blocks-pytorch", "2-blocks-triton"],
)
def test_fp32_passes_parity_in_both_layouts(num_blocks, size, batch, kernels, channels_last, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", kernels)
    h, w = size if isinstance(size, tuple) else (size, size)
    ref = Generator(num_blocks, ngf=8)
    fast = FastGenerator.from_module(ref)
    x = to_format(torch.randn(batch, 3, h, w), channels_last)
    with torch.no_grad():
        out, expected = fast(x), ref(x)
    assert out.shape == expected.shape == (batch, 3, 4 * -(-h // 4), 4 * -(-w // 4))
    assert out.is_contiguous() and expected.is_contiguous()  # the reference's NCHW output, either input layout
    check = generator_parity(ref, fast, torch.float32, (batch, 3, h, w), channels_last=channels_last)
    assert check.passed, check


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_passes_parity(dtype, path):
    ref = Generator(2, ngf=8)
    fast = FastGenerator.from_module(ref).to(dtype)
    check = generator_parity(ref, fast, dtype, (2, 3, 20, 16))
    assert check.passed, check


@pytest.mark.parametrize("size", [32, 64])  # 64: wide enough for the pre-packed path without autocast
def test_autocast_runs_and_passes_parity(size):
    """CPU bf16 autocast in inference: the reference's output dtype (bf16), and parity. The pre-packed fp32
    convs bypass autocast, so they must not run under it (they once returned fp32 there)."""
    ref = Generator(2, ngf=8)
    fast = FastGenerator.from_module(ref)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(1, 3, size, size)
        assert fast(x).dtype == ref(x).dtype == torch.bfloat16
    check = generator_parity(ref, fast, torch.bfloat16, (1, 3, size, size), autocast=True)
    assert check.passed, check


def test_parameter_gradients_match_the_reference(path):
    """float64 against float64 checks the formula (to round-off), fp32 against fp32 the kernels. The conv
    biases before a norm get exactly zero in FastGenerator (it skips their add) and ~0 in the reference."""
    ref = Generator(2, ngf=8)
    fast = FastGenerator.from_module(ref)
    x, target = torch.randn(2, 3, 24, 20), torch.randn(2, 3, 24, 20)
    head_bias = f"model.{ref.layout.head}.bias"
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        models = [copy.deepcopy(m).to(dtype) for m in (ref, fast)]
        for model in models:
            ((model(x.to(dtype)) - target.to(dtype)) ** 2).mean().backward()
        reference, candidate = models
        scale = max(p.grad.abs().max().item() for p in reference.parameters())
        fast_params = dict(candidate.named_parameters())
        for name, p in reference.named_parameters():
            got = fast_params[name].grad
            if name.endswith(".bias") and name != head_bias:  # a conv bias the norm after it removes
                assert got is not None and not got.any() and p.grad.abs().max() <= tolerance * scale, (name, dtype)
                continue
            torch.testing.assert_close(got, p.grad, atol=tolerance * scale, rtol=tolerance, msg=f"{name} {dtype}")


def test_input_gradient_in_channels_last_matches_float64(triton):
    """The input's gradient through the kernels (interpreter), channels-last fp32, against the reference
    module's in float64."""
    ref = Generator(1, ngf=8)
    fast = FastGenerator.from_module(ref)
    x = torch.randn(1, 3, 16, 16).to(memory_format=torch.channels_last)
    weights = torch.randn(1, 3, 16, 16)
    grads = []
    for model, dtype in ((fast, torch.float32), (ref.double(), torch.float64)):
        leaf = x.to(dtype).detach().requires_grad_()
        (model(leaf) * weights.to(dtype)).sum().backward()
        grads.append(leaf.grad)
    scale = grads[1].abs().max().item()
    assert scale > 0 and grads[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grads[0].double(), grads[1], atol=1e-5 * scale, rtol=1e-4)


def test_same_constructor_and_keys_and_state_dict_round_trip():
    ref = Generator(9)
    fast = FastGenerator(9)
    assert list(fast.state_dict()) == list(ref.state_dict())
    fast.load_state_dict(ref.state_dict())
    back = Generator(9)
    back.load_state_dict(fast.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ref.state_dict().values()))


def test_from_public_resnet_generator_built_independently():
    public = PublicResnetGenerator(ngf=8, n_blocks=4).eval()
    fast = FastGenerator.from_module(public)
    assert fast.num_blocks == 4 and fast.ngf == 8
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), public(x), atol=2e-5, rtol=1e-4)


def test_from_module_copies_dtype_and_mode_and_unwraps_dataparallel():
    ref = Generator(1, ngf=8).to(torch.bfloat16).eval()
    fast = FastGenerator.from_module(ref)
    assert next(fast.parameters()).dtype == torch.bfloat16 and not fast.training
    wrapped = FastGenerator.from_module(torch.nn.DataParallel(Generator(1, ngf=8)))
    assert wrapped.training and list(wrapped.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize(
    "module, reason",
    [
        (PublicResnetGenerator(ngf=8, n_blocks=2, use_dropout=True), "dropout"),
        (PublicResnetGenerator(ngf=8, n_blocks=2, norm="batch"), "batch norm"),
        (PublicResnetGenerator(ngf=8, n_blocks=2, padding_type="replicate"), r"replicate padding.*conv_block\.0"),
        (torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)), "is no ResNet generator: conv '0'"),
        ("latest_net_G.pth", "expects an nn.Module"),
    ],
)
def test_from_module_refuses_other_architectures(module, reason):
    with pytest.raises(ValueError, match=reason):
        FastGenerator.from_module(module)


def test_load_generator_fast(tmp_path):
    ref = Generator(2, ngf=8)
    torch.save(ref.state_dict(), tmp_path / "latest_net_G.pth")
    fast = load_generator(tmp_path / "latest_net_G.pth", fast=True)
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(3, 32, 32), r"\(N, 3, H, W\), got \(3, 32, 32\)"),
        (torch.randn(1, 4, 32, 32), r"\(N, 3, H, W\), got \(1, 4, 32, 32\)"),
        (torch.randn(1, 3, 4, 32), r"at least 5 .* got 4x32"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r"floating-point image in \[-1, 1\] .* got torch.uint8"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.bool), r"got torch.bool"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.complex64), r"got torch.complex64"),
    ],
)
def test_bad_inputs_name_the_expected_shape(x, message):
    with pytest.raises(ValueError, match=message):
        FastGenerator(1, ngf=8)(x)


def test_minimum_size_is_the_reference_minimum():
    ref = Generator(1, ngf=4)
    smallest = min_input_size(1)
    with torch.no_grad():
        ref(torch.randn(1, 3, smallest, smallest))  # accepted
        with pytest.raises(RuntimeError):
            ref(torch.randn(1, 3, smallest - 1, smallest))
    assert min_input_size(0) == 4


def test_empty_batch_gives_an_empty_output():
    fast = FastGenerator(1, ngf=8)
    with torch.no_grad():
        assert fast(torch.randn(0, 3, 24, 24)).shape == (0, 3, 24, 24)


@pytest.mark.slow  # a dynamo trace: torch.compile, without inductor
@pytest.mark.parametrize("num_blocks", [2, 0])
def test_fullgraph_trace_keeps_every_fused_norm(num_blocks):
    """23 norm sites at 9 blocks: 3 + 2 per block + 2, each one fastcyclegan op in the traced graph."""
    seen = []

    def record(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    fast = FastGenerator(num_blocks, ngf=4)
    torch.compile(fast, fullgraph=True, backend=record)(torch.randn(1, 3, 16, 16))
    assert sum("fastcyclegan.instance_norm" in t for t in seen) == 3 + 2 * num_blocks + 2
    # the only padding op left is the 3-channel input's; every other pad is written by a norm
    assert sum(t == "<built-in function pad>" for t in seen) == 1


@pytest.mark.slow
def test_compiled_fullgraph_equals_eager_forward_and_backward(triton):
    eager = FastGenerator(1, ngf=4)
    torch._dynamo.reset()
    compiled = FastGenerator.from_module(eager).compile()
    x = torch.randn(2, 3, 20, 20)
    outs = [model(x) for model in (eager, compiled)]
    torch.testing.assert_close(outs[1], outs[0], atol=2e-5, rtol=1e-4)
    for out in outs:
        out.square().mean().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_parity_and_reduce_overhead(dtype, no_tf32):
    ref = Generator(3).cuda()  # 3 blocks: the same code paths as 9, a third of the compile time
    shape = (2, 3, 128, 128)
    check = generator_parity(ref, FastGenerator.from_module(ref).to(dtype), dtype, shape, device="cuda")
    assert check.passed, check
    graphed = FastGenerator.from_module(ref).to(dtype).compile(mode="reduce-overhead")
    check = generator_parity(ref, lambda x: graphed(x).clone(), dtype, shape, device="cuda")
    assert check.passed, check


def _bench_variants():
    """bench/fcg_variants.py's VARIANTS."""
    from bench.fcg_variants import VARIANTS

    return VARIANTS


@pytest.mark.parametrize("variant", ["stem8", "head8", "stem8+head8", "aten-norms", "unplanned"])
@pytest.mark.parametrize("size", [24, 64], ids=["nchw-path", "packed-path"])  # ngf 8: 2^15 stem outputs at 64
def test_bench_variants_change_nothing_but_speed(size, variant):
    """The A/B candidates of bench/fcg_variants.py (zero input channels on the stem, zero output channels on
    the head, the norms on ATen ops instead of the C kernel) give FastGenerator's outputs and gradients."""
    torch.manual_seed(0)
    ref = Generator(1, ngf=8).eval()
    plain, candidate = FastGenerator.from_module(ref), _bench_variants()[variant].from_module(ref)
    assert type(candidate) is not FastGenerator and isinstance(candidate, FastGenerator)
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(candidate(x), plain(x), atol=1e-5, rtol=1e-5)
    candidate(x).square().sum().backward()
    plain(x).square().sum().backward()
    for (name, a), b in zip(candidate.named_parameters(), plain.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_compile_routes_cpu_fp32_inference_to_the_packed_eager_path(torch_fallback):
    """FastGenerator.compile(): calls that would run on pre-packed oneDNN weights skip the compiled graph
    (compiled they were slower on a CPU); nothing is traced for them."""
    from torch._dynamo.utils import counters

    reference = Generator(1, ngf=8).eval()
    fast = FastGenerator.from_module(reference).eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1  # ngf 8 at 64x64: the packed path's threshold
    with torch.inference_mode():
        expected = fast(x)
    torch._dynamo.reset()
    counters.clear()
    fast.compile()
    with torch.inference_mode():
        out = fast(x)
        assert fast._runs_packed(x)
    assert torch.equal(out, expected)
    assert counters["frames"]["ok"] == 0 and counters["stats"]["calls_captured"] == 0, dict(counters)


def test_only_cpu_inference_on_packed_weights_skips_the_compiled_graph():
    """`_runs_packed`, the calls compile() sends to the eager path: CPU inference on pre-packed weights only,
    never autograd, never another device (it once held for every channels-last call, so on a GPU compile()
    compiled nothing), bf16 where oneDNN runs it natively."""
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    fast = FastGenerator(1, ngf=8)
    bf16 = FastGenerator(1, ngf=8).bfloat16()
    meta = FastGenerator(1, ngf=8).to("meta", torch.float16)  # stands for a GPU: channels-last fp16 activations
    assert not fast._runs_packed(x) and not bf16._runs_packed(x.bfloat16())  # autograd
    with torch.no_grad():
        assert fast._runs_packed(x)
        assert bf16._runs_packed(x.bfloat16()) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
        assert not meta._runs_packed(x.to("meta", torch.float16))


@pytest.mark.slow
def test_compile_still_compiles_what_the_packed_path_does_not_run(torch_fallback):
    from torch._dynamo.utils import counters

    fast = FastGenerator.from_module(Generator(1, ngf=8)).eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    torch._dynamo.reset()
    counters.clear()
    fast.compile()
    fast(x.requires_grad_()).sum().backward()  # autograd: the compiled graph
    assert not fast._runs_packed(x) and counters["stats"]["calls_captured"] > 0
