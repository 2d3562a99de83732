"""A stop asked for by a signal: Ctrl-C or SIGTERM ends a translate run after the batch in hand, cleanly.

This module imports nothing heavy, so the command line installs the handler before torch loads: a SIGTERM
that comes while the program starts (GNU timeout, docker stop) is a stop like any other.
"""

from __future__ import annotations

import threading

_STOP = threading.Event()


def request_stop(signum=None, frame=None) -> None:
    """The signal handler (SIGINT, SIGTERM): the run stops after the batch in hand and shuts its decoding
    processes down; a second signal interrupts at once (KeyboardInterrupt)."""
    if _STOP.is_set():
        raise KeyboardInterrupt
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()
