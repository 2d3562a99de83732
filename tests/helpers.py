"""Shared test helpers: the one tolerance table, float64 references, the parity rule applied to generators,
and the public repository's layout."""

from __future__ import annotations

import copy
import importlib.util

import torch
from torch import nn

from fastcyclegan.parity import PARITY_SEEDS, Parity, parity
from fastcyclegan.parity import rms_error as rms  # noqa: F401  (the benchmarks' parity measure, re-exported)

# (atol, rtol) against a float64 reference, for every dtype and every comparison in this suite.
TOLERANCE = {
    torch.float32: (2e-5, 1e-5),
    torch.float16: (4e-3, 2e-3),
    torch.bfloat16: (3e-2, 1e-2),
    torch.float64: (1e-10, 1e-10),
}

LOW_PRECISION = (torch.float16, torch.bfloat16)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def generator_parity(
    reference: nn.Module,
    candidate,
    dtype: torch.dtype,
    shape,
    *,
    channels_last=False,
    seeds: int = PARITY_SEEDS,
    autocast: bool = False,
    device: str = "cpu",
) -> Parity:
    """The parity rule of fastcyclegan.measure (the benchmarks' gate) for `candidate` against `reference`.

    `candidate` is a module or callable already in `dtype` (or fp32 with autocast=True: both then run under
    CPU bf16 autocast); `reference` is left untouched (copies run in float64 and in `dtype`).
    """
    ref64 = copy.deepcopy(reference).to(device, torch.float64)
    ref_low = copy.deepcopy(reference).to(device, torch.float32 if autocast else dtype)
    outs, refs, exps = [], [], []
    for seed in range(seeds):
        torch.manual_seed(1000 + seed)
        x = to_format(torch.rand(shape, device=device) * 2 - 1, channels_last)
        xin = x if autocast else x.to(dtype)
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=autocast):
            outs.append(candidate(xin))
            refs.append(ref_low(xin))
        with torch.no_grad():
            exps.append(ref64(x.double()))
    return parity(outs, refs, exps)


def reference_instance_norm(x, residual=None, relu=False, eps=1e-5, pad=0, weight=None, bias=None):
    """act(IN(x) * weight + bias) (+ residual), reflection-padded by `pad`, in float64 with a two-pass
    variance; equals F.instance_norm where that accepts x. relu: False, True (ReLU), or a number: the
    negative slope of a leaky ReLU."""
    xd = x.double()
    mean = xd.mean(dim=(2, 3), keepdim=True)
    var = ((xd - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    y = (xd - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.double()[None, :, None, None] + bias.double()[None, :, None, None]
    if relu is not True and relu:
        y = torch.nn.functional.leaky_relu(y, relu)
    elif relu:
        y = torch.relu(y)
    if residual is not None:
        y = y + residual.double()
    return torch.nn.functional.pad(y, (pad,) * 4, mode="reflect") if pad else y


def to_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class PublicResnetBlock(nn.Module):
    """The public repository's ResnetBlock, rewritten here from its definition (reflect / replicate padding)."""

    def __init__(self, dim, norm_layer, use_dropout, padding_type="reflect"):
        super().__init__()
        pad = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d}[padding_type]
        layers = [pad(1), nn.Conv2d(dim, dim, 3, bias=True), norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [pad(1), nn.Conv2d(dim, dim, 3, bias=True), norm_layer(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class PublicResnetGenerator(nn.Module):
    """The public repository's ResnetGenerator with its options, built independently of fastcyclegan."""

    def __init__(
        self, input_nc=3, output_nc=3, ngf=64, n_blocks=9, use_dropout=False, norm="instance", padding_type="reflect"
    ):
        super().__init__()
        if norm == "instance":

            def norm_layer(c):
                return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
        else:
            norm_layer = nn.BatchNorm2d
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0), norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            model += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                norm_layer(ngf * mult * 2),
                nn.ReLU(True),
            ]
        for _ in range(n_blocks):
            model += [PublicResnetBlock(ngf * 4, norm_layer, use_dropout, padding_type)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                norm_layer(ngf * mult // 2),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class PublicNLayerDiscriminator(nn.Module):
    """The public repository's NLayerDiscriminator (n_layers, norm_layer), rewritten here from its definition:
    with instance norm its convs keep their bias (use_bias = norm is InstanceNorm2d)."""

    def __init__(self, input_nc=3, ndf=64, n_layers=3, norm="instance"):
        super().__init__()
        if norm == "instance":

            def norm_layer(c):
                return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)

            use_bias = True
        else:
            norm_layer, use_bias = nn.BatchNorm2d, False
        sequence = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            sequence += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, 4, stride=2, padding=1, bias=use_bias),
                norm_layer(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        sequence += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, 4, stride=1, padding=1, bias=use_bias),
            norm_layer(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, 4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*sequence)

    def forward(self, x):
        return self.model(x)


def learned_affine(module: nn.Module, seed: int = 0) -> nn.Module:
    """Affine norm parameters far from identity, as a trained model has them (scale 0.7..1.8, |shift| <= 0.9)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.InstanceNorm2d) and m.affine:
                m.weight.copy_(0.7 + 1.1 * torch.rand(m.num_features, generator=g))
                m.bias.copy_(1.8 * torch.rand(m.num_features, generator=g) - 0.9)
    return module


class ThirdPartyBlock(nn.Module):
    """A residual block as a PyPI CycleGAN package writes it: `block`, affine norms."""

    def __init__(self, channels):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x):
        return x + self.block(x)


class ThirdPartyGenerator(nn.Module):
    """9 blocks (by default), InstanceNorm2d(affine=True), attribute names of its own."""

    def __init__(self, num_blocks=9, ngf=8):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf, affine=True), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(ngf * mult * 2, affine=True),
                nn.ReLU(True),
            ]
        layers += [ThirdPartyBlock(ngf * 4) for _ in range(num_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(ngf * mult // 2, affine=True),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def hide_module(monkeypatch, name: str) -> None:
    """importlib.util.find_spec(name) answers None for the rest of the test, as where `name` is not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a))
