"""Building and loading the C norm kernel (csrc/instance_norm_cpu.c) of `fastcyclegan.norm_cpu`.

Compiled with the host's C compiler (`$CC`, a command with arguments as make takes it, else `cc`; `-O3
-march=native -fno-trapping-math -fopenmp`) at the first CPU norm, or ahead of time by `fastcyclegan
build-kernel` (images, read-only deployments), and cached per source, flags, compiler and CPU in
`$FASTCYCLEGAN_CACHE_DIR` (default `$XDG_CACHE_HOME/fastcyclegan`, else `~/.cache/fastcyclegan`).

Built once: processes that start together on an empty cache (DDP ranks, torchrun, parallel pytest) take a
file lock, so one compiles and the others load its result. Loaded safely: the cache folder must be this
user's and writable by nobody else; the library is opened without following links, checked (a regular
file, this user's, not writable by others, the checksum recorded at its build) through that open file, and
loaded from it, so what was checked is what runs. A damaged entry (truncated, another file under its name) is
rebuilt; a library that answers another ABI version, or none, is refused. A second OpenMP runtime in the
process (`CC=clang`'s libomp beside torch's libgomp) is named in a warning: two thread pools compete.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "instance_norm_cpu.c"
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC", "-std=c11")
ABI_VERSION = 2  # fcg_abi_version() of the source: the arguments norm_cpu passes
BUILD_SECONDS = 120  # gcc takes about a second; a compiler past this is stopped and named
_SAY_AFTER_SECONDS = 5.0  # a build still running then is announced on stderr, once


class KernelUnavailable(RuntimeError):
    """The C kernel could not be built or loaded; the message says why."""


def cache_dir() -> Path:
    if os.environ.get("FASTCYCLEGAN_CACHE_DIR"):
        return Path(os.environ["FASTCYCLEGAN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastcyclegan"


def compiler_command() -> list[str]:
    """$CC (or cc) split as a shell would (`ccache gcc`, `gcc -O0`); KernelUnavailable when it is not on PATH."""
    given = os.environ.get("CC") or "cc"
    try:
        command = shlex.split(given)
    except ValueError as err:
        raise KernelUnavailable(f"CC={given!r} is no command ({err})") from err
    if not command or shutil.which(command[0]) is None:
        raise KernelUnavailable(f"no C compiler: {given!r} is not on PATH (set CC to one)")
    return command


def _cpu_flags() -> str:
    """The CPU's feature flags (`-march=native` compiles for them), so a cache shared by different machines
    keeps one build per kind of CPU."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith(("flags", "Features")):
                return line
    return platform.processor()


def _target(directory: Path, command: list[str]) -> Path:
    try:
        version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelUnavailable(f"the C compiler {shlex.join(command)!r} does not run: {err}") from err
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS), shlex.join(command), version, platform.machine(), _cpu_flags()):
        key.update(part if isinstance(part, bytes) else part.encode())
    return directory / f"instance_norm_cpu-{key.hexdigest()[:16]}.so"


def _owned_privately(info: os.stat_result) -> bool:
    return not hasattr(os, "getuid") or (info.st_uid == os.getuid() and not info.st_mode & 0o022)


def _private_dir(directory: Path) -> None:
    """Creates the cache folder (0700) where missing; refuses one that is a link, another user's, or writable
    by others: whoever can write it could put their code under the library's predictable name."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(directory)
    except OSError as err:
        raise KernelUnavailable(f"cannot use the kernel's cache {directory}: {err}") from err
    if not stat.S_ISDIR(info.st_mode) or not _owned_privately(info):
        raise KernelUnavailable(
            f"refusing the kernel's cache {directory}: it is a link, not owned by this user, or writable by others "
            "(point FASTCYCLEGAN_CACHE_DIR at a private folder)"
        )


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on the cache folder's lock file for the block: one process builds, the others wait."""
    import fcntl

    try:
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise KernelUnavailable(f"cannot lock the kernel's cache {directory}: {err}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _digest_path(target: Path) -> Path:
    return target.with_suffix(".sha256")


def _open_trusted(path: Path) -> int:
    """A read-only descriptor of path, opened without following a link; KernelUnavailable unless it is a regular
    file this user owns that nobody else may write. The caller closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise KernelUnavailable(f"refusing to load {path}: {err.strerror} (a link, or unreadable)") from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or not _owned_privately(info):
        os.close(fd)
        raise KernelUnavailable(
            f"refusing to load {path}: it is not a regular file owned by this user, or is writable by others "
            "(delete it, or point FASTCYCLEGAN_CACHE_DIR at a private folder)"
        )
    return fd


def _digest_of(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    digest = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _recorded_digest(target: Path) -> str | None:
    with contextlib.suppress(OSError), open(_digest_path(target)) as recorded:
        return recorded.read().strip()
    return None


def _intact(target: Path) -> bool:
    """Whether target exists, is trusted, and holds what its build recorded."""
    if not os.path.lexists(target):
        return False
    fd = _open_trusted(target)
    try:
        return _digest_of(fd) == _recorded_digest(target)
    finally:
        os.close(fd)


def _compile(command: list[str], directory: Path, target: Path) -> None:
    """Compiles SOURCE to target (temporary name, then rename; its checksum recorded first)."""
    for stale in directory.glob(".building-*"):  # a killed build's partial files: the lock is ours
        stale.unlink(missing_ok=True)
    handle, partial = tempfile.mkstemp(dir=directory, prefix=".building-", suffix=".so")
    os.close(handle)
    said = threading.Timer(_SAY_AFTER_SECONDS, _say_building, (command,))
    said.daemon = True
    said.start()
    try:
        try:
            done = subprocess.run(
                [*command, *FLAGS, str(SOURCE), "-o", partial], capture_output=True, text=True, timeout=BUILD_SECONDS
            )
        except subprocess.TimeoutExpired as err:
            raise KernelUnavailable(f"{shlex.join(command)} did not finish {SOURCE.name} in {BUILD_SECONDS} s") from err
        except OSError as err:
            raise KernelUnavailable(f"{shlex.join(command)} did not run on {SOURCE.name}: {err}") from err
        if done.returncode:
            lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
            raise KernelUnavailable(f"{shlex.join(command)} failed on {SOURCE.name}: {lines[-1]}")
        os.chmod(partial, 0o700)
        with open(partial, "rb") as built:
            digest = hashlib.sha256(built.read()).hexdigest()
        digest_partial = Path(partial).with_suffix(".sha256")
        digest_partial.write_text(digest + "\n")
        os.replace(digest_partial, _digest_path(target))
        os.replace(partial, target)
    finally:
        said.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def _say_building(command: list[str]) -> None:
    print(
        f"fastcyclegan: compiling the CPU norm kernel with {shlex.join(command)} (once per machine; stopped after "
        f"{BUILD_SECONDS} s)...",
        file=sys.stderr,
        flush=True,
    )


def build(directory: Path | None = None) -> Path:
    """The compiled kernel's path in `directory` (default `cache_dir()`), compiled there unless an intact build
    is there already; one process at a time (a file lock). Raises KernelUnavailable naming the reason."""
    command = compiler_command()
    directory = cache_dir() if directory is None else Path(directory)
    _private_dir(directory)
    target = _target(directory, command)
    with _locked(directory):
        if not _intact(target):
            target.unlink(missing_ok=True)
            try:
                _compile(command, directory, target)
            except OSError as err:
                raise KernelUnavailable(f"cannot write the kernel's cache {directory}: {err}") from err
    return target


def load(directory: Path | None = None) -> ctypes.CDLL:
    """The kernel, built where needed and loaded from a descriptor checked as `_open_trusted` says (the
    checksum of its build included); KernelUnavailable naming the reason otherwise."""
    target = build(directory)
    fd = _open_trusted(target)
    try:
        if _digest_of(fd) != _recorded_digest(target):
            raise KernelUnavailable(f"refusing to load {target}: it changed after its build was checked")
        try:
            lib = ctypes.CDLL(_descriptor_path(fd) if os.path.isdir("/proc/self/fd") else str(target))
        except OSError as err:
            raise KernelUnavailable(f"cannot load {target}: {err}") from err
    finally:
        os.close(fd)
    try:
        version = lib.fcg_abi_version()
    except AttributeError:
        version = None
    if version != ABI_VERSION:
        raise KernelUnavailable(f"refusing {target}: its ABI version is {version}, this package's {ABI_VERSION}")
    _warn_on_second_openmp()
    return lib


_loads = itertools.count(1)


def _descriptor_path(fd: int) -> str:
    """A path that opens fd's file, unique in this process: dlopen hands back a library already loaded under
    the same name before it opens anything, and descriptor numbers are reused (extra slashes name the same
    file)."""
    return "/proc/self/fd" + "/" * next(_loads) + str(fd)


_OPENMP = re.compile(r"/lib(gomp|iomp5|omp)(?:-[0-9a-f]+)?\.so")


def openmp_runtimes() -> set[str]:
    """The OpenMP runtimes loaded in this process, by name (gomp, iomp5, omp), from /proc/self/maps."""
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        return {m.group(1) for line in maps if (m := _OPENMP.search(line))}
    return set()


def _warn_on_second_openmp() -> None:
    found = openmp_runtimes()
    if len(found) > 1:
        warnings.warn(
            f"fastcyclegan: this process has {len(found)} OpenMP runtimes loaded (lib{', lib'.join(sorted(found))}): "
            "their thread pools compete for the cores; build the CPU norm kernel with the compiler whose runtime "
            "torch uses (CC=gcc for torch's libgomp)",
            RuntimeWarning,
            stacklevel=outside_stacklevel(),
        )


def outside_stacklevel() -> int:
    """The stacklevel for warnings.warn that names the first frame outside this package and torch: the user's
    line that called the model, not a line of the project's source."""
    import torch

    inside = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(tuple(d + os.sep for d in inside)):
        frame, level = frame.f_back, level + 1
    return level
