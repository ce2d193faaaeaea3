#!/usr/bin/env bash
# Issues #23's and #24's GPU checks, as two device calls (each under the 600 s limit), carry
# [".device"] (SGLang 0.5.17); logs and tables under $OUT. Not run yet: no device was lent the
# session that wrote it.
#
#   call 1: bash bench/authors_job.sh 1   the test authors' tools on CUDA, graphs on and off: sampling
#           (SGLang's FlashInfer/pytorch sampler against the chi-square check), two configs in one
#           test, batch invariance (and SGLang's deterministic mode), golden files with the card's
#           name in the key, every position's logits, the check between tests; then the kit's
#           prefill and decode against bench_one_batch (BENCH_LOGPROBS) and the check's cost (BENCH_GUARD)
#   call 2: bash bench/authors_job.sh 2   the Engine and server fixtures on the H200 (bf16; issue
#           #24), with the runner, the Engine and the server on one GPU, and the TP fault tests
#
# Then, here: copy $OUT's tables into docs/performance.md ("Logprobs, prefill and decode against
# bench_one_batch", "The check between tests") and bench/results/, with the card from machine.txt.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-run}
mkdir -p "$OUT"
call=${1:?call number}
export TVM_FFI_CACHE_DIR=/tmp/tvm-ffi-cache
case $call in
  1)
    BENCH_LOGPROBS=1 BENCH_GUARD=1 bash bench/run_gpu.sh authors \
      tests/test_sampling.py tests/test_ab.py tests/test_invariance.py tests/test_snapshots.py \
      tests/test_guard.py tests/test_decoder.py ;;
  2)
    bash bench/run_gpu.sh services tests/test_services.py tests/test_tp.py tests/test_timeouts.py ;;
esac
