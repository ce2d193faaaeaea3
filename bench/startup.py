"""Start-up cost on one machine and model: runner ready, Engine ready, server ready, and the
per-test overhead of reusing the session runner. Prints a table (Markdown) and writes it, with
the raw timings, under --out.

- **runner ready (warm import)**: `RunnerFactory.get()` in a process that has imported SGLang
  already (what every build after a session's first pays; the first also pays the import, shown
  as "cold");
- **Engine ready (warm import)**: ``sglang.Engine(**kwargs)`` in a process that has imported
  SGLang already, with the runner's ServerArgs (the kit's CPU shims and model classes installed at import, as the
  kit's Engine host does: without them a plain CPU Engine cannot build these models);
- **kit Engine / server ready (cold)**: the `sglang_engine` / `sglang_server` fixtures' start,
  from spawning the host to ready (``/health`` 200 for the server), imports included;
- **reuse per test**: an inner pytest session of N tests taking ``runner`` and N taking nothing;
  the difference of their mean setup + teardown time (the first runner test, which builds, left
  out).

Goals: runner ready <= 0.15x Engine ready; reuse <= 1 ms per test.

    python bench/startup.py [--models embedded-roberta embedded-llama] [--repeats 2] [--tests 400] [--out bench/results/startup_cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__mp_main__" or os.environ.get("STARTUP_BENCH_ENGINE_CHILD"):
    # This file is the main module of the Engine child: SGLang's scheduler and detokenizer,
    # spawned from it, import it as __mp_main__ and get the kit's shims here, as the kit's host does.
    from pytest_sglang_runner.models import register_kit_models
    from pytest_sglang_runner.sglang_compat.serving import prepare_serving_process

    prepare_serving_process()
    register_kit_models()

REUSE_CONFTEST = """
import json, os

def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        with open(os.environ["REUSE_RECORD"], "a") as f:
            f.write(json.dumps([report.nodeid, report.when, report.duration]) + "\\n")
"""

REUSE_TESTS = """
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_with_runner(runner, i):
    pass

@pytest.mark.parametrize("i", range({n}))
def test_plain(i):
    pass
"""


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _spec(model: str):
    from pytest_sglang_runner.options import RunnerSpec

    return RunnerSpec(model=model, dtype="bfloat16" if _device() == "cuda" else "float32")


def runner_ready(model: str, repeats: int) -> dict:
    """Cold (the process's first build: SGLang's import included) and warm builds, in a fresh process."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from startup import _spec
from pytest_sglang_runner.runner import RunnerFactory
from pytest_sglang_runner.paths import models_cache_dir
factory = RunnerFactory(_spec({model!r}), cache_root=models_cache_dir())
factory.model_path()  # the embedded model is written (or found) first: not a start-up cost
times = []
for _ in range({repeats + 1}):
    started = time.perf_counter()
    factory.get()
    times.append(time.perf_counter() - started)
    factory.close()
print(json.dumps(times))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    times = json.loads(out.strip().splitlines()[-1])
    return {"cold": times[0], "warm": times[1:]}


def engine_child(model: str) -> None:
    """Body of the in-process Engine measurement (run as this file's __main__, in a fresh process)."""
    import sglang

    from pytest_sglang_runner import ports
    from pytest_sglang_runner.paths import models_cache_dir
    from pytest_sglang_runner.runner import RunnerFactory
    from pytest_sglang_runner.sglang_compat.serving import hosted_server_args

    spec = _spec(model)
    plan = RunnerFactory(spec, cache_root=models_cache_dir()).plan()
    reservations = ports.reserve_ports(2)
    kwargs = hosted_server_args(plan.server_args(*(r.port for r in reservations)))
    started = time.perf_counter()
    engine = sglang.Engine(**kwargs)
    ready = time.perf_counter() - started
    engine.shutdown()
    print(json.dumps({"ready": ready}))


def engine_ready(model: str, repeats: int) -> list[float]:
    from pytest_sglang_runner.sglang_compat.serving import SERVING_DEVICE_ENV

    env = {**os.environ, "STARTUP_BENCH_ENGINE_CHILD": "1", SERVING_DEVICE_ENV: _device()}
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, __file__, "--engine-child", model], capture_output=True, text=True, env=env, check=True
        ).stdout
        times.append(json.loads(out.strip().splitlines()[-1])["ready"])
    return times


def kit_service_ready(model: str, repeats: int, which: str) -> list[float]:
    from pytest_sglang_runner.paths import models_cache_dir
    from pytest_sglang_runner.runner import RunnerFactory
    from pytest_sglang_runner.services import ServiceFactory

    times = []
    for _ in range(repeats):
        runners = RunnerFactory(_spec(model), cache_root=models_cache_dir())
        runners.model_path()
        services = ServiceFactory(runners)
        started = time.perf_counter()
        getattr(services, which)()
        times.append(time.perf_counter() - started)
        services.close()
    return times


def reuse_overhead(model: str, tests: int) -> dict:
    """Mean setup + teardown of a test taking the session's runner, minus a test taking nothing."""
    with tempfile.TemporaryDirectory() as directory:
        project = Path(directory)
        (project / "conftest.py").write_text(REUSE_CONFTEST)
        (project / "test_reuse.py").write_text(REUSE_TESTS.format(n=tests))
        record = project / "record.jsonl"
        dtype = ["--sglang-dtype=bfloat16"] if _device() == "cuda" else []
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                "-W",
                "ignore",
                f"--sglang-model={model}",
                *dtype,
                "-p",
                "no:randomly",
            ],
            cwd=project,
            env={**os.environ, "REUSE_RECORD": str(record)},
            capture_output=True,
            text=True,
            check=True,
        )
        per_test: dict[str, float] = {}
        for nodeid, _, duration in map(json.loads, record.read_text().splitlines()):
            per_test[nodeid] = per_test.get(nodeid, 0.0) + duration
    with_runner = [d for n, d in per_test.items() if "test_with_runner" in n]
    plain = [d for n, d in per_test.items() if "test_plain" in n]
    with_runner = with_runner[1:]  # the first builds the runner
    return {
        "with_runner_ms": 1e3 * statistics.mean(with_runner),
        "plain_ms": 1e3 * statistics.mean(plain),
        "overhead_ms": 1e3 * (statistics.mean(with_runner) - statistics.mean(plain)),
        "tests": tests,
    }


def machine() -> str:
    import sglang
    import torch

    if torch.cuda.is_available():
        card = torch.cuda.get_device_name(0)
    else:
        card = f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return f"{card}; SGLang {sglang.__version__}, torch {torch.__version__}, Python {platform.python_version()}"


def table(results: dict) -> str:
    lines = [
        "| model | runner ready, cold (s) | runner ready, warm import (s) | Engine ready, warm import (s) | runner / Engine (goal <= 0.15) | kit Engine ready, cold (s) | kit server ready, cold (s) | reuse per test (ms, goal <= 1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, r in results.items():
        warm, engine = statistics.median(r["runner"]["warm"]), statistics.median(r["engine"])
        ratio = warm / engine
        verdict = "met" if ratio <= 0.15 else f"missed by {ratio / 0.15:.1f}x"
        reuse = r["reuse"]["overhead_ms"]
        reuse_verdict = "met" if reuse <= 1.0 else f"missed by {reuse:.2f} ms"
        lines.append(
            f"| {model} | {r['runner']['cold']:.1f} | {warm:.2f} | {engine:.1f} | {ratio:.3f} ({verdict}) | "
            f"{statistics.median(r['kit_engine']):.1f} | {statistics.median(r['kit_server']):.1f} | {reuse:.3f} ({reuse_verdict}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["embedded-roberta", "embedded-llama"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tests", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--engine-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        engine_child(args.engine_child)
        return
    results = {}
    for model in args.models:
        results[model] = {
            "runner": runner_ready(model, args.repeats),
            "engine": engine_ready(model, args.repeats),
            "kit_engine": kit_service_ready(model, args.repeats, "engine"),
            "kit_server": kit_service_ready(model, args.repeats, "server"),
            "reuse": reuse_overhead(model, args.tests),
        }
        print(f"{model}: {json.dumps(results[model])}", flush=True)
    text = f"Machine: {machine()}\n\n{table(results)}\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "startup.md").write_text(text)
        (args.out / "startup.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
