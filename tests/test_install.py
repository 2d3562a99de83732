"""What `pip install fastcyclegan` brings (torch, triton, numpy) is enough for the modules and the loader; a
command whose extra is missing says which extra to install, in one line, and exits 2."""

import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# the optional packages: none of them may be needed to import and run the drop-in module
OPTIONAL = ("pandas", "pytest", "pytest_benchmark", "matplotlib", "PIL", "tqdm", "safetensors")
OPTIONAL += ("onnx", "onnxscript", "onnxruntime", "openvino")


def _without(packages, code: str) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter where importing these packages fails, as where they are not installed."""
    blocker = f"import sys\nfor name in {tuple(packages)!r}:\n    sys.modules[name] = None\n"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", blocker + code], env=env, capture_output=True, text=True, timeout=300)


def test_runtime_dependencies_are_torch_triton_and_numpy_only():
    """What pip installs for the package (its installed metadata): torch, triton and numpy, the rest in
    extras."""
    runtime, extras = [], {}
    for requirement in importlib.metadata.requires("fastcyclegan"):
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
        extra = re.search(r"extra == ['\"](\w+)['\"]", requirement)
        (extras.setdefault(extra.group(1), set()).add(name) if extra else runtime.append(name))
    assert runtime == ["torch", "triton", "numpy"]
    assert {"pandas", "pytest-benchmark", "matplotlib", "pytest"} <= extras["bench"]
    assert {"pillow", "tqdm"} <= extras["images"]
    assert {"onnx", "onnxscript", "onnxruntime"} <= extras["onnx"] and extras["openvino"] == {"openvino"}


def test_the_drop_in_module_and_the_loader_run_without_any_extra(tmp_path):
    code = f"""
import torch
import fastcyclegan
from fastcyclegan import FastGenerator, Generator, load_generator
reference = Generator(1, ngf=8).eval()
torch.save(reference.state_dict(), {str(tmp_path / "g.pth")!r})
fast = load_generator({str(tmp_path / "g.pth")!r}, fast=True).eval()
x = torch.rand(1, 3, 32, 32) * 2 - 1
with torch.inference_mode():
    assert (fast(x) - reference(x)).abs().max() < 1e-4
print("ok")
"""
    done = _without(OPTIONAL, code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize(
    "argv, extra, module",
    [
        (["report"], "bench", "pandas"),
        (["translate", "g.pth", "in", "out"], "images", "PIL"),
        (["export", "g.pth", "g.onnx"], "onnx", "onnx"),
    ],
)
def test_a_command_without_its_extra_names_it_in_one_line(argv, extra, module):
    packages = {
        "bench": ("pandas", "pytest", "pytest_benchmark", "matplotlib"),
        "images": ("PIL", "tqdm"),
        "onnx": ("onnx", "onnxscript", "onnxruntime"),
    }[extra]
    done = _without(packages, f"from fastcyclegan.cli import main\nsys.exit(main({argv!r}))")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"fastcyclegan {argv[0]} needs {module}, which is not installed: pip install 'fastcyclegan[{extra}]'"
    )
