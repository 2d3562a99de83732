"""Batch translation of an image folder with a trained generator (`fastcyclegan translate`).

Preprocessing is the public CycleGAN test script's default (load_size == crop_size, no flip): RGB, bicubic
resize to size x size, scale to [-1, 1]. Outputs are written like its `tensor2im`: (y + 1) / 2 * 255,
truncated to uint8, as PNG under the input's relative name. Images decode in DataLoader workers while the
device computes; each PNG is written to a hidden temporary name and renamed, so an interrupted run leaves
no half-written output and resumes where it stopped.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backends import DTYPES, build_backend
from .loader import load_generator

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def _pil():
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - the images extra is part of every install we test
        raise RuntimeError("translate needs Pillow: pip install 'fastcyclegan[images]'") from err
    return Image


def find_images(root: Path) -> list[Path]:
    """Every PNG/JPEG under root (recursively), in a stable order, hidden files left out."""
    found = [
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(found)


def load_image(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [-1, 1], as the public test script prepares it (any mode -> RGB, bicubic)."""
    Image = _pil()
    with Image.open(path) as img:
        img = img.convert("RGB").resize((size, size), Image.BICUBIC)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return data.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)


def to_uint8(y: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 like the public tensor2im (truncation, not rounding)."""
    return ((y.float() + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, load_image(self.paths[i], self.size), None
        except Exception as err:  # unreadable or truncated: reported and skipped, never fatal
            return i, None, f"{type(err).__name__}: {err}"


def _collate(items):
    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, e) for i, t, e in items if t is None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, failed


@dataclass
class Summary:
    images: int = 0
    seconds: float = 0.0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"translated {self.images} images in {self.seconds:.2f} s ({self.img_per_s:.1f} img/s), "
                f"skipped {len(self.skipped)}")  # fmt: skip


def _write_png(array, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    _pil().fromarray(array.numpy()).save(partial, format="PNG")
    os.replace(partial, out)  # atomic: a crash leaves no half-written PNG under the final name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def translate(
    checkpoint,
    input_dir,
    output_dir,
    *,
    size: int = 256,
    batch_size: int = 16,
    dtype: str = "auto",
    device: str = "auto",
    backend: str = "fast",
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    key: str | None = None,
) -> Summary:
    """Translate every image under input_dir into output_dir; see the module docstring."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise ValueError(f"input folder '{input_dir}' does not exist or is not a folder")
    if size < 5 or batch_size < 1:
        raise ValueError(f"--size must be >= 5 and --batch-size >= 1, got {size} and {batch_size}")
    target = resolve_device(device)
    dtype_name = ("bf16" if target.type == "cuda" else "fp32") if dtype == "auto" else dtype
    if dtype_name not in DTYPES:
        raise ValueError(f"--dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    generator = load_generator(checkpoint, key=key)  # ValueError naming the file when it does not fit
    if generator.checkpoint_key is not None:
        print(f"using the state dict under '{generator.checkpoint_key}' of '{checkpoint}'", file=sys.stderr)
    images = find_images(input_dir)
    if not images:
        raise FileNotFoundError(f"no PNG or JPEG images under '{input_dir}'")
    summary = Summary()
    todo, outputs = [], {}
    for path in images:
        out = output_dir / path.relative_to(input_dir).with_suffix(".png")
        if out in outputs.values():
            summary.skipped.append((path, f"output name {out} is taken by another input"))
        elif out.exists() and not overwrite:
            summary.skipped.append((path, "output exists (use --overwrite)"))
        else:
            outputs[len(todo)] = out
            todo.append(path)
    run = build_backend(backend, generator, device=target, dtype=DTYPES[dtype_name],
                        example=torch.zeros(batch_size, 3, size, size))  # fmt: skip
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _Images(todo, size), batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        pin_memory=target.type == "cuda",
    )  # fmt: skip
    bar = _progress(len(todo), progress)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as writer, torch.inference_mode():
        pending = []
        for indices, batch, failed in loader:
            summary.skipped += [(todo[i], f"unreadable image ({err})") for i, err in failed]
            if batch is not None:
                n = len(indices)
                if run.compile_mode and n < batch_size:  # a compiled graph keeps one batch shape
                    batch = torch.cat([batch, batch[-1:].expand(batch_size - n, -1, -1, -1)])
                x = run.prepare(batch.to(target, DTYPES[dtype_name], non_blocking=True))
                pixels = to_uint8(run.run(x)[:n])
                pending += [(writer.submit(_write_png, pixels[k], outputs[i]), i) for k, i in enumerate(indices)]
            bar.update(len(indices) + len(failed))
        for job, i in pending:
            try:
                job.result()
                summary.images += 1
            except OSError as err:
                summary.skipped.append((todo[i], f"could not write {outputs[i]} ({err})"))
    summary.seconds = time.perf_counter() - start
    bar.close()
    return summary


class _NoBar:
    """Stands in for tqdm when progress is off or tqdm is missing."""

    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="img", desc="translate", file=sys.stderr, dynamic_ncols=True)
