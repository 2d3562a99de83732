"""Files written whole or not at all: the content goes into a temporary file created exclusively beside the
target (mkstemp: O_EXCL, never through a planted link), which takes the mode any file the user writes gets
(0666 less the umask) and is renamed over the target once complete; on any failure it is removed."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@functools.cache
def file_mode() -> int:
    """0666 less this process's umask: the mode open() gives a new file (mkstemp's is 0600)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read it by setting it, once, and put it back
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_file(target: Path, prefix: str, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file to write `target`'s content into; `target` is replaced by it when the block ends without
    an exception, and nothing changes otherwise. The temporary is named prefix + random + suffix."""
    target = Path(target)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
