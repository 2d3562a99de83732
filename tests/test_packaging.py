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


def _module_graph() -> dict[str, set[str]]:
    """fastcyclegan's modules (the kernels as `kernels.*`, the harness as `harness.*`) -> the package modules
    each imports, at module level or inside a function (an import anywhere is an arrow)."""
    files = {}
    for path in (ROOT / "fastcyclegan").rglob("*.py"):
        files[".".join(path.relative_to(ROOT / "fastcyclegan").with_suffix("").parts)] = path
    for path in (ROOT / "kernels").glob("*.py"):
        files[f"kernels.{path.stem}"] = path
    names = {n.removesuffix(".__init__") if n.endswith(".__init__") else n: p for n, p in files.items()}
    names.pop("__init__", None)
    names.pop("__main__", None)
    graph = {}
    for name, path in names.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                targets = [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
                deps |= {".".join(t) for t in targets if ".".join(t) in names and ".".join(t) != name}
        graph[name] = deps
    return graph


def _floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 1 + the highest floor it imports (1 for none); an import circle fails."""
    floors, stack = {}, []

    def floor(module):
        assert module not in stack, f"import circle: {' -> '.join(stack[stack.index(module) :] + [module])}"
        if module not in floors:
            stack.append(module)
            floors[module] = 1 + max((floor(d) for d in graph[module]), default=0)
            stack.pop()
        return floors[module]

    for module in sorted(graph):
        floor(module)
    return floors


def test_package_imports_form_no_circle_and_at_most_ten_floors():
    floors = _floors(_module_graph())
    assert "harness.report" in floors and "kernels.instance_norm" in floors  # the walk sees every part
    tallest = max(floors.values())
    assert tallest <= 10, f"{tallest} import floors: {sorted(floors.items(), key=lambda kv: kv[1])[-4:]}"


def test_the_product_never_imports_the_harness():
    """Arrows point from the harness to the product only; the CLI reaches a harness module only inside the
    command that needs it (never at its import)."""
    graph = _module_graph()
    for module, deps in graph.items():
        if not module.startswith("harness") and module != "cli":
            harness = sorted(d for d in deps if d.startswith("harness"))
            assert not harness, f"{module} imports {harness}: the product stands below the benchmark harness"
    tree = ast.parse((ROOT / "fastcyclegan" / "cli.py").read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.level and n.module}
    assert not {m for m in top if m.startswith("harness")}, top


@pytest.mark.parametrize("module", ["fastcyclegan.translate", "fastcyclegan.cli", "fastcyclegan.export"])
def test_translating_loads_no_benchmark_runtime_or_report_module(module):
    probe = (
        f"import sys, {module}; from fastcyclegan import cli; cli.build_parser(); "
        "harness = ('bench', 'pandas', 'matplotlib', 'onnxruntime', 'openvino', 'pytest'); "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in harness "
        "or m.startswith('fastcyclegan.harness'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"importing {module} loaded {done.stdout.split()}"
