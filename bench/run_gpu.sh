#!/usr/bin/env bash
# The GPU run quoted in docs/gpu.md and docs/mezo.md: the whole suite on SGLang 0.5.17.
# On the lent GPU machine (device tool), from the repo root, with .device carried:
#   bash bench/run_gpu.sh     (logs under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-run}
mkdir -p "$OUT"
source .device/env.sh
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sglang, torch, transformers; print('sglang', sglang.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
python3 -m pytest -p no:cacheprovider -W ignore -q -rs --durations=15 --junitxml="$OUT/junit.xml" tests 2>&1 | tee "$OUT/pytest_gpu.log"
for dtype in bfloat16 float32; do
  python3 bench/mezo_step.py --roberta-large-random --device cuda --dtype $dtype --batch 64 --seq 128 2>&1 \
    | grep -E '^(\||model=)' | tee "$OUT/bench_mezo_$dtype.txt"
done
