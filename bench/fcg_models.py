"""The seeded reference generators every benchmark case copies its weights from."""

from __future__ import annotations

import functools

import torch

from bench.fcg_matrix import blocks_for
from fastcyclegan import Generator


@functools.lru_cache(maxsize=4)
def reference(size: int, ngf: int, norm: str) -> Generator:
    """The paper's generator for `size` (6 or 9 blocks), seed 0, in eval mode; with affine norms,
    learned-looking scales in [0.7, 1.8] and shifts of std 0.3 (a trained third-party generator's range),
    not the identity that construction gives. Callers copy it (build_backend does) and never change it."""
    torch.manual_seed(0)
    model = Generator(blocks_for(size), ngf=ngf, affine=norm == "affine").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.InstanceNorm2d) and module.affine:
                module.weight.uniform_(0.7, 1.8)
                module.bias.normal_(0.0, 0.3)
    return model
