"""fastcyclegan: a drop-in fast CycleGAN generator for PyTorch, and the benchmarks that measure it."""

from .fast import FastGenerator
from .loader import load_generator
from .reference import Discriminator, Generator, ResidualBlock

__all__ = ["Generator", "ResidualBlock", "Discriminator", "FastGenerator", "load_generator"]
__version__ = "0.1.0"
