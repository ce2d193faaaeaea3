#!/usr/bin/env bash
# Issue #22's GPU columns: the coverage sweep on the lent H200, CUDA graphs off then on, each
# recorded into docs/coverage/cuda-{eager,graphs}-sglang-<version>.json (copied to $OUT/coverage
# with the full records and logs). On the H200 (2026-12-05, before the bf16 rule also ran HF in
# float32): 272 s eager, 189 s graphs; so one mode per call where a call has other work.
#   bash bench/arch_sweep_gpu.sh [eager] [graphs]   (default both; SGLang from .device, this
#                                                    call's or an earlier call's on the same machine)
# Then, here: copy $OUT/coverage/*.json into docs/coverage/, the rest into bench/results/arch_sweep_h200/,
# and python docs/gen_coverage.py > docs/coverage.md.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-run}
mkdir -p "$OUT/coverage"
source bench/device_env.sh || exit 1
export TVM_FFI_CACHE_DIR=/tmp/tvm-ffi-cache PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/machine.txt"
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(eager graphs)
for mode in "${modes[@]}"; do
  flag=$([ $mode = graphs ] && echo --graphs)
  timeout "${SWEEP_LIMIT_S:-500}" python3 bench/arch_sweep.py --device cuda $flag --record \
    --out "$OUT/sweep_cuda_$mode.json" > "$OUT/sweep_$mode.log" 2>&1
  echo "$mode: rc=$? $(tail -n 2 "$OUT/sweep_$mode.log" | head -n 1)"
done
cp docs/coverage/cuda-*.json "$OUT/coverage/"
