"""glibc's heap kept for large CPU inference (fastcyclegan/heap.py): the thresholds set once, at the first kept
buffer; freed blocks then reused without faults; a process that sets malloc's thresholds itself keeps them."""

import ast
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastcyclegan import FastGenerator, heap, workspace

GLIBC = heap._mallopt() is not None


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"MALLOC_TRIM_THRESHOLD_": "131072"}, True),
        ({"MALLOC_MMAP_THRESHOLD_": "1"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, True),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0", "MALLOC_ARENA_MAX": "2"}, False),
    ],
)
def test_user_set_reads_glibcs_own_variables(environ, expected):
    assert heap.user_set(environ) is expected


def test_settle_sets_both_thresholds_unless_the_environment_sets_one(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_mallopt", lambda: lambda option, value: calls.append((option, value)) or 1)
    for name in heap.GLIBC_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(heap.OFF_VARIABLE, raising=False)
    assert heap.settle.__wrapped__() is True
    assert calls == [(-3, heap.MMAP_BYTES), (-1, heap.TRIM_BYTES)]
    calls.clear()
    for off in ("0", "off", "No"):
        monkeypatch.setenv(heap.OFF_VARIABLE, off)
        assert heap.settle.__wrapped__() is False and calls == []
    monkeypatch.setenv(heap.OFF_VARIABLE, "maybe")
    with pytest.raises(ValueError, match="FASTCYCLEGAN_SETTLE_HEAP must be .* got 'maybe'"):
        heap.settle.__wrapped__()
    monkeypatch.setenv(heap.OFF_VARIABLE, "yes")
    assert heap.settle.__wrapped__() is True
    calls.clear()
    monkeypatch.setenv("MALLOC_TOP_PAD_", "131072")
    assert heap.settle.__wrapped__() is False and calls == []


@pytest.mark.skipif(not GLIBC, reason="the C library is not glibc: nothing to settle")
def test_settled_glibc_keeps_freed_blocks_for_the_next_call():
    """In a fresh process: three 16 MiB blocks made, written and freed, three times over. glibc's defaults map
    the first three and trim the heap after the later ones (12,000 faults each time); settled, none is mapped
    and the second and third rounds reuse the heap's pages."""
    code = textwrap.dedent(
        """
        import ctypes, resource
        from fastcyclegan import heap
        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = Info
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        assert heap.settle()
        size, rounds = 16 << 20, []
        for _ in range(3):
            faults, mapped = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, libc.mallinfo2().hblkhd
            blocks = [libc.malloc(size) for _ in range(3)]
            mapped = libc.mallinfo2().hblkhd - mapped
            for p in blocks:
                libc.memset(p, 1, size)
            for p in blocks:
                libc.free(p)
            rounds.append((mapped, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
        print(rounds)
        """
    )
    env = {k: v for k, v in os.environ.items() if not heap.user_set({k: v}) and k != heap.OFF_VARIABLE}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    rounds = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert [mapped for mapped, _ in rounds] == [0, 0, 0]
    assert all(faults < 200 for _, faults in rounds[1:]), rounds


def test_large_cpu_inference_settles_the_heap_and_training_does_not(monkeypatch):
    """The first kept buffer settles the heap; a forward that keeps none (autograd) never does."""
    calls = []
    monkeypatch.setattr(heap, "settle", lambda: calls.append(1))
    monkeypatch.setattr(workspace, "KEEP_BYTES", 0)
    torch.manual_seed(0)
    model = FastGenerator(1, ngf=8)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    model(x).sum().backward()
    assert calls == []
    with torch.inference_mode():
        model.eval()(x)
    assert calls
