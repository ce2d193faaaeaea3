#!/usr/bin/env bash
# Issue #21's whole GPU job, as four device calls back to back on one warm machine (SGLang 0.5.17
# from .device; the real weights and data from `bench/decoder_assets.sh pack`). Logs under $OUT.
#
#   call 1, carry [".device", ".assets/1"]: bash bench/decoder_job.sh 1   decoder MeZO tests + benchmark
#   call 2, carry [".assets/2"]:            bash bench/decoder_job.sh 2   (carries data only)
#   call 3, carry [".assets/3"]:            bash bench/decoder_job.sh 3   SmolLM2 written; its step against
#        the reference; zero-shot = HF; learning rate chosen on k=512's dev; MeZO k=16 over 5 seeds
#   call 4, no carry:                       bash bench/decoder_job.sh 4   MeZO k=512 over 5 seeds
#
# Then, here: python bench/decoder_run_report.py DIR --bench DIR/bench_smollm2.txt --plot ...
# (DIR: the real_run files of calls 3 and 4 together). Each call stays under the 600 s limit;
# a run is saved as it ends, so a call cut short still returns the runs it finished.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-run}
mkdir -p "$OUT"
call=${1:?call number}
bash bench/decoder_assets.sh stash > /dev/null
export TVM_FFI_CACHE_DIR=/tmp/tvm-ffi-cache
# Steps per run: what five runs fit into STEP_BUDGET_S of a call, at the step time measured in
# call 3 on SmolLM2 itself (in 500s, at most 5000); lr: chosen in call 3 among MEZO_RUN_LR.
STEP_BUDGET_S=${STEP_BUDGET_S:-380}
real_run() {  # KS, then extra environment
  MEZO_RUN_DIR="$OUT/real_run" MEZO_RUN_KS=$1 MEZO_RUN_STEPS=$(cat /tmp/assets/steps) \
    bash bench/run_gpu.sh "real_run_k$1" -m mezo_full tests/mezo/test_decoder_real_run.py -rA
}
case $call in
  1)
    BENCH_DECODER=1 bash bench/run_gpu.sh decoders tests/mezo/test_decoder_mezo.py tests/mezo/test_decoder_run.py \
      tests/mezo/test_mezo_tp.py tests/mezo/test_buckets.py ;;
  2) ls /tmp/assets ;;
  3)
    export PYTHONPATH=$(bash bench/decoder_assets.sh install)${PYTHONPATH:+:$PYTHONPATH}
    source bench/device_env.sh
    model=$(python3 -c "from pytest_sglang_runner.models.smollm2 import ensure_smollm2; print(ensure_smollm2())")
    python3 bench/mezo_step.py --decoder --model $model --device cuda --dtype bfloat16 --attention-backend triton \
      --shapes 16xrt --steps 40 --warmup 20 2>&1 | grep -vE '^(WARNING|INFO|\[)' | tee "$OUT/bench_smollm2.txt"
    python3 - "$OUT/bench_smollm2.txt" "$STEP_BUDGET_S" > /tmp/assets/steps <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from decoder_run_report import bench_step_ms  # the one reader of mezo_step.py's table
ms = bench_step_ms(Path(sys.argv[1]))["runner"]
print(max(500, min(5000, int(float(sys.argv[2]) * 1000 / (5 * ms * 1.2)) // 500 * 500)))  # 20% for evaluations
PY
    echo "steps per run: $(cat /tmp/assets/steps)" | tee "$OUT/steps.txt"
    MEZO_RUN_LR=${MEZO_RUN_LR:-1e-6,3e-6,1e-5} MEZO_RUN_SELECT_K=512 real_run 16
    python3 -c "import json; print(json.load(open('$OUT/real_run/lr_selection.json'))['lr'])" > /tmp/assets/lr ;;
  4)
    export PYTHONPATH=/tmp/assets/site${PYTHONPATH:+:$PYTHONPATH}
    MEZO_RUN_LR=$(cat /tmp/assets/lr) real_run 512 ;;
esac
