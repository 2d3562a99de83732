#!/usr/bin/env bash
# The CPU against what users deploy with: interleaved A/B (python -m bench.ab) of eager, torch.compile (plain
# and with inductor's freezing), FastGenerator (plain, with its norms on ATen instead of the C kernel, and
# compiled), ONNX Runtime and OpenVINO, PyTorch's thread count, at 128x128 batch 1 and 256x256 batches 1 and
# 4, in fp32 and (where the CPU runs it natively) bf16; then fp32 at 128x128 beside 2 busy PyTorch processes,
# with the default OpenMP settings and with the one `fastcyclegan translate` uses.
#
#   bash bench/cpu_peers.sh OUT_DIR            (about 25 minutes on a 2-core CPU; the onnx and openvino extras)
#   DTYPES=fp32 bash bench/cpu_peers.sh OUT_DIR   one dtype only
#
# Each A/B writes OUT_DIR/<dtype>-<case>.txt (the table) and OUT_DIR/<dtype>-<case>.json (every round's seconds).
set -euo pipefail
out=${1:?usage: bash bench/cpu_peers.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
declare -A backends=(
    [fp32]=eager,compiled,compiled_frozen,fast,fast:aten-norms,fast_compiled,onnxruntime,openvino
    [bf16]=eager,compiled,compiled_frozen,fast,fast_compiled,openvino  # ONNX Runtime's CPU provider: no bf16
)
run() {
    local dtype=$1 name=$2
    shift 2
    "$py" -m bench.ab --device cpu --dtype "$dtype" --backends "${backends[$dtype]}" --json "$out/$dtype-$name.json" \
        "$@" 2>&1 | grep -v -i warn | tee "$out/$dtype-$name.txt"
}
for dtype in ${DTYPES:-fp32 bf16}; do
    run "$dtype" 128px-b1 --size 128 --batch 1 --rounds 11
    run "$dtype" 256px-b1 --size 256 --batch 1 --rounds 7
    run "$dtype" 256px-b4 --size 256 --batch 4 --rounds 5
done
run fp32 128px-b1-busy2 --size 128 --batch 1 --rounds 11 --busy 2
# the same load with the OpenMP setting `fastcyclegan translate` runs with (fastcyclegan/cli.py: idle threads
# sleep after 2,000 spins); the busy processes keep the defaults (bench/fcg_busy.py)
GOMP_SPINCOUNT=2000 run fp32 128px-b1-busy2-spin2000 --size 128 --batch 1 --rounds 11 --busy 2
