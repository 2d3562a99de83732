"""fastcyclegan: a drop-in fast CycleGAN generator for PyTorch, and the benchmarks that measure it.

The public names load on first use (PEP 562), so the command line starts without importing torch first.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "Generator": "reference",
    "ResidualBlock": "reference",
    "Discriminator": "reference",
    "FastGenerator": "fast",
    "FastDiscriminator": "fast_discriminator",
    "load_generator": "loader",
    "load_discriminator": "loader",
}
__all__ = list(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastcyclegan' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
