"""The C norm kernel's build and cache (fastcyclegan/norm_cpu_build.py): built once, by one process at a time;
loaded only from a private cache, through a descriptor checked for link, owner, mode and checksum; damaged,
foreign or stale entries rebuilt or refused with one warning, never a dead process; the switch, the compiler
command and the ahead-of-time build. Each subprocess case runs a fresh interpreter on its own cache folder."""

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest

from fastcyclegan import norm_cpu_build
from fastcyclegan.norm_cpu_build import KernelUnavailable, build, load


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env}, capture_output=True, text=True
    )


_USE = """
    import warnings, torch
    from fastcyclegan import norm_cpu, ops
    warnings.simplefilter("always")
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        y = ops.instance_norm(x, relu=True, pad=1)
    expected = torch.nn.functional.pad(torch.nn.functional.instance_norm(x).relu(), (1,) * 4, mode="reflect")
    torch.testing.assert_close(y, expected)
    print("kernel" if norm_cpu.library() is not None else "aten")
"""


def test_without_a_compiler_the_norms_run_on_aten_with_one_warning_naming_why(tmp_path):
    done = _run(_USE, {"CC": str(tmp_path / "no-such-cc"), "FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["aten"]
    assert done.stderr.count("RuntimeWarning") == 1 and "no C compiler" in done.stderr, done.stderr


def test_a_compile_error_is_named_and_falls_back(tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'error: this compiler is broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    done = _run(_USE, {"CC": str(broken), "FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["aten"] and "this compiler is broken" in done.stderr, done.stderr
    assert not list(tmp_path.glob("*.so")), "a failed build left a file in the cache"


def test_the_environment_switch_turns_it_off(tmp_path):
    done = _run(_USE, {"FASTCYCLEGAN_CPU_KERNEL": "0", "FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["aten"] and "RuntimeWarning" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing compiled


def test_the_build_is_cached_per_source_and_machine(cpu_kernel, tmp_path):
    first = build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build(tmp_path) == first and first.stat().st_mtime_ns == stamp  # not compiled again
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([first.name, first.with_suffix(".sha256").name, ".lock"])  # no temporary left behind
    done = _run(_USE, {"FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.split() == ["kernel"], done.stderr
    assert first.stat().st_mtime_ns == stamp


def test_a_cached_library_others_could_have_written_is_not_loaded(cpu_kernel, tmp_path):
    built = build(tmp_path)
    built.chmod(0o777)  # world-writable: anyone could have replaced it
    with pytest.raises(KernelUnavailable, match="writable by others"):
        build(tmp_path)
    done = _run(_USE, {"FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.split() == ["aten"] and "refusing to load" in done.stderr


def _counting_compiler(folder, count_file):
    """A compiler wrapper that counts its compiles (not its --version answers) and takes a second over each, so
    two processes that start together overlap."""
    wrapper = folder / "counting-cc"
    real = shutil.which("cc") or shutil.which("gcc")
    wrapper.write_text(
        f'#!/bin/sh\ncase " $* " in *" -o "*) echo compile >> "{count_file}"; sleep 1;; esac\nexec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_two_processes_on_an_empty_cache_compile_the_kernel_once(cpu_kernel, tmp_path):
    count = tmp_path / "compiles.txt"
    cache = tmp_path / "cache"
    env = {**os.environ, "CC": str(_counting_compiler(tmp_path, count)), "FASTCYCLEGAN_CACHE_DIR": str(cache)}
    code = [sys.executable, "-c", textwrap.dedent(_USE)]
    both = [subprocess.Popen(code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [p.communicate(timeout=300) for p in both]
    assert all(p.returncode == 0 for p in both), outputs
    assert [out.split() for out, _ in outputs] == [["kernel"], ["kernel"]], outputs
    assert count.read_text().split() == ["compile"]  # the second process waited on the lock and loaded the first's


def test_the_load_refuses_a_symlink_in_the_cache(cpu_kernel, tmp_path):
    built = build(tmp_path)
    elsewhere = tmp_path / "elsewhere.so"
    built.rename(elsewhere)
    built.symlink_to(elsewhere)  # the same bytes, behind a link someone could point anywhere
    with pytest.raises(KernelUnavailable, match="refusing to load"):
        load(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
def test_the_load_refuses_a_library_and_a_folder_another_user_owns(cpu_kernel, tmp_path):
    built = build(tmp_path / "cache")
    os.chown(built, 12345, 12345)
    with pytest.raises(KernelUnavailable, match="not a regular file owned by this user"):
        load(tmp_path / "cache")
    os.chown(built, os.getuid(), os.getgid())
    os.chown(tmp_path / "cache", 12345, 12345)
    with pytest.raises(KernelUnavailable, match="refusing the kernel's cache"):
        load(tmp_path / "cache")


def test_a_cache_folder_others_may_write_is_refused(cpu_kernel, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # the umask may have taken bits off
    with pytest.raises(KernelUnavailable, match="writable by others"):
        build(shared)


def test_a_truncated_library_is_rebuilt_not_loaded(cpu_kernel, tmp_path):
    """A library cut short (a full disk, a killed copy) would kill the process with SIGBUS when loaded."""
    built = build(tmp_path)
    size = built.stat().st_size
    with open(built, "r+b") as damaged:
        damaged.truncate(size // 3)
    done = _run(_USE, {"FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.split() == ["kernel"], done.stderr
    assert built.stat().st_size == size  # rebuilt whole


def _stub_library(tmp_path, source: str):
    """A library of `source` compiled under the kernel's own cache name, its checksum recorded as a build's."""
    target = norm_cpu_build._target(tmp_path, norm_cpu_build.compiler_command())
    stub = tmp_path / "stub.c"
    stub.write_text(source)
    subprocess.run([*norm_cpu_build.compiler_command(), "-shared", "-fPIC", str(stub), "-o", str(target)], check=True)
    target.chmod(0o700)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    target.with_suffix(".sha256").write_text(digest + "\n")
    return target


@pytest.mark.parametrize(
    "source, why",
    [
        ("int unrelated(void) { return 0; }\n", "ABI version is None"),  # the kernel's symbols missing
        ("int fcg_abi_version(void) { return 1; }\n", "ABI version is 1"),  # an older build's calling convention
    ],
)
def test_a_library_of_another_abi_is_refused_with_the_one_warning(cpu_kernel, tmp_path, source, why):
    _stub_library(tmp_path, source)
    with pytest.raises(KernelUnavailable, match=why):
        load(tmp_path)
    done = _run(_USE, {"FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.split() == ["aten"], done.stderr
    assert done.stderr.count("RuntimeWarning") == 1 and why in done.stderr, done.stderr


def test_stale_partial_builds_are_removed(cpu_kernel, tmp_path):
    (tmp_path / ".building-killed.so").write_bytes(b"")  # what a killed compiler leaves
    target = norm_cpu_build._target(tmp_path, norm_cpu_build.compiler_command())
    assert not target.exists()
    build(tmp_path)
    assert not list(tmp_path.glob(".building-*"))


def test_a_compiler_command_with_arguments_is_taken_as_make_takes_it(cpu_kernel, tmp_path):
    real = shutil.which("cc") or shutil.which("gcc")
    done = _run(_USE, {"CC": f"{real} -Wall", "FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.split() == ["kernel"], done.stderr


@pytest.mark.parametrize("value, expected", [("off", "aten"), ("false", "aten"), ("no", "aten"), ("on", "kernel")])
def test_the_switch_takes_the_usual_words(cpu_kernel, tmp_path, value, expected):
    done = _run(_USE, {"FASTCYCLEGAN_CPU_KERNEL": value, "FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.split() == [expected], done.stderr


def test_a_switch_value_it_does_not_know_is_refused_by_name(tmp_path, monkeypatch):
    from fastcyclegan import norm_cpu

    monkeypatch.setenv("FASTCYCLEGAN_CPU_KERNEL", "maybe")
    with pytest.raises(ValueError, match="FASTCYCLEGAN_CPU_KERNEL must be .* got 'maybe'"):
        norm_cpu.enabled_by_environment()


def test_the_warning_names_the_callers_line_not_the_projects(tmp_path):
    done = _run(_USE, {"CC": str(tmp_path / "no-such-cc"), "FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    where = next(line for line in done.stderr.splitlines() if "RuntimeWarning" in line)
    assert where.startswith("<string>:"), done.stderr  # the -c script's line, not fastcyclegan/norm_cpu.py's


def test_a_second_openmp_runtime_is_named_in_a_warning(cpu_kernel, monkeypatch):
    assert "gomp" in norm_cpu_build.openmp_runtimes()  # torch's own, read from this process's maps
    monkeypatch.setattr(norm_cpu_build, "openmp_runtimes", lambda: {"gomp", "omp"})
    with pytest.warns(RuntimeWarning, match="2 OpenMP runtimes loaded .*libgomp, libomp"):
        norm_cpu_build._warn_on_second_openmp()
    monkeypatch.setattr(norm_cpu_build, "openmp_runtimes", lambda: {"gomp"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm_cpu_build._warn_on_second_openmp()


def test_the_kernel_builds_ahead_of_time_from_the_command_line(cpu_kernel, tmp_path):
    env = {**os.environ, "FASTCYCLEGAN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "fastcyclegan", "build-kernel"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    (built,) = tmp_path.glob("instance_norm_cpu-*.so")
    assert done.stdout.strip().endswith(str(built)), done.stdout
    stamp = built.stat().st_mtime_ns
    used = _run(_USE, {"FASTCYCLEGAN_CACHE_DIR": str(tmp_path)})
    assert used.stdout.split() == ["kernel"] and built.stat().st_mtime_ns == stamp  # loaded, not compiled again
    env["CC"] = str(tmp_path / "no-such-cc")
    failed = subprocess.run(
        [sys.executable, "-m", "fastcyclegan", "build-kernel"], env=env, capture_output=True, text=True
    )
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "no C compiler" in failed.stderr, failed.stderr


def test_a_build_that_runs_long_is_announced_and_a_hung_compiler_stopped(cpu_kernel, tmp_path, monkeypatch, capfd):
    slow = tmp_path / "slow-cc"
    slow.write_text('#!/bin/sh\ncase " $* " in *" -o "*) sleep 30;; esac\nexit 0\n')
    slow.chmod(0o755)
    monkeypatch.setenv("CC", str(slow))
    monkeypatch.setattr(norm_cpu_build, "_SAY_AFTER_SECONDS", 0.2)
    monkeypatch.setattr(norm_cpu_build, "BUILD_SECONDS", 1)
    with pytest.raises(KernelUnavailable, match="did not finish instance_norm_cpu.c in 1 s"):
        build(tmp_path / "cache")
    assert "compiling the CPU norm kernel with" in capfd.readouterr().err
    assert not list((tmp_path / "cache").glob(".building-*"))  # its partial file removed
