#!/usr/bin/env bash
# The GPU check: one prepared run for a lent H100/H200 (see DESIGN.md, "The GPU check").
#   bash bench/gpu_check.sh            results and logs under $OUT (the device tool sets it), else bench/results/local
# Phases run most important first, each with its own time limit and its own JSON, so a run cut short still
# returns what it finished. Designed to end in under 7 minutes on an H100, compile times included.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/local}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/fcg-inductor}
BENCH="$PY -m pytest -q -p no:cacheprovider --benchmark-columns=median,rounds"

phase() {  # phase NAME SECONDS COMMAND...: run with a limit, log under $OUT, never stop the script
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) ==="
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 25
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s ==="
}

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/device.txt"

$PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -n 3

phase cuda_tests 90 $PY -m pytest tests -q -p no:cacheprovider -k cuda -rs
phase generator_b16 150 $BENCH bench/test_generator_bench.py --fcg-batches 16 --fcg-dtypes bf16 \
    --benchmark-json="$OUT/generator_b16_bf16.json"
phase generator_fp32 40 $BENCH bench/test_generator_bench.py --fcg-batches 16 --fcg-dtypes fp32 \
    --fcg-backends eager,eager_cl,fast --benchmark-json="$OUT/generator_b16_fp32.json"
phase kernel 60 $BENCH bench/test_kernel_bench.py --fcg-dtypes bf16 \
    --fcg-kernel-shapes "1,256,64,64;32,256,64,64;8,64,256,256" --benchmark-json="$OUT/kernel_bf16.json"
phase generator_b1 80 $BENCH bench/test_generator_bench.py --fcg-batches 1 --fcg-dtypes bf16 \
    --fcg-backends eager,eager_cl,fast,fast_compiled,compiled --benchmark-json="$OUT/generator_b1_bf16.json"

$PY -m fastcyclegan report "$OUT"/generator_*.json "$OUT"/kernel_*.json \
    --csv "$OUT/report.csv" --markdown "$OUT/report.md" 2>&1 | tail -n 5
echo "=== comparison table ==="
cat "$OUT/report.md"
