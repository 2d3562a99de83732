#!/usr/bin/env bash
# The GPU check: one prepared run for a lent H100/H200 (docs/design.md, "The GPU check").
#   bash bench/gpu_check.sh            results and logs under $OUT (the device tool sets it), else bench/results/local
#   FCG_SMOKE=1 bash bench/gpu_check.sh   the same phases on tiny shapes: CI runs it on a CPU so the script cannot rot
#                                         (and it is the one run of the bench suites in `make test`)
# Phases run most important first, each with its own time limit and its own JSON, so a run cut short still
# returns what it finished; the limits add up to 7 minutes, setup (installing the project) included.
# $OUT gets 8 files at most (the device tool returns no more): five JSON, log.txt and report.md; the CSV
# tables are made afterwards (`fastcyclegan report $OUT/{generator,train,kernel}_*.json --csv ...`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/local}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/fcg-inductor}
BENCH="$PY -m pytest -q -p no:cacheprovider --benchmark-columns=median,rounds"
SMOKE=() SMOKE_B1=() SMOKE_TRAIN=() PROFILE=() AB=()
if [ "${FCG_SMOKE:-0}" = 1 ]; then  # later options win: every phase shrinks to a CPU-sized smoke run
    SMOKE=(--fcg-smoke --fcg-batches 1 --fcg-kernel-shapes 1,8,8,8 --fcg-rounds 1)
    SMOKE_B1=(--fcg-backends eager,fast --fcg-batches 2)  # the b16 phase (batch 1 here) compiled both already
    SMOKE_TRAIN=(--fcg-backends eager,fast)  # compiling a backward takes minutes on 2 cores (tests/test_fast.py has one)
    PROFILE=(--size 32 --batch 1 --ngf 8)
    AB=(--size 32 --batch 1 --ngf 8 --rounds 1 --dtype fp32)
fi

phase() {  # phase NAME SECONDS COMMAND...: run with a limit, log to $OUT/log.txt, never stop the script
    local name=$1 limit=$2 start=$SECONDS code; shift 2
    echo "=== $name (limit ${limit}s) ===" | tee -a "$OUT/log.txt"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt" | tail -n 25
    code=${PIPESTATUS[0]}
    echo "=== $name: exit $code after $((SECONDS - start))s ===" | tee -a "$OUT/log.txt"
}

# Limits: every phase's is at least 1.5x the slowest time the committed GPU logs measured for it
# (bench/results/*/log.txt, compile and a cold inductor cache included), and the limits add up to at most
# 420 s, setup and report included; tests/test_gpu_check_limits.py holds the script to both. A phase that no
# GPU run has measured yet carries an estimate, named on the next line; the next GPU log replaces it.
# estimated, not yet measured on a GPU: setup train ab_stem_head cuda_kernels report
# Left out to fit: the fp32 generator phase and the eager_cl profile (both measured twice: bench/results/h200-*).

setup() {  # device and versions; the project installed where it is not (a bare GPU machine)
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "no nvidia-smi"
    $PY -c "import fastcyclegan.kernels" 2>/dev/null || $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -n 3
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
}
export -f setup
export PY

: > "$OUT/log.txt"
phase setup 30 bash -c setup
phase generator_b16 75 $BENCH bench/test_generator_bench.py --fcg-batches 16 --fcg-dtypes bf16 \
    --fcg-backends eager,eager_cl,compiled,fast,fast_compiled,tensorrt \
    --benchmark-json="$OUT/generator_b16_bf16.json" "${SMOKE[@]}"
phase generator_b1 72 $BENCH bench/test_generator_bench.py --fcg-batches 1 --fcg-dtypes bf16 \
    --fcg-backends eager,eager_cl,fast,fast_compiled,compiled --benchmark-json="$OUT/generator_b1_bf16.json" \
    "${SMOKE[@]}" "${SMOKE_B1[@]}"
phase train 75 $BENCH bench/test_train_bench.py --fcg-mode train --fcg-batches 4 --fcg-dtypes bf16 \
    --fcg-backends eager,compiled,fast,fast_compiled --benchmark-json="$OUT/train_bf16.json" \
    "${SMOKE[@]}" "${SMOKE_TRAIN[@]}"
phase kernel 57 $BENCH bench/test_kernel_bench.py --fcg-dtypes bf16 \
    --fcg-kernel-shapes "1,256,64,64;32,256,64,64;8,64,256,256" --benchmark-json="$OUT/kernel_bf16.json" "${SMOKE[@]}"
# the tensor-core stem/head candidates of bench/fcg_variants.py against FastGenerator, interleaved
phase ab_stem_head 35 $PY -m bench.ab --size 256 --batch 16 --dtype bf16 --rounds 20 \
    --backends fast,fast:stem8,fast:head8,fast:stem8+head8 --json "$OUT/ab_stem_head.json" "${AB[@]}"
phase profile_fast 27 $PY -m bench.profile_generator --backend fast --batch 16 --dtype bf16 "${PROFILE[@]}"
# the op's CUDA tests; the compiled generator's CUDA parity is the generator phases' gate (tests marked slow)
phase cuda_kernels 35 $PY -m pytest tests -q -p no:cacheprovider -m "cuda and not slow" -rs
phase report 14 $PY -m fastcyclegan report "$OUT"/generator_*.json "$OUT"/train_*.json "$OUT"/kernel_*.json \
    --markdown "$OUT/report.md"
echo "=== comparison table ==="
cat "$OUT/report.md"
