"""Batch translation of an image folder with a trained generator (`fastcyclegan translate`).

Preprocessing is the public CycleGAN test script's default (load_size == crop_size, no flip): RGB, bicubic
resize to size x size, scale to [-1, 1]. Outputs are written like its `tensor2im`: (y + 1) / 2 * 255,
truncated to uint8, as PNG under the input's relative name. Images decode in DataLoader workers while the
device computes and a pool of threads encodes PNGs (zlib releases the GIL); at most a bounded number of
outputs wait for the writers, so a fast GPU pushes back instead of filling memory. Each PNG is written to a
temporary name of its own and renamed, so an interrupted run or a full disk leaves no half-written output
(temporaries are removed) and a rerun resumes where it stopped. The output location is checked before the
model is loaded; an output folder inside the input folder is never read as input; the summary says which
stage bounded the throughput.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import stopping
from .atomic import atomic_file
from .devices import default_device
from .loader import load_generator
from .variants import DTYPES, build_variant

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def _pil():
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - the images extra is part of every install we test
        raise RuntimeError("translate needs Pillow: pip install 'fastcyclegan[images]'") from err
    return Image


def find_images(root: Path, exclude: Path | None = None, unlisted: list | None = None) -> list[Path]:
    """Every PNG/JPEG under root (recursively, through symlinked folders, each folder once), in a stable
    order; hidden files and anything under `exclude` (an output folder inside the input folder: its outputs
    are no inputs) left out. A folder that cannot be listed (no permission) is appended to `unlisted` as
    (folder, reason), never skipped in silence."""
    exclude = exclude.resolve() if exclude is not None else None
    found, seen = [], set()

    def refused(err: OSError) -> None:
        if unlisted is not None:
            unlisted.append((Path(err.filename), f"folder could not be listed: {err.strerror}"))

    for folder, subfolders, files in os.walk(root, onerror=refused, followlinks=True):
        here = Path(folder)
        info = here.stat()
        if (info.st_dev, info.st_ino) in seen or (exclude is not None and here.resolve().is_relative_to(exclude)):
            subfolders[:] = []  # a link back up the tree, or the output folder: not walked again
            continue
        seen.add((info.st_dev, info.st_ino))
        subfolders.sort()
        for name in files:
            p = here / name
            if p.suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".") and p.is_file():
                found.append(p)
    return sorted(found)


# the only decoders that may read an input: Pillow's Image.open tries every format it knows whatever the
# file's name (an EPS file named x.png goes to Ghostscript, a PostScript interpreter)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DECODERS = {_PNG_SIGNATURE: "PNG", b"\xff\xd8\xff": "JPEG"}


# integer modes Pillow decodes 16-bit grayscale PNGs into; its convert("L"/"RGB") clips them at 255 (white)
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _eight_bit(img):
    """img in a mode convert("L"/"RGB") reads right: 16-bit grayscale scaled to 8 bits as image programs save
    it (v / 257, rounded), so a 16-bit picture translates as its 8-bit copy does; every other mode as it is."""
    if img.mode not in _WIDE_GRAY:
        return img
    import numpy as np

    values = np.asarray(img, dtype=np.float64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"a {img.mode} image with values outside 0-65535; expected 8- or 16-bit pixels")
    return _pil().fromarray(np.rint(values / 257).astype(np.uint8), mode="L")


def load_image(path: Path, size: int, channels: int = 3) -> torch.Tensor:
    """(channels, size, size) float32 in [-1, 1], as the public test script prepares it (any mode -> RGB, or
    grayscale for a 1-channel generator, bicubic), upright as its EXIF orientation says (phone photos), 16-bit
    grayscale scaled to 8 bits first. Only the PNG and JPEG decoders read it, chosen by the file's first
    bytes, not its name."""
    Image = _pil()
    with open(path, "rb") as f:
        head = f.read(8)
    formats = [name for magic, name in _DECODERS.items() if head.startswith(magic)]
    if not formats:
        raise ValueError(f"not a PNG or JPEG file (it starts with {head[:8]!r}); only those are decoded")
    from PIL import ImageOps

    with Image.open(path, formats=formats) as img:
        img = _eight_bit(ImageOps.exif_transpose(img))
        img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, channels)
    return data.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)


def to_uint8(y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8 like the public tensor2im (truncation, not rounding)."""
    return ((y.float() + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, load_image(self.paths[i], self.size, self.channels), None
        except Exception as err:  # unreadable or truncated: reported and skipped, never fatal
            return i, None, f"{type(err).__name__}: {err}"


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """In each decoding process: Ctrl-C and SIGTERM sent to the whole process group (a terminal, GNU
    timeout, docker stop, Slurm) are the main process's to handle; it stops the workers itself, so the run
    ends as interrupted (130, one line) instead of on a worker killed under the loader. The process starts
    with both blocked (`_stop_signals_blocked`): one that came before this ran is dropped, not fatal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def _stop_signals_blocked():
    """Ctrl-C and SIGTERM held back while the decoding processes fork (they inherit the mask, so a signal to
    the process group cannot kill one before it ignores it); the main process gets a held one on leaving."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _collate(items):
    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, e) for i, t, e in items if t is None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, failed


@dataclass
class Summary:
    """What a run did: images written, inputs skipped because their output exists (a resume), inputs that
    failed (unreadable, output not written, output name taken), and where the time went: waiting for decoded
    images, computing, waiting for the PNG writers."""

    images: int = 0
    seconds: float = 0.0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    other_size: list[tuple[Path, tuple[int, int]]] = field(default_factory=list)  # skipped, made at another size
    size: int = 0  # the output size of this run (H and W)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    interrupted: bool = False  # stopped early by Ctrl-C or SIGTERM (stopping.request_stop)
    stages: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "compute": 0.0, "write": 0.0})

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def bound_by(self) -> str:
        """The stage the main loop spent longest on: decode (waiting for the loader's workers), compute
        (the model, transfers included), or write (waiting for the PNG writers to catch up)."""
        return max(self.stages, key=self.stages.get)

    def line(self) -> str:
        times = ", ".join(f"{k} {v:.2f} s" for k, v in self.stages.items())
        return (
            f"translated {self.images} images in {self.seconds:.2f} s ({self.img_per_s:.1f} img/s), "
            f"skipped {len(self.skipped)} existing{other_size_note([self])}, failed {len(self.failed)}; "
            f"bound by {self.bound_by} ({times})"
        )


def other_size_note(summaries: list[Summary]) -> str:
    """' (N of them WxH, not the SxS this run makes: --overwrite replaces them)' when skipped outputs were made
    at another size (a rerun with another --size), else ''."""
    others = [item for s in summaries for item in s.other_size]
    if not others:
        return ""
    (w, h), size = others[0][1], summaries[0].size
    return (
        f" ({len(others)} of them {w}x{h} or another size, not the {size}x{size} this run makes: "
        "--overwrite replaces them)"
    )


def _finished_png(path: Path) -> tuple[int, int] | None:
    """The (width, height) of the PNG a run wrote at `path`, or None when there is none: no file, an empty
    or truncated one, a link, anything but a PNG (all of which a resumed run writes again)."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
    except OSError:
        return None
    return png_size(path)


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header (its first 24 bytes), or None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def job_line(summaries: list[Summary]) -> str:
    """One summary of a job's processes (a torchrun job): totals, img/s over the slowest process's time,
    then each process's share and its bounding stage."""
    images = sum(s.images for s in summaries)
    seconds = max(s.seconds for s in summaries)
    rate = images / seconds if seconds > 0 else 0.0
    each = "; ".join(
        f"{rank}: {s.images} in {s.seconds:.2f} s ({s.img_per_s:.1f} img/s, bound by {s.bound_by})"
        for rank, s in enumerate(summaries)
    )
    return (
        f"translated {images} images in {seconds:.2f} s ({rate:.1f} img/s) with {len(summaries)} processes, "
        f"skipped {sum(len(s.skipped) for s in summaries)} existing{other_size_note(summaries)}, "
        f"failed {sum(len(s.failed) for s in summaries)}; per process {each}"
    )


# errors after which no further write can succeed: stop instead of failing every remaining image
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


# A temporary is ".fcgtmp-<host>-<pid>-<random>.partial" beside its output: hidden from find_images, of bounded
# length whatever the output's name (a name of 255 bytes plus a suffix would not fit), and it names the process
# that writes it, so a later run removes it only when that writer is gone: its pid dead on this host, or, for
# another host's process (a shared filesystem), the file older than _FOREIGN_TEMP_AGE_S.
_TEMP_PREFIX, _TEMP_SUFFIX = ".fcgtmp-", ".partial"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_FOREIGN_TEMP_AGE_S = 24 * 3600


def _temp_writer(file_name: str) -> tuple[str, int] | None:
    """(host, pid) of the process writing a temporary, or None for any other file."""
    if not (file_name.startswith(_TEMP_PREFIX) and file_name.endswith(_TEMP_SUFFIX)):
        return None
    host, pid, _ = (file_name[len(_TEMP_PREFIX) : -len(_TEMP_SUFFIX)].split("-", 2) + ["", ""])[:3]
    return (host, int(pid)) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _write_png(array, out: Path) -> None:
    """Writes out atomically (`atomic.atomic_file`): encoded into a temporary file of this call's own in out's
    folder (so two writers of one name never share one), renamed over out; the temporary is removed on any
    failure.
    array: (H, W, 3) RGB or (H, W, 1) grayscale uint8."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a crash leaves no half-written PNG under the final name; the PNG's mode follows the umask
    with atomic_file(out, prefix=f"{_TEMP_PREFIX}{_HOST}-{os.getpid()}-", suffix=_TEMP_SUFFIX) as f:
        pixels = array.numpy()
        _pil().fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(f, format="PNG")


def remove_stale_temporaries(outputs: list[Path]) -> int:
    """Removes, in the folders these outputs go to, the temporaries whose writer is gone (a run that was
    killed: SIGKILL, power loss); returns how many. A live writer's (another job writing into the same
    folder) is never touched."""
    removed = 0
    for folder in {out.parent for out in outputs}:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not created yet: nothing stale in it
            continue
        for entry in entries:
            writer = _temp_writer(entry.name)
            if writer is None:
                continue
            host, pid = writer
            try:
                age = time.time() - entry.stat(follow_symlinks=False).st_mtime
            except OSError:  # its writer renamed or removed it meanwhile
                continue
            if (not _alive(pid)) if host == _HOST else age > _FOREIGN_TEMP_AGE_S:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


def check_output_dir(input_dir: Path, output_dir: Path) -> None:
    """Before the model is loaded: the output folder is not the input and can be written (it, or the
    nearest folder above it that exists, since the writers create the rest); nothing is created here."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output '{output_dir}' exists and is not a folder")
    if output_dir.resolve() == input_dir.resolve():
        raise ValueError(
            f"output folder '{output_dir}' is the input folder: outputs would replace sources (--overwrite) or be "
            "read as inputs by the next run; choose another folder (one inside the input folder is fine)"
        )
    resolved = output_dir.resolve()
    pseudo = next((root for root in ("/proc", "/sys", "/dev") if resolved.is_relative_to(root)), None)
    if pseudo is not None:
        raise ValueError(f"output folder '{output_dir}' is under {pseudo}, a kernel filesystem, not storage")
    existing = next(p for p in (output_dir.absolute(), *output_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot create output folder '{output_dir}': '{existing}' is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output folder '{output_dir}' cannot be written ('{existing}' is not writable)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return default_device()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


@dataclass
class Plan:
    """A checked translation job: the model built, the inputs of this process listed, nothing written."""

    run: object  # variants.Variant
    device: torch.device
    dtype: torch.dtype
    size: int
    batch_size: int
    workers: int
    progress: bool
    todo: list[Path]
    outputs: list[Path]
    summary: Summary
    channels: int  # of the images the generator reads: 3 (RGB) or 1 (grayscale)


def plan_translation(
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
    shard: tuple[int, int] = (0, 1),
) -> Plan:
    """Everything that can fail before any work: arguments, output folder, input list, checkpoint, model.
    Raises ValueError (FileNotFoundError when there is no input). `shard` = (k, n): this process takes the
    k-th of n interleaved slices of the sorted input list (every n-th image from the k-th), so n processes
    cover each input exactly once, and a rerun with any n skips what exists."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise ValueError(f"input folder '{input_dir}' does not exist or is not a folder")
    if size < 5 or batch_size < 1:
        raise ValueError(f"--size must be >= 5 and --batch-size >= 1, got {size} and {batch_size}")
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    target = resolve_device(device)
    dtype_name = ("bf16" if target.type == "cuda" else "fp32") if dtype == "auto" else dtype
    if dtype_name not in DTYPES:
        raise ValueError(f"--dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    check_output_dir(input_dir, output_dir)
    unlisted: list[tuple[Path, str]] = []
    images = find_images(input_dir, exclude=output_dir, unlisted=unlisted)
    if not images:
        also = f" ({len(unlisted)} folders could not be listed, the first '{unlisted[0][0]}')" if unlisted else ""
        raise FileNotFoundError(f"no PNG or JPEG images under '{input_dir}'{also}")
    generator = load_generator(checkpoint, key=key)  # ValueError naming the file when it does not fit
    if generator.in_channels not in (1, 3) or generator.out_channels not in (1, 3):
        raise ValueError(
            f"checkpoint '{checkpoint}' is a generator of {generator.in_channels} input and "
            f"{generator.out_channels} output channels; translate reads and writes RGB (3) or grayscale (1) images"
        )
    if generator.checkpoint_key is not None and shard[0] == 0:
        print(f"using the state dict under '{generator.checkpoint_key}' of '{checkpoint}'", file=sys.stderr)
    out_size = 4 * -(-size // 4)  # the generator's output: H' = 4 * ceil(ceil(H / 2) / 2) = 4 * ceil(H / 4)
    if out_size != size and shard[0] == 0:
        print(
            f"note: at --size {size} the generator's outputs are {out_size}x{out_size} (4 x ceil(size / 4)); "
            f"a multiple of 4 gives outputs of the size asked for",
            file=sys.stderr,
        )
    summary = Summary(size=out_size, failed=list(unlisted) if shard[0] == 0 else [])
    todo, outputs, taken = [], [], set()
    for k, path in enumerate(images):
        out = output_dir / path.relative_to(input_dir).with_suffix(".png")
        mine = k % shard[1] == shard[0]
        if out in taken:
            if mine:
                summary.failed.append((path, f"output name {out} is taken by another input"))
        elif mine and out.is_dir():
            summary.failed.append((path, f"a folder is where its output {out} goes"))
        elif mine and not overwrite and (made := _finished_png(out)) is not None:
            summary.skipped.append((path, "output exists (use --overwrite)"))
            if made != (out_size, out_size):
                summary.other_size.append((out, made))
        elif mine:
            outputs.append(out)
            todo.append(path)
        taken.add(out)
    remove_stale_temporaries(outputs)
    # no example input: only tensorrt compiles ahead of time, and translate does not offer it (an example
    # batch at --size 2048 --batch-size 64 was 3.4 GB allocated for nothing)
    run = build_variant(backend, generator, device=target, dtype=DTYPES[dtype_name])
    # no more decoding processes than inputs (--workers 64 for 4 images started 64)
    workers = min(min(4, os.cpu_count() or 1) if workers is None else workers, len(todo))
    return Plan(
        run,
        target,
        DTYPES[dtype_name],
        size,
        batch_size,
        workers,
        progress,
        todo,
        outputs,
        summary,
        generator.in_channels,
    )


def translate(checkpoint, input_dir, output_dir, **options) -> Summary:
    """Translate every image under input_dir into output_dir (see the module docstring and
    `plan_translation` for the options); per-image failures are in the summary, not raised."""
    return run_translation(plan_translation(checkpoint, input_dir, output_dir, **options))


def run_translation(plan: Plan) -> Summary:
    """Decode, compute and write every input of the plan; returns its summary."""
    run, todo, outputs, summary, batch_size = plan.run, plan.todo, plan.outputs, plan.summary, plan.batch_size
    loader = torch.utils.data.DataLoader(
        _Images(todo, plan.size, plan.channels),
        batch_size=batch_size,
        num_workers=plan.workers,
        collate_fn=_collate,
        pin_memory=plan.device.type == "cuda",
        worker_init_fn=_leave_signals_to_the_main_process,
    )
    n_writers = max(2, min(8, os.cpu_count() or 1))
    most_waiting = max(2 * batch_size, 4 * n_writers)  # decoded outputs held for the writers, at most
    bar = _progress(len(todo), plan.progress)
    done, stopped = set(), None
    # outputs whose write finished, settled or not: a dying decoding worker's error is raised wherever the main
    # process is (its SIGCHLD handler), also between a batch's submissions and their bookkeeping
    written: set[int] = set()
    start = time.perf_counter()

    def write(pixels, i) -> None:
        _write_png(pixels, outputs[i])
        written.add(i)

    def settle(job, i) -> None:
        nonlocal stopped
        done.add(i)
        try:
            job.result()
            summary.images += 1
        except OSError as err:
            summary.failed.append((todo[i], f"not written to {outputs[i]} ({err.strerror or err})"))
            if err.errno in _DISK_ERRORS and stopped is None:
                stopped = f"{err.strerror} writing {outputs[i]}"

    with ThreadPoolExecutor(max_workers=n_writers) as writer, torch.inference_mode():
        waiting: collections.deque = collections.deque()
        with _stop_signals_blocked():
            batches = iter(loader)  # forks the decoding processes
        try:
            while stopped is None:
                if stopping.stop_requested():
                    summary.interrupted = True
                    break
                t0 = time.perf_counter()
                item = next(batches, None)
                t1 = time.perf_counter()
                summary.stages["decode"] += t1 - t0
                if item is None:
                    break
                indices, batch, failed = item
                for i, err in failed:
                    done.add(i)
                    summary.failed.append((todo[i], f"unreadable image ({err})"))
                if batch is not None:
                    n = len(indices)
                    if run.compile_mode and n < batch_size:  # a compiled graph keeps one batch shape
                        batch = torch.cat([batch, batch[-1:].expand(batch_size - n, -1, -1, -1)])
                    x = run.prepare(batch.to(plan.device, plan.dtype, non_blocking=True))
                    pixels = to_uint8(run.run(x)[:n])  # .cpu(): waits for the device
                    for k, i in enumerate(indices):
                        waiting.append((writer.submit(write, pixels[k], i), i))
                t2 = time.perf_counter()
                summary.stages["compute"] += t2 - t1
                while len(waiting) > most_waiting:  # push back: the writers catch up before more is decoded
                    settle(*waiting.popleft())
                summary.stages["write"] += time.perf_counter() - t2
                bar.update(len(indices) + len(failed))
        except RuntimeError as err:  # a decoding worker died (the OOM killer's SIGKILL): no more batches
            if "DataLoader worker" not in str(err):  # raised wherever the main process was when it noticed
                raise
            stopped = f"a decoding process died ({str(err).splitlines()[0].rstrip('. ')})"
        finally:
            del batches  # the decoding processes shut down here (done event, join), also on a KeyboardInterrupt
        t3 = time.perf_counter()
        while waiting:
            settle(*waiting.popleft())
        summary.stages["write"] += time.perf_counter() - t3
    unsettled = written - done  # written after all (the writers finished before the executor closed)
    summary.images += len(unsettled)
    done |= unsettled
    if stopped is not None:
        summary.failed += [(p, f"not attempted: stopped after {stopped}") for i, p in enumerate(todo) if i not in done]
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
