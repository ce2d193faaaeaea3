"""`pytest -n 2` with TP=1 on a two-GPU machine against one worker: where each worker's runner
lives, and how much faster a suite of forward tests runs.

Writes a small project (N tests, each F forwards of a batch through `sglang_forward`, and a
record of the worker, `torch.cuda.current_device()`, the runner's device and `nvidia-smi`'s
memory per GPU), runs it with one worker (`-n 1`, same scheduling) and with `-n 2`, and prints
a table: wall time of each run, the speedup, and which GPU each worker used. Target: >= 1.8x.

    python bench/xdist_gpus.py [--tests 40] [--forwards 400] [--model embedded-llama] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TEST_FILE = """
import json, os, subprocess, time

import pytest
import torch

PROMPTS = ["the film was", "the music and the film were very", "It", "this story is really good ! the acting"]


def nvidia_smi_memory():
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    return {{int(i): int(m) for i, m in (line.split(",") for line in out.strip().splitlines())}}


@pytest.mark.parametrize("i", range({tests}))
def test_forwards(sglang_live, i):
    started = time.time()
    for _ in range({forwards}):
        assert sglang_live.forward.logits(PROMPTS).isfinite().all()
    with open(os.environ["XDIST_GPU_RECORD"], "a") as f:
        f.write(json.dumps({{
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "current_device": torch.cuda.current_device(),
            "runner_device": str(next(sglang_live.model_runner.model.parameters()).device),
            "gpu_ids": sglang_live.gpu_ids,
            "memory_used_mib": nvidia_smi_memory(),
            "started": started, "ended": time.time(),
        }}) + "\\n")
"""


def run(project: Path, workers: int, model: str, record: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-W",
            "ignore",
            "-n",
            str(workers),
            "--sglang-device=cuda",
            f"--sglang-model={model}",
            "--sglang-dtype=bfloat16",
        ],
        cwd=project,
        env={**__import__("os").environ, "XDIST_GPU_RECORD": str(record)},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    print(result.stdout[-1500:], file=sys.stderr)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"-n {workers} failed with exit code {result.returncode}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=40)
    parser.add_argument("--forwards", type=int, default=400)
    parser.add_argument("--model", default="embedded-llama")
    parser.add_argument("--out", type=Path, default=None, help="where to write the per-test records (JSON lines)")
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="xdist-gpus-"))
    (project / "test_forwards.py").write_text(TEST_FILE.format(tests=args.tests, forwards=args.forwards))
    out = args.out or project
    out.mkdir(parents=True, exist_ok=True)
    seconds, records = {}, {}
    for workers in (1, 2):
        record = out / f"xdist_gpus_n{workers}.jsonl"
        record.unlink(missing_ok=True)
        seconds[workers] = run(project, workers, args.model, record)
        records[workers] = [json.loads(line) for line in record.read_text().splitlines()]

    print(f"{args.tests} tests x {args.forwards} forwards of a 4-prompt batch, {args.model}, bf16, TP=1")
    print(
        "| run | wall s | test phase s (first test start to last test end) | tests per worker | worker -> current_device / runner device / gpu_ids |"
    )
    print("|---|---|---|---|---|")
    phase = {}
    for workers in (1, 2):
        per_worker = defaultdict(list)
        for entry in records[workers]:
            per_worker[entry["worker"]].append(entry)
        counts = ", ".join(f"{w}: {len(v)}" for w, v in sorted(per_worker.items()))
        placement = "; ".join(
            f"{w} -> {sorted({e['current_device'] for e in v})} / {sorted({e['runner_device'] for e in v})} / {v[0]['gpu_ids']}"
            for w, v in sorted(per_worker.items())
        )
        phase[workers] = max(e["ended"] for e in records[workers]) - min(e["started"] for e in records[workers])
        print(f"| -n {workers} | {seconds[workers]:.1f} | {phase[workers]:.1f} | {counts} | {placement} |")
    for what, times in (("wall", seconds), ("test phase", phase)):
        speedup = times[1] / times[2]
        print(
            f"{what} speedup -n 2 over -n 1: {speedup:.2f}x (target >= 1.8x: {'met' if speedup >= 1.8 else f'missed by {1.8 - speedup:.2f}'})"
        )
    print(
        f"fixed cost per run outside the test phase (start-up, SGLang import, build, teardown): -n 1 {seconds[1] - phase[1]:.1f} s, -n 2 {seconds[2] - phase[2]:.1f} s"
    )
    peak = max((e["memory_used_mib"] for e in records[2]), key=lambda m: min(m.values()))
    print(f"nvidia-smi memory used during -n 2 (MiB per GPU, the sample with both busiest): {peak}")


if __name__ == "__main__":
    main()
