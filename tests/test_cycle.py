"""The whole CycleGAN iteration of bench/fcg_cycle.py (the `--fcg-mode cycle` benchmark): with FastGenerator
and FastDiscriminator it follows the reference networks' trajectory."""

import pytest
import torch


@pytest.fixture(scope="module")
def cycle():
    """bench/fcg_cycle.py."""
    from bench import fcg_cycle

    return fcg_cycle


def _batches(n, size=32, batch=2):
    """n seeded (A, B) batches of images in [-1, 1]."""
    data = torch.Generator().manual_seed(7)
    return [tuple(torch.rand(batch, 3, size, size, generator=data) * 2 - 1 for _ in "AB") for _ in range(n)]


def test_twenty_iterations_follow_the_reference_to_1e_9_in_float64(cycle):
    """Four losses (generators' total, cycle, D_A, D_B) over 20 iterations: fast modules against the
    reference modules, both in float64 (the op's formula, not rounding, is what is compared)."""
    networks = cycle.reference_networks(num_blocks=1, ngf=8)
    trajectories = {}
    for backend in ("eager", "fast"):
        gan = cycle.build(backend, networks, "cpu", torch.float64)
        trajectories[backend] = [cycle.iteration(gan, a.double(), b.double(), torch.float64) for a, b in _batches(20)]
    for step, (ours, theirs) in enumerate(zip(trajectories["fast"], trajectories["eager"])):
        assert set(ours) == {"G", "cycle", "D_A", "D_B"}
        for name in ours:
            assert ours[name] == pytest.approx(theirs[name], rel=1e-9, abs=1e-12), (step, name)
    assert trajectories["eager"][0]["G"] != trajectories["eager"][-1]["G"]  # it trained


def test_the_image_pool_is_the_public_one(cycle):
    """Filling up returns the new fakes; once full, about half the queries get an older fake back."""
    pool = cycle.ImagePool(4, seed=0)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)
    later = torch.arange(10.0, 110.0).view(100, 1, 1, 1)
    out = pool.query(later)
    swapped = int((out != later).sum())
    assert 30 < swapped < 70 and set(out.flatten().tolist()) <= set(range(4)) | set(range(10, 110))
