#!/usr/bin/env bash
# The CPU against what users deploy with: interleaved A/B (python -m bench.ab) of eager, torch.compile, FastGenerator
# (plain, with its norms on ATen instead of the C kernel, and compiled), ONNX Runtime and OpenVINO, fp32,
# PyTorch's thread count, at the three cases of the
# deployment issue; then the same at 128x128 beside 2 busy PyTorch processes (a shared CPU).
#
#   bash bench/cpu_peers.sh OUT_DIR      (about 12 minutes on a 2-core CPU; needs the onnx and openvino extras)
#
# Each A/B writes OUT_DIR/<case>.txt (the table) and OUT_DIR/<case>.json (every round's seconds).
set -euo pipefail
out=${1:?usage: bash bench/cpu_peers.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
backends=eager,compiled,fast,fast:aten-norms,fast_compiled,onnxruntime,openvino
run() {
    local name=$1
    shift
    "$py" -m bench.ab --device cpu --dtype fp32 --json "$out/$name.json" "$@" 2>&1 | grep -v -i warn | tee "$out/$name.txt"
}
run 128px-b1 --backends "$backends" --size 128 --batch 1 --rounds 11
run 256px-b1 --backends "$backends" --size 256 --batch 1 --rounds 7
run 256px-b4 --backends "$backends" --size 256 --batch 4 --rounds 5
run 128px-b1-busy2 --backends "$backends" --size 128 --batch 1 --rounds 11 --busy 2
