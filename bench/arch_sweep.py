"""Coverage sweep: every architecture SGLang and transformers share, as a tiny checkpoint
(`models.tiny`) on the runner, compared with HF by the kit's rules (`coverage.check_architecture`).

    python bench/arch_sweep.py [--only A,B] [--record]                   # CPU, float32
    python bench/arch_sweep.py --device cuda [--graphs] [--record]       # GPU, bfloat16, graphs on/off

Each architecture ends as ``pass`` or as a named failure (stage: checkpoint, build, prefill,
decode; the reason `coverage.reason_of` gives). ``--record`` writes the outcomes where
tests/test_coverage.py and docs/gen_coverage.py read them (``docs/coverage/<key>-sglang-<version>.json``,
key ``cpu``, ``cuda-graphs`` or ``cuda-eager``); ``--out`` keeps the full records (timings,
margins, differences, SGLang's frames).

One worker process builds runner after runner (SGLang is imported once; the factory's teardown
cleans up a failed build); the parent starts a new worker for the remaining architectures when
one dies or goes silent past --stall seconds, recording the architecture it was on as crashed.
bench/results/arch_sweep_cpu/NOTES.md has the survey's findings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def mode(args) -> tuple[str, str, dict]:
    """(record key, dtype, runner overrides) for the device and graphs asked for."""
    if args.device == "cpu":
        return "cpu", "float32", dict(device="cpu")
    # On the GPU both sides compute the LM head in float32 (tests/test_decoder.py says why).
    overrides = dict(device="cuda", enable_fp32_lm_head=True, disable_cuda_graph=not args.graphs)
    return ("cuda-graphs" if args.graphs else "cuda-eager"), "bfloat16", overrides


def worker(args, architectures: list[str]) -> None:
    """Sweep ``architectures`` in this process; ``["@all"]``: list them first (SGLang is imported
    here anyway: a separate listing process would import it a second time)."""
    import torch

    from pytest_sglang_runner import coverage
    from pytest_sglang_runner.options import RunnerSpec
    from pytest_sglang_runner.runner import RunnerFactory

    torch.set_num_threads(1)
    if architectures == ["@all"]:
        from pytest_sglang_runner.models.tiny import shared_architectures

        architectures = [a for a in shared_architectures() if not args.only or a in args.only.split(",")]
        with args.log.open("a") as sink:
            sink.write(json.dumps(dict(todo=architectures)) + "\n")
    _, dtype, overrides = mode(args)
    factory = RunnerFactory(
        default_spec=RunnerSpec(model="embedded-llama", device=args.device, dtype=dtype),
        cache_root=args.cache,
        timeout_s=240.0,
    )
    with args.log.open("a") as sink:
        for architecture in architectures:
            sink.write(json.dumps(dict(started=architecture)) + "\n")
            sink.flush()
            record = coverage.check_architecture(factory, architecture, dtype=dtype, **overrides)
            try:
                factory.close()
            except Exception as exc:
                record["teardown_error"] = coverage.first_line(exc)
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            print(architecture, record["status"], record.get("reason", ""), record["seconds"], flush=True)


def sweep(args) -> list[dict]:
    """Workers until every architecture has a record; one that crashes or stalls is recorded so."""
    args.log.write_text("")
    records: dict[str, dict] = {}
    todo, seen = None, 0
    while todo is None or len(records) < len(todo):
        remaining = ["@all"] if todo is None else [a for a in todo if a not in records]
        command = [sys.executable, __file__, "--worker", ",".join(remaining), "--log", str(args.log)]
        command += ["--cache", str(args.cache), "--only", args.only, "--device", args.device]
        command += ["--graphs"] if args.graphs else []
        proc = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
        current, last = None, time.time()
        while True:
            lines = args.log.read_text().splitlines()
            for line in lines[seen:]:
                entry, last = json.loads(line), time.time()
                if "todo" in entry:
                    todo = entry["todo"]
                elif "started" in entry:
                    current = entry["started"]
                else:
                    records[entry["architecture"]], current = entry, None
            seen = len(lines)
            if proc.poll() is not None:
                break
            if current is not None and time.time() - last > args.stall:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.5)
        if todo is None:
            raise SystemExit(f"the first worker exited ({proc.returncode}) before listing the architectures")
        if current is not None and current not in records:
            how = (
                f"no result within {args.stall:.0f} s"
                if proc.returncode in (0, None, -9)
                else f"exit code {proc.returncode}"
            )
            records[current] = dict(architecture=current, status="fail crash", reason=f"the sweep's worker died: {how}")
    return [records[a] for a in todo]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--graphs", action="store_true", help="cuda: CUDA graphs on (default off, the kit's default)")
    parser.add_argument("--only", default="", help="comma-separated architectures (default: every shared one)")
    parser.add_argument("--record", action="store_true", help="write docs/coverage/<key>-sglang-<version>.json")
    parser.add_argument("--out", type=Path, default=None, help="also write the full records here (JSON)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "psr-arch-sweep")
    parser.add_argument("--stall", type=float, default=300.0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "psr-arch-sweep.jsonl")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args, args.worker.split(","))
        return
    started = time.time()
    records = sweep(args)
    from importlib.metadata import version

    from pytest_sglang_runner import coverage

    versions = {name: version(name) for name in ("sglang", "transformers", "torch")}
    passed = sum(r["status"] == "pass" for r in records)
    print(
        f"{passed}/{len(records)} pass in {time.time() - started:.0f} s ({', '.join(f'{k} {v}' for k, v in versions.items())})"
    )
    if args.out:
        args.out.write_text(json.dumps(dict(versions=versions, results=records), indent=1) + "\n")
    if args.record:
        key = mode(args)[0]
        context = dict(transformers=versions["transformers"], torch=versions["torch"].split("+")[0])
        print(coverage.save_recorded(ROOT / "docs" / "coverage", records, key, versions["sglang"], context))


if __name__ == "__main__":
    main()
