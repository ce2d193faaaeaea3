"""MeZO's few-shot protocol (Malladi et al. 2023, after LM-BFF), for any prompt and model.

Per k-shot split: zero-shot test accuracy, then MeZO, and the test accuracy at the best dev
accuracy (the reference's selection). Over ks × seeds: mean ± sample std per k. The splits are
read by `sst2.load_kshot` (``{k}-{seed}/{train,dev,test}.tsv``); the prompt is anything with
``encode_all`` (`sst2.SST2Prompt` on a masked LM, `causal_lm.DecoderPrompt` on a decoder).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from .sst2 import load_kshot


def run_kshot(
    make_optimizer: Callable[[], object],
    prompt,
    root: Path,
    k: int,
    seed: int,
    *,
    steps: int,
    eval_every: int,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """Zero-shot test accuracy, then MeZO; test accuracy at the best dev accuracy.

    ``make_optimizer()`` must return a `MeZO` over the model at its *initial* weights.
    """
    data = {split: prompt.encode_all(rows) for split, rows in load_kshot(root, k, seed).items()}
    opt = make_optimizer()
    _, zero_shot = opt.evaluate(data["test"], batch_size)
    best = {"dev": -1.0, "test": zero_shot, "step": 0}

    def on_eval(o) -> None:
        dev = o.history.eval_accuracy[-1]
        if dev > best["dev"]:
            best.update(dev=dev, test=o.evaluate(data["test"], batch_size)[1], step=o.global_step)

    started = time.perf_counter()
    opt.train(
        data["train"],
        steps,
        batch_size=batch_size,
        eval_examples=data["dev"],
        eval_every=eval_every,
        on_eval=on_eval,
        progress=progress,
        data_seed=seed,
    )
    return dict(
        k=k,
        seed=seed,
        steps=steps,
        seconds=time.perf_counter() - started,
        zero_shot_test=zero_shot,
        best_dev=best["dev"],
        test=best["test"],
        best_step=best["step"],
        history=opt.history,
        checkpoint=opt.checkpoint,
    )


def run_grid(
    make_optimizer: Callable[[], object],
    prompt,
    root: Path,
    ks: Sequence[int],
    seeds: Sequence[int],
    *,
    on_result: Callable[[dict], None] | None = None,
    **run_options,
) -> list[dict]:
    """`run_kshot` for every k and seed, each from the initial weights (``make_optimizer`` restores
    them); ``on_result`` sees each run as it ends (to save progress in a long job)."""
    results = []
    for k in ks:
        for seed in seeds:
            results.append(run_kshot(make_optimizer, prompt, root, k, seed, **run_options))
            if on_result is not None:
                on_result(results[-1])
    return results


def record(result: dict) -> dict:
    """A run as JSON-ready data: its numbers and history (the checkpoint stays with the caller)."""
    return {
        **{key: value for key, value in result.items() if key != "checkpoint"},
        "history": asdict(result["history"]),
    }


def summarize(results: Sequence[dict]) -> dict[int, dict]:
    """Per k: test accuracy (%) at the best dev, mean and sample std over seeds; zero-shot; seconds
    per 1000 steps (training and its dev evaluations)."""
    summary = {}
    for k in sorted({r["k"] for r in results}):
        runs = [r for r in results if r["k"] == k]
        accuracy = [100 * r["test"] for r in runs]
        summary[k] = dict(
            seeds=[r["seed"] for r in runs],
            mean=statistics.mean(accuracy),
            std=statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
            zero_shot=100 * runs[0]["zero_shot_test"],
            steps=runs[0]["steps"],
            seconds_per_1000_steps=1000 * sum(r["seconds"] for r in runs) / sum(r["steps"] for r in runs),
        )
    return summary
