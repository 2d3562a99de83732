"""`fastcyclegan translate` under torchrun with 2 CPU processes (gloo): every input once, the pixels of one
process, one summary, resume after a change or a killed process, and a job that cannot start fails fast."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastcyclegan
from fastcyclegan import Generator

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")

PACKAGE = Path(fastcyclegan.__file__).parent  # where tracebacks through our modules point


def _env():
    # torchrun gives each process one thread (OMP_NUM_THREADS=1); the single-process reference runs the same,
    # so float sums happen in the same order and the pixels are identical
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TRITON_INTERPRET"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(*args, env=None):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "fastcyclegan",
        "translate",
        *map(str, args),
        "--quiet",
    ]
    return subprocess.Popen(
        command, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(process, timeout=180):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _pngs(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p)) for p in sorted(root.rglob("[!.]*.png"))}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """23 images in a nested folder and a small generator checkpoint."""
    root = tmp_path_factory.mktemp("job")
    rng = np.random.default_rng(1)
    for k in range(23):
        folder = root / "in" / ["", "a", "a/b"][k % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30 + k, 40, 3), dtype=np.uint8)).save(folder / f"{k:02d}.png")
    torch.manual_seed(0)
    torch.save(Generator(2, ngf=8).state_dict(), root / "g.pth")
    return root


def test_two_processes_translate_each_input_once_with_one_summary(job):
    code, out, err = _finish(_torchrun(job / "g.pth", job / "in", job / "out", "--size", "32"))
    assert code == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("translated")]
    assert len(lines) == 1 and lines[0].startswith("translated 23 images in") and "with 2 processes" in lines[0]
    assert re.search(r"per process 0: 12 in .*; 1: 11 in ", lines[0])
    command = [sys.executable, "-m", "fastcyclegan", "translate", job / "g.pth", job / "in", job / "single"]
    single = subprocess.run([*command, "--size", "32", "--quiet"], env=_env(), capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    ours, reference = _pngs(job / "out"), _pngs(job / "single")
    assert len(ours) == 23 and list(ours) == list(reference)
    assert all((ours[name] == reference[name]).all() for name in ours)
    # a rerun's resume (exit 0, the rest translated, the existing skipped): the killed-process test below


def test_a_bad_checkpoint_fails_the_job_quickly_naming_it(job, tmp_path):
    bad = tmp_path / "latest_net_D.pth"
    torch.save({"model.0.weight": torch.zeros(1)}, bad)
    start = time.monotonic()
    code, out, err = _finish(_torchrun(bad, job / "in", tmp_path / "out", "--size", "32"))
    assert code != 0 and time.monotonic() - start < 180
    assert "the job failed: rank 0: checkpoint" in err and "latest_net_D.pth" in err and "rank 1:" in err
    # no traceback through our modules (torchrun adds its own report, with paths of its own): the package's
    # folder, not its name, which the checkout or the virtualenv above it may carry too
    assert str(PACKAGE) not in err and "translated" not in out
    assert err.count("the job failed") == 1


def _rank_process(launcher: int, local_rank: int) -> int | None:
    """The pid of the worker torchrun started with LOCAL_RANK=local_rank (a child of the launcher)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker process through /proc")
def test_a_killed_process_fails_the_job_and_a_rerun_completes_the_set(job, tmp_path):
    torch.manual_seed(0)
    torch.save(Generator(6, ngf=16).state_dict(), tmp_path / "slow.pth")  # ~50 ms an image on one thread
    out = tmp_path / "out"
    # rank 1 decodes each image a second slower, so it is mid-run when rank 0's first image appears (on a fast
    # machine both ranks had written all 23 before the kill landed)
    env = _slow_rank_1_env(tmp_path)
    launcher = _torchrun(tmp_path / "slow.pth", job / "in", out, "--size", "64", "--batch-size", "1", env=env)
    deadline, victim = time.monotonic() + 120, None
    while time.monotonic() < deadline and not (out.exists() and any(out.rglob("*.png"))):
        time.sleep(0.02)
    victim = _rank_process(launcher.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    code, _, err = _finish(launcher)
    assert code != 0, err[-2000:]
    partial = _pngs(out)
    assert 0 < len(partial) < 23  # the kill landed mid-run
    code, stdout, err = _finish(_torchrun(tmp_path / "slow.pth", job / "in", out, "--size", "64"))
    assert code == 0, err[-3000:]
    assert f"translated {23 - len(partial)} images" in stdout and f"skipped {len(partial)} existing" in stdout
    complete = _pngs(out)
    assert len(complete) == 23 and all(a.shape == (64, 64, 3) for a in complete.values())
    assert not [p for p in out.rglob(".*") if p.is_file()]  # the killed run's temporaries were removed


_SLOW_RANK_1 = """
import os, time
if os.environ.get("RANK") == "1":  # this process's images decode one second slower each
    import fastcyclegan.translate as translate
    decode = translate.load_image
    translate.load_image = lambda *args: (time.sleep(1.0), decode(*args))[1]
"""


def _slow_rank_1_env(tmp_path: Path) -> dict:
    """The environment of a torchrun job whose rank 1 decodes each image one second slower (_SLOW_RANK_1)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SLOW_RANK_1)  # imported at start by every process torchrun makes
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_a_rank_slower_than_the_timeout_finishes_and_the_job_succeeds(job, tmp_path):
    """Shares that differ by more than --dist-timeout: the first process to finish waits for the other at the
    end as long as it works (the timeout is for a process that never joins, not for a slow one)."""
    env = _slow_rank_1_env(tmp_path)
    out = tmp_path / "out"
    args = ["--size", "32", "--workers", "0", "--dist-timeout", "4"]
    code, stdout, stderr = _finish(_torchrun(job / "g.pth", job / "in", out, *args, env=env), timeout=300)
    assert code == 0, stderr[-3000:]  # rank 1: 11 images, 11 s slower than rank 0
    assert "translated 23 images in" in stdout and len(_pngs(out)) == 23


@pytest.mark.parametrize("value", ["inf", "1e30", "0", "-5", "nan", "soon"])
def test_a_timeout_that_is_no_positive_finite_number_of_seconds_is_a_usage_error(value, capsys):
    from fastcyclegan.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["translate", "g.pth", "in", "out", "--dist-timeout", value])
    assert exit_info.value.code == 2
    assert (
        f"--dist-timeout: expected seconds, a number > 0 and at most 604800; got '{value}'" in capsys.readouterr().err
    )


_DDP_STEPS = """
import copy, json, os, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from fastcyclegan import Discriminator, FastDiscriminator, FastGenerator, Generator

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
networks = {
    "generator": (Generator(1, ngf=8), FastGenerator),
    "discriminator": (Discriminator(ndf=8), FastDiscriminator),
}
result = {}
for network, (reference, fast_class) in networks.items():
    for name, model in (("reference", copy.deepcopy(reference)), ("fast", fast_class.from_module(reference))):
        ddp = DistributedDataParallel(model)  # find_unused_parameters=False, the default
        optimizer = torch.optim.Adam(ddp.parameters(), lr=2e-4, betas=(0.5, 0.999))
        data = torch.Generator().manual_seed(100 + rank)  # each rank its own images
        losses = []
        for step in range(3):
            x, target = torch.rand(2, 3, 32, 32, generator=data) * 2 - 1, torch.rand(2, 3, 32, 32, generator=data)
            optimizer.zero_grad()
            out = ddp(x)
            loss = (out - target).abs().mean() if network == "generator" else ((out - 1) ** 2).mean()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        grads = {k: None if p.grad is None else p.grad.abs().max().item() for k, p in model.named_parameters()}
        result[f"{network} {name}"] = {"losses": losses, "grads": grads}
if rank == 0:
    print(json.dumps(result), flush=True)
dist.destroy_process_group()
# gloo's worker threads can abort the interpreter's teardown after all of the above (SIGABRT, "terminate called
# without an active exception"; 1 run in 24 with the reference modules alone, torch 2.13): the job is done
os._exit(0)
"""


def test_fast_generator_and_discriminator_train_under_ddp_like_the_reference(tmp_path):
    """DistributedDataParallel with find_unused_parameters=False (its default) needs a gradient for every
    parameter: the conv biases the fast modules leave out (the norm removes them) get exactly zero."""
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_STEPS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the biases of the convs before norms: 7 in a 1-block generator, 3 in the PatchGAN
    for network, before_norms in (("generator", 7), ("discriminator", 3)):
        reference, fast = result[f"{network} reference"], result[f"{network} fast"]
        np.testing.assert_allclose(fast["losses"], reference["losses"], rtol=1e-5, atol=1e-6, err_msg=network)
        assert all(g is not None for g in fast["grads"].values()), network
        zero = [k for k, g in fast["grads"].items() if k.endswith(".bias") and g == 0.0]
        assert len(zero) == before_norms, (network, zero)
