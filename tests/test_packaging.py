"""The installed layout: the kernels ship as fastcyclegan.kernels, never as a top-level `kernels`."""

import ast
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_public_api_imports():
    import fastcyclegan.kernels  # noqa: F401

    from fastcyclegan import Discriminator, FastGenerator, Generator, ResidualBlock, load_generator  # noqa: F401


def test_top_level_kernels_is_not_installed(tmp_path):
    """Outside the source tree, `import kernels` must not find our folder (a PyPI project owns that name)."""
    probe = "import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else 'absent')"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(ROOT) not in out.stdout, f"`import kernels` resolves to this repository: {out.stdout}"
    fine = subprocess.run([sys.executable, "-c", "import fastcyclegan.kernels"], cwd=tmp_path, env=env)
    assert fine.returncode == 0


def test_wheel_installs_kernels_under_the_package(tmp_path):
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.skip("setuptools not installed: cannot build the wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("fastcyclegan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastcyclegan/kernels/instance_norm.py" in names
    assert "fastcyclegan/kernels/__init__.py" in names
    assert "fastcyclegan/csrc/instance_norm_cpu.c" in names  # norm_cpu compiles it where it is installed
    assert not any(n.startswith("kernels/") for n in names)


def _imports(path: pathlib.Path) -> set[str]:
    """Top-level names a module imports, relative imports resolved against the fastcyclegan package."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from . import y
                base = node.module or ""
                names |= {f".{base}"} if base else {f".{alias.name}" for alias in node.names}
            else:
                names.add(node.module)
    return names


def test_kernels_import_torch_and_triton_only():
    allowed = {"torch", "triton", "functools", "dataclasses", "__future__", "math"}
    own = {f".{p.stem}" for p in (ROOT / "kernels").glob("*.py")}  # the kernels' own modules
    for path in (ROOT / "kernels").glob("*.py"):
        outside = {n for n in _imports(path) if n.split(".")[0] not in allowed and n not in own}
        assert not outside, f"{path.name} imports {sorted(outside)}: kernels may import torch and triton only"


def test_package_imports_form_no_circle():
    package = ROOT / "fastcyclegan"
    modules = {p.stem for p in package.glob("*.py")} - {"__init__", "__main__"}
    graph = {
        m: {n[1:].split(".")[0] for n in _imports(package / f"{m}.py") if n.startswith(".")} & modules for m in modules
    }
    done, stack = set(), []

    def visit(module):
        assert module not in stack, f"import circle: {' -> '.join(stack[stack.index(module) :] + [module])}"
        if module in done:
            return
        stack.append(module)
        for dep in graph[module]:
            visit(dep)
        stack.pop()
        done.add(module)

    for module in sorted(modules):
        visit(module)
