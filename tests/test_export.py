"""ONNX export: the public layout, an affine third-party layout and a FastGenerator become files that
onnxruntime runs within the parity rule at two batch sizes and two image sizes from one file; the fused op
lowers to the reference's standard nodes; bad input and failed checks write nothing.

Small generators (ngf 8, 2 blocks): each export takes a few seconds, mostly the exporter's own tracing.
"""

import copy
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from helpers import PublicResnetGenerator, ThirdPartyGenerator, generator_parity, hide_module, learned_affine

from fastcyclegan import FastGenerator, Generator, load_generator
from fastcyclegan.export import (
    CHECK_SHAPES,
    _check_norm_parameters,
    _check_pads,
    _run_checks,
    export_onnx,
    max_opset,
    onnx_model,
)

onnx = pytest.importorskip("onnx", reason="the onnx extra (onnx, onnxscript) is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (onnx, onnxscript) is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")

# shapes of the acceptance check: other than the export's own CHECK_SHAPES, two batch sizes, two image sizes
SHAPES = ((1, 3, 64, 64), (3, 3, 40, 56))
STANDARD_OPS = {"Add", "Conv", "ConvTranspose", "InstanceNormalization", "Pad", "Relu", "Slice", "Tanh"}


def _session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _runs_within_parity(path, reference, dtype=torch.float32):
    session = _session(path)
    (name,) = [i.name for i in session.get_inputs()]

    def run(x):
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    for shape in SHAPES:
        check = generator_parity(reference, run, dtype, shape)
        assert check.passed, f"{path.name} at {shape}: {check}"


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fastcyclegan", "export", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_the_public_layout_exports_from_the_command_line_and_runs_at_two_batches_and_sizes(tmp_path):
    torch.manual_seed(0)
    reference = Generator(2, ngf=8)
    torch.save({"netG_A": reference.state_dict()}, tmp_path / "latest_net_G.pth")
    out = tmp_path / "g.onnx"
    done = _cli(tmp_path / "latest_net_G.pth", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}: fp32, opset 18") and "within the parity rule" in done.stdout
    assert done.stderr == ""  # the exporter's progress, logs and warnings stay off the terminal
    model = onnx.load(str(out))
    assert {n.op_type for n in model.graph.node} <= STANDARD_OPS
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3] and not dims[1]  # batch, height and width are symbolic
    _runs_within_parity(out, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "latest_net_G.pth"]  # no temporaries


def test_an_affine_third_party_generator_exports_and_matches_its_own_module(tmp_path):
    original = learned_affine(ThirdPartyGenerator(num_blocks=2)).eval()
    result = export_onnx(original, tmp_path / "third.onnx")
    assert [shape for shape, _ in result.checks] == list(CHECK_SHAPES) and result.unchecked is None
    _runs_within_parity(tmp_path / "third.onnx", original)


def test_a_fast_generator_exports_its_fused_op_as_standard_nodes(tmp_path):
    reference = learned_affine(Generator(2, ngf=8, affine=True)).eval()
    fast = FastGenerator.from_module(reference)
    result = export_onnx(fast, tmp_path / "fast.onnx")
    model = onnx.load(str(tmp_path / "fast.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert ops <= STANDARD_OPS and {"InstanceNormalization", "Pad", "Relu", "Add"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)  # no custom op left for a runtime to miss
    assert set(result.ops) == ops
    _runs_within_parity(tmp_path / "fast.onnx", reference)


def test_an_fp16_file_runs_within_the_parity_rule_in_fp16(tmp_path, monkeypatch):
    torch.manual_seed(1)
    reference = Generator(2, ngf=8).eval()
    torch.save(reference.state_dict(), tmp_path / "g.pth")
    checked = []
    real_checks = _run_checks
    monkeypatch.setattr(
        "fastcyclegan.export._run_checks",
        lambda model, ref, dtype: checked.append(ref) or real_checks(model, ref, dtype),
    )
    export_onnx(load_generator(tmp_path / "g.pth"), tmp_path / "g16.onnx", dtype="fp16")
    # the run check's float64 yardstick holds the checkpoint's fp32 weights, not the file's fp16 ones
    assert all(p.dtype == torch.float32 for p in checked[0].parameters())
    model = onnx.load(str(tmp_path / "g16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    _runs_within_parity(tmp_path / "g16.onnx", reference, torch.float16)


@pytest.mark.parametrize(
    "content, why",
    [(b"garbage", "neither a PyTorch checkpoint nor a safetensors file"), (None, "does not exist or is not a file")],
)
def test_a_malformed_or_missing_checkpoint_is_one_line_and_exit_2_writing_nothing(tmp_path, content, why):
    source = tmp_path / "bad.pth"
    if content is not None:
        source.write_bytes(content)
    done = _cli(source, tmp_path / "out.onnx")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("fastcyclegan export: ") and why in done.stderr
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize(
    "kwargs, why",
    [
        (dict(dtype="bf16"), "fp32 or fp16"),
        (dict(opset=17), "opset must be an int from 18"),
    ],
)
def test_unsupported_requests_are_refused_before_any_work(tmp_path, kwargs, why):
    with pytest.raises(ValueError, match=why):
        export_onnx(Generator(1, ngf=4), tmp_path / "g.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_module_that_is_no_resnet_generator_is_refused_naming_the_layer(tmp_path):
    batch_norm = PublicResnetGenerator(ngf=4, n_blocks=1, norm="batch")
    with pytest.raises(ValueError, match="cannot export PublicResnetGenerator: it .*BatchNorm2d"):
        export_onnx(batch_norm, tmp_path / "g.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_graph_onnx_checker_refuses_is_a_value_error_naming_it(monkeypatch):
    def refuse(model, full_check=False):
        raise onnx.checker.ValidationError("Nodes in a graph must be topologically sorted")

    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    with pytest.raises(ValueError, match="fails onnx.checker, not written: Nodes in a graph"):
        onnx_model(Generator(1, ngf=4))


def test_norm_scales_computed_at_run_time_are_refused():
    """TensorRT's ONNX parser takes InstanceNormalization's scale and bias only as constants of the file."""
    model, _ = onnx_model(FastGenerator.from_module(Generator(1, ngf=4)))  # a plain norm: ones and zeros made
    _check_norm_parameters(model)  # folded into constants by the exporter
    norm = next(n for n in model.graph.node if n.op_type == "InstanceNormalization")
    norm.input[1] = model.graph.input[0].name  # a scale the graph computes (here: the input itself)
    with pytest.raises(ValueError, match="computed at run time.*TensorRT needs them as constants"):
        _check_norm_parameters(model)


def test_zero_padding_in_the_graph_is_refused():
    model, reference = onnx_model(Generator(1, ngf=4))
    _check_pads(model, reference)  # the export as made passes
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    for attribute in pad.attribute:
        if attribute.name == "mode":
            attribute.s = b"constant"
    with pytest.raises(ValueError, match=r"modes \['constant', 'reflect'\].*not written"):
        _check_pads(model, reference)


def test_a_file_off_the_reference_fails_the_run_check_and_keeps_the_old_file(tmp_path, monkeypatch):
    reference = Generator(1, ngf=4)
    model, _ = onnx_model(reference)
    broken = copy.deepcopy(model)
    weight = next(t for t in broken.graph.initializer if len(t.dims) == 4)
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 1e-3  # one weight of one conv, as a lossy conversion would leave it
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    with pytest.raises(ValueError, match="fails the parity rule"):
        _run_checks(broken, reference, "fp32")
    _run_checks(model, reference, "fp32")  # the unbroken one passes

    target = tmp_path / "g.onnx"
    target.write_bytes(b"the previous export")
    monkeypatch.setattr("fastcyclegan.export.onnx_model", lambda *a, **k: (broken, reference))
    with pytest.raises(ValueError, match="fails the parity rule"):
        export_onnx(reference, target)
    assert target.read_bytes() == b"the previous export" and len(list(tmp_path.iterdir())) == 1


def test_without_onnxruntime_the_file_is_written_and_says_it_was_not_run(tmp_path, monkeypatch):
    hide_module(monkeypatch, "onnxruntime")
    result = export_onnx(Generator(1, ngf=4), tmp_path / "g.onnx")
    assert result.checks == () and "onnxruntime is not installed" in result.line()
    onnx.checker.check_model(onnx.load(str(tmp_path / "g.onnx")))


def _checkpoint(tmp_path, channels=3):
    torch.manual_seed(0)
    path = tmp_path / "g.pth"
    torch.save(Generator(1, in_channels=channels, out_channels=channels, ngf=4).state_dict(), path)
    return path


@pytest.mark.parametrize("opset", [99, 29])
def test_an_opset_the_exporter_cannot_write_is_refused_in_one_line(tmp_path, opset):
    done = _cli(_checkpoint(tmp_path), tmp_path / "g.onnx", "--opset", opset)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"opset must be an int from 18 to {max_opset()}" in done.stderr and f"got {opset}" in done.stderr
    assert not (tmp_path / "g.onnx").exists()


def test_the_opset_written_is_the_one_asked_for(tmp_path):
    result = export_onnx(Generator(1, ngf=4), tmp_path / "g.onnx", opset=max_opset())
    model = onnx.load(str(tmp_path / "g.onnx"))
    assert result.opset == max_opset() == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def test_the_temporary_is_created_exclusively_never_through_a_planted_link(tmp_path, monkeypatch):
    """A link planted under any name the export could pick is never written through; out.onnx is a new file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    made = []
    real_mkstemp = tempfile.mkstemp

    def watched(*args, **kwargs):
        made.append(real_mkstemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkstemp", watched)
    for name in (".g.onnx.tmp", f".g.onnx.{os.uname().nodename}-{os.getpid()}.tmp"):  # the old predictable names
        (tmp_path / name).symlink_to(victim)
    export_onnx(Generator(1, ngf=4), tmp_path / "g.onnx")
    assert victim.read_text() == "keep me" and made  # written through mkstemp (O_EXCL)
    assert not (tmp_path / "g.onnx").is_symlink() and (tmp_path / "g.onnx").stat().st_size > 1000


def test_an_output_that_is_the_checkpoint_is_refused_and_the_weights_stay(tmp_path):
    path = _checkpoint(tmp_path)
    before = path.read_bytes()
    (tmp_path / "link.pth").symlink_to(path)
    for output in (path, tmp_path / "link.pth"):
        done = _cli(path, output)
        assert done.returncode == 2 and "is the checkpoint itself" in done.stderr, done.stderr
    assert path.read_bytes() == before


def test_a_dash_is_no_output_name(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fastcyclegan", "export", str(_checkpoint(tmp_path)), "-"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "not standard output" in done.stderr and not (tmp_path / "-").exists()


def test_a_read_only_folder_is_checked_before_the_export(tmp_path, monkeypatch):
    """The check runs first, before the 8-15 s of export and checks (os.access stands in for a read-only folder:
    root, who runs CI, may write into any)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr("fastcyclegan.export.onnx_model", lambda *a, **k: pytest.fail("exported before the check"))
    with pytest.raises(ValueError, match=f"folder {tmp_path} cannot be written"):
        export_onnx(Generator(1, ngf=4), tmp_path / "g.onnx")


def test_a_one_channel_summary_names_one_channel(tmp_path):
    result = export_onnx(Generator(1, in_channels=1, out_channels=1, ngf=4), tmp_path / "g.onnx")
    assert "1x1x32x32" in result.line() and "x3x" not in result.line()


def test_weights_fp16_cannot_hold_are_named(tmp_path):
    generator = Generator(1, ngf=4)
    with torch.no_grad():
        generator.model[1].weight[0, 0, 0, 0] = 1e6
    with pytest.raises(
        ValueError, match=r"float16 cannot hold these weights.*model\.1\.weight \(largest \|value\| 1e\+06\)"
    ):
        export_onnx(generator, tmp_path / "g.onnx", dtype="fp16")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_an_export_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from fastcyclegan import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fastcyclegan.export.export_onnx", interrupted)
    assert cli.main(["export", str(_checkpoint(tmp_path)), str(tmp_path / "g.onnx")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted; nothing written" in err and not (tmp_path / "g.onnx").exists()
