#!/usr/bin/env bash
# The GPU runs quoted in docs/gpu.md, on SGLang 0.5.17. On the lent GPU machine (device tool),
# from the repo root, with .device carried; logs under $OUT:
#   bash bench/run_gpu.sh LABEL [PYTEST ARGS...]      (default: LABEL=suite, the whole of tests/)
#   BENCH=1 bash bench/run_gpu.sh ...                 (then the MeZO benchmark, docs/performance.md)
#   BENCH_DECODER=1 bash bench/run_gpu.sh ...         (then the decoder MeZO benchmark)
#   BENCH_LOGPROBS=1 bash bench/run_gpu.sh ...        (then the kit's prefill and decode step against bench_one_batch)
#   BENCH_GUARD=1 bash bench/run_gpu.sh ...           (then the cost of the check between tests)
# Writes $OUT/machine.txt, $OUT/pytest_gpu_LABEL.log and $OUT/junit_LABEL.xml, and the output of each
# example project that tests/test_examples.py runs (as written for a GPU) to $OUT/examples/FOLDER.log.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-run}
label=${1:-suite}
shift || true
mkdir -p "$OUT"
source bench/device_env.sh
# SGLang 0.5.17 compiles some CUDA kernels with nvcc on first use (over a minute) into TVM-FFI's
# cache under $HOME; pytester's inner runs get a fresh $HOME, so every process shares one cache.
export TVM_FFI_CACHE_DIR=${TVM_FFI_CACHE_DIR:-/tmp/tvm-ffi-cache}
export EXAMPLE_LOGS=$OUT/examples
mkdir -p "$EXAMPLE_LOGS"
# The kit, registered the way an editable install does (the image's offline setuptools may be
# older than the SPDX license string needs): a .pth to this tree and the pytest11 entry point.
if ! python3 -m pip show -q pytest-sglang-runner >/dev/null 2>&1; then
  site=$(python3 -c "import site; print(site.getsitepackages()[0])")
  info="$site/pytest_sglang_runner-0.1.0.dist-info"
  mkdir -p "$info"
  printf 'Metadata-Version: 2.1\nName: pytest-sglang-runner\nVersion: 0.1.0\n' > "$info/METADATA"
  printf '[pytest11]\nsglang_runner = pytest_sglang_runner.plugin\n' > "$info/entry_points.txt"
  : > "$info/RECORD"
  echo "$PWD" > "$site/pytest_sglang_runner_dev.pth"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sglang, torch, transformers; print('sglang', sglang.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
python3 -m pytest -p no:cacheprovider -W ignore -v -rs --durations=15 --junitxml="$OUT/junit_$label.xml" "${@:-tests}" 2>&1 \
  | tee "$OUT/pytest_gpu_$label.log"
# MeZO: fixed shapes, then fresh batches of varying lengths (bench/mezo_step.py's docstring).
if [ "${BENCH:-0}" = 1 ]; then
  for dtype in ${BENCH_DTYPES:-bfloat16 float32}; do
    python3 bench/mezo_step.py --roberta-large-random --device cuda --dtype $dtype --attention-backend triton \
      --shapes "${BENCH_SHAPES:-16x128,64x48,64x128,16xsst2,16xrt,64xsst2}" --steps 40 --warmup 40 \
      --profile "$OUT/profile_mezo_$dtype.txt" 2>&1 \
      | grep -vE '^(WARNING|INFO|\[)' | tee "$OUT/bench_mezo_$dtype.txt"
  done
fi
# Decoder MeZO (issue #21): SmolLM2-135M's shape, random weights; fixed and varying lengths,
# without and with 64 tokens of demonstrations that every prompt shares (run once per forward).
if [ "${BENCH_DECODER:-0}" = 1 ]; then
  for prefix in 0 64; do
    python3 bench/mezo_step.py --llama-random --device cuda --dtype bfloat16 --attention-backend triton \
      --shapes "${BENCH_DECODER_SHAPES:-16x128,64x48,16xrt,64xrt}" --shared-prefix $prefix --steps 40 --warmup 40 \
      --profile "$OUT/profile_decoder_prefix$prefix.txt" 2>&1 \
      | grep -vE '^(WARNING|INFO|\[)' | tee "$OUT/bench_decoder_prefix$prefix.txt"
  done
fi
# The kit's prefill and decode step, with and without top-k logprobs, against SGLang's own
# bench_one_batch on the same runner (issue #23): Llama-3.2-1B's shape, bf16, graphs on and off.
if [ "${BENCH_LOGPROBS:-0}" = 1 ]; then
  python3 bench/logprob_cost.py --device cuda --profile "$OUT/profile_logprobs.txt" 2>&1 \
    | grep -vE '^(WARNING|INFO|\[)' | tee "$OUT/bench_logprobs.txt"
  python3 bench/logprob_cost.py --device cuda --eager 2>&1 \
    | grep -vE '^(WARNING|INFO|\[)' | tee "$OUT/bench_logprobs_eager.txt"
fi
# The check between tests (issue #24): two weight fingerprints against a typical decoder test.
if [ "${BENCH_GUARD:-0}" = 1 ]; then
  for model in "" --llama-1b; do
    PYTHONPATH=.:bench python3 bench/guard_cost.py --device cuda $model 2>&1 \
      | grep -vE '^(WARNING|INFO|\[)' | tee -a "$OUT/bench_guard.txt"
  done
fi
