"""One CycleGAN training iteration as the public training code runs it (`--fcg-mode cycle`).

G_A: A -> B and G_B: B -> A, each judged by a 70x70 PatchGAN (D_A on B images, D_B on A images). One
iteration: fake_B = G_A(A), rec_A = G_B(fake_B), fake_A = G_B(B), rec_B = G_A(fake_A); the generator step
with the discriminators frozen: identity losses L1(G_A(B), B) and L1(G_B(A), A) x 0.5 x 10, LSGAN losses
MSE(D_A(fake_B), 1) and MSE(D_B(fake_A), 1), cycle losses L1(rec_A, A) and L1(rec_B, B) x 10, one Adam for
both generators (lr 2e-4, betas 0.5, 0.999); then the discriminator step on the generators' detached fakes
through an image pool of 50: 0.5 x (MSE(D(real), 1) + MSE(D(pooled fake), 0)) each, one Adam for both.
"""

from __future__ import annotations

import contextlib
import copy
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastcyclegan import Discriminator, FastDiscriminator, FastGenerator, Generator

LAMBDA_CYCLE, LAMBDA_IDENTITY, POOL_SIZE = 10.0, 0.5, 50
BACKENDS = ("eager", "compiled", "fast", "fast_compiled")


class ImagePool:
    """The public image pool: it keeps up to `size` earlier fakes; once full, each image of a query is, half
    the time, swapped for a kept one (which is returned instead). Seeded, so runs are comparable."""

    def __init__(self, size: int, seed: int):
        self.size, self.images, self.rng = size, [], random.Random(seed)

    def query(self, images: Tensor) -> Tensor:
        out = []
        for image in images.split(1):
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif self.rng.random() > 0.5:
                k = self.rng.randrange(self.size)
                out.append(self.images[k])
                self.images[k] = image
            else:
                out.append(image)
        return torch.cat(out)


@dataclass
class CycleGAN:
    """The four networks (modules, and what runs them: the module or its compiled form), two optimizers
    and the two image pools of one training run."""

    modules: dict[str, nn.Module]
    runs: dict[str, object]
    optimizer_g: torch.optim.Optimizer = field(init=False)
    optimizer_d: torch.optim.Optimizer = field(init=False)
    pool_a: ImagePool = field(default_factory=lambda: ImagePool(POOL_SIZE, 1))
    pool_b: ImagePool = field(default_factory=lambda: ImagePool(POOL_SIZE, 2))

    def __post_init__(self):
        adam = dict(lr=2e-4, betas=(0.5, 0.999))
        m = self.modules
        self.optimizer_g = torch.optim.Adam([*m["G_A"].parameters(), *m["G_B"].parameters()], **adam)
        self.optimizer_d = torch.optim.Adam([*m["D_A"].parameters(), *m["D_B"].parameters()], **adam)


def reference_networks(num_blocks: int, ngf: int, seed: int = 0) -> dict[str, nn.Module]:
    """Seeded reference G_A, G_B (the paper's generator) and D_A, D_B (the PatchGAN, ndf = ngf)."""
    torch.manual_seed(seed)
    return {
        "G_A": Generator(num_blocks, ngf=ngf),
        "G_B": Generator(num_blocks, ngf=ngf),
        "D_A": Discriminator(ndf=ngf),
        "D_B": Discriminator(ndf=ngf),
    }


def build(backend: str, networks: dict[str, nn.Module], device, dtype=torch.float32) -> CycleGAN:
    """Copies of `networks` for `backend` (eager, compiled, fast, fast_compiled) on `device` in `dtype`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown cycle backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    fast = {"G": FastGenerator, "D": FastDiscriminator}
    modules = {}
    for name, module in networks.items():
        module = copy.deepcopy(module) if not backend.startswith("fast") else fast[name[0]].from_module(module)
        modules[name] = module.to(device=device, dtype=dtype).train()
    if backend == "compiled":
        runs = {name: torch.compile(m) for name, m in modules.items()}
    elif backend == "fast_compiled":
        runs = {name: torch.compile(m, fullgraph=True) for name, m in modules.items()}
    else:
        runs = dict(modules)
    return CycleGAN(modules, runs)


def _autocast(device, dtype):
    if dtype in (torch.float32, torch.float64):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _mse(prediction: Tensor, target: float) -> Tensor:
    prediction = prediction.float() if prediction.dtype in (torch.float16, torch.bfloat16) else prediction
    return F.mse_loss(prediction, torch.full_like(prediction, target))


def _l1(a: Tensor, b: Tensor) -> Tensor:
    return F.l1_loss(a.to(b.dtype), b)


def _frozen(modules, frozen: bool) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(not frozen)


def generator_losses(gan: CycleGAN, real_a: Tensor, real_b: Tensor, autocast) -> tuple[Tensor, dict, tuple]:
    """The generators' total loss, its parts, and (fake_A, fake_B) for the discriminators."""
    run = gan.runs
    with autocast:
        fake_b = run["G_A"](real_a)
        rec_a = run["G_B"](fake_b)
        fake_a = run["G_B"](real_b)
        rec_b = run["G_A"](fake_a)
        identity = _l1(run["G_A"](real_b), real_b) + _l1(run["G_B"](real_a), real_a)
        adversarial = _mse(run["D_A"](fake_b), 1.0) + _mse(run["D_B"](fake_a), 1.0)
        cycle = _l1(rec_a, real_a) + _l1(rec_b, real_b)
    total = identity * LAMBDA_CYCLE * LAMBDA_IDENTITY + adversarial + cycle * LAMBDA_CYCLE
    return total, {"G": total, "cycle": cycle}, (fake_a, fake_b)


def discriminator_losses(gan: CycleGAN, real_a, real_b, fake_a, fake_b, autocast) -> tuple[Tensor, dict]:
    run = gan.runs
    pooled_b, pooled_a = gan.pool_a.query(fake_b.detach()), gan.pool_b.query(fake_a.detach())
    with autocast:
        loss_a = 0.5 * (_mse(run["D_A"](real_b), 1.0) + _mse(run["D_A"](pooled_b), 0.0))
        loss_b = 0.5 * (_mse(run["D_B"](real_a), 1.0) + _mse(run["D_B"](pooled_a), 0.0))
    return loss_a + loss_b, {"D_A": loss_a, "D_B": loss_b}


def iteration(gan: CycleGAN, real_a: Tensor, real_b: Tensor, dtype=torch.float32) -> dict[str, float]:
    """One training iteration (generator step, then discriminator step); returns the four losses."""
    autocast = _autocast(real_a.device, dtype)
    m = gan.modules
    _frozen([m["D_A"], m["D_B"]], True)
    gan.optimizer_g.zero_grad(set_to_none=True)
    loss_g, losses, (fake_a, fake_b) = generator_losses(gan, real_a, real_b, autocast)
    loss_g.backward()
    gan.optimizer_g.step()
    _frozen([m["D_A"], m["D_B"]], False)
    gan.optimizer_d.zero_grad(set_to_none=True)
    loss_d, d_losses = discriminator_losses(gan, real_a, real_b, fake_a, fake_b, autocast)
    loss_d.backward()
    gan.optimizer_d.step()
    return {k: float(v.detach()) for k, v in {**losses, **d_losses}.items()}


def gradients(gan: CycleGAN, real_a: Tensor, real_b: Tensor, dtype=torch.float32) -> Tensor:
    """Every parameter's gradient of one iteration, no optimizer step: the generators' from their loss (the
    discriminators frozen), the discriminators' from theirs on this batch's fakes (a fresh pool), flattened
    in the four networks' parameter order, float64."""
    autocast = _autocast(real_a.device, dtype)
    m = gan.modules
    for module in m.values():
        module.zero_grad(set_to_none=True)
    _frozen([m["D_A"], m["D_B"]], True)
    loss_g, _, (fake_a, fake_b) = generator_losses(gan, real_a, real_b, autocast)
    loss_g.backward()
    _frozen([m["D_A"], m["D_B"]], False)
    gan.pool_a, gan.pool_b = ImagePool(POOL_SIZE, 1), ImagePool(POOL_SIZE, 2)
    discriminator_losses(gan, real_a, real_b, fake_a, fake_b, autocast)[0].backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for k in m for p in m[k].parameters()]
    return torch.cat([g.detach().double().flatten() for g in grads])
