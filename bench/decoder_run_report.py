"""The real run's table and learning-curve plot, from the files the GPU job writes.

    python bench/decoder_run_report.py RESULTS_DIR [--plot docs/mezo_decoder_run.png] [--bench FILE]

``RESULTS_DIR`` holds what ``tests/mezo/test_decoder_real_run.py`` saved (``MEZO_RUN_DIR``): each
run's ``run_k{k}_seed{seed}.json``, ``zero_shot.json``, ``lr_selection.json`` where rates were
selected. ``--bench``: the job's ``bench/mezo_step.py --decoder --model SMOLLM2`` output, whose
runner and reference step times give the wall time per 1000 steps on the same card. Prints the
markdown table docs/mezo.md quotes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_sglang_runner.mezo.protocol import summarize  # noqa: E402


def load_runs(directory: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("run_k*_seed*.json"))]


def bench_step_ms(path: Path) -> dict[str, float]:
    """Median step times (ms) of the runner and the reference from a `mezo_step.py` table."""
    found = {}
    for line in path.read_text().splitlines():
        for key, label in (("runner", "**kit MeZO step on the runner**"), ("reference", "reference MeZO step")):
            if line.startswith(f"| {label}"):
                found.setdefault(key, float(line.split("|")[2]))
    return found


def table(runs: list[dict], zero_shot: dict, bench: dict[str, float]) -> list[str]:
    summary = summarize(runs)
    lr, eps = runs[0]["lr"], runs[0]["eps"]
    lines = [
        "| | test accuracy (%) | seeds | steps | runner s / 1000 steps |",
        "|---|---|---|---|---|",
        f"| zero-shot (runner; HF: {100 * zero_shot['hf'][1]:.1f}) | {100 * zero_shot['runner'][1]:.1f} | | | |",
    ]
    for k, row in summary.items():
        lines.append(
            f"| MeZO k={k} (lr {lr:g}, eps {eps:g}) | {row['mean']:.1f} ± {row['std']:.1f} | {len(row['seeds'])} "
            f"| {row['steps']} | {row['seconds_per_1000_steps']:.1f} |"
        )
    if bench:
        lines.append("")
        lines.append(
            f"One step (bench/mezo_step.py, same job): runner {bench['runner']:.2f} ms, reference on HF "
            f"{bench['reference']:.2f} ms: {bench['runner']:.2f} s against {bench['reference']:.2f} s per 1000 steps "
            f"({bench['reference'] / bench['runner']:.1f}×)."
        )
    return lines


def plot(runs: list[dict], path: Path) -> Path:
    """Dev accuracy (each seed, thin; the mean, thick) and the smoothed training loss, per k."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for color, k in enumerate(sorted({r["k"] for r in runs})):
        mine = [r for r in runs if r["k"] == k]
        for r in mine:
            h = r["history"]
            ax_acc.plot(h["eval_step"], [100 * a for a in h["eval_accuracy"]], color=f"C{color}", lw=0.6, alpha=0.5)
            window = max(len(h["loss"]) // 50, 1)
            smooth = [sum(h["loss"][i : i + window]) / window for i in range(0, len(h["loss"]) - window + 1, window)]
            ax_loss.plot(
                [h["step"][i + window - 1] for i in range(0, len(smooth) * window, window)],
                smooth,
                color=f"C{color}",
                lw=0.6,
                alpha=0.5,
            )
        steps = mine[0]["history"]["eval_step"]
        mean = [sum(100 * r["history"]["eval_accuracy"][i] for r in mine) / len(mine) for i in range(len(steps))]
        ax_acc.plot(steps, mean, "o-", color=f"C{color}", lw=2, label=f"k={k} (mean of {len(mine)} seeds)")
    zero = 100 * runs[0]["zero_shot_test"]
    ax_acc.axhline(zero, color="gray", ls="--", label=f"zero-shot (test) {zero:.1f}")
    ax_acc.set(xlabel="step", ylabel="dev accuracy (%)", title="dev accuracy")
    ax_acc.legend(fontsize=8)
    ax_loss.set(xlabel="step", ylabel="loss at θ + εz", title="training loss (smoothed)")
    fig.suptitle(
        f"MeZO on the SGLang runner: {runs[0].get('model', 'smollm2-135m-instruct-fp32')}, Rotten Tomatoes polarity"
    )
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--bench", type=Path)
    args = ap.parse_args()
    runs = load_runs(args.results)
    zero_shot = json.loads((args.results / "zero_shot.json").read_text())
    selection = args.results / "lr_selection.json"
    print("\n".join(table(runs, zero_shot, bench_step_ms(args.bench) if args.bench else {})))
    if selection.is_file():
        chosen = json.loads(selection.read_text())
        trials = ", ".join(f"{rate}: {100 * accuracy:.1f}%" for rate, accuracy in chosen["trials"].items())
        where = (
            f"k={chosen['k']}, seed {chosen['seed']}, {chosen['steps']} steps each" if "k" in chosen else "one run each"
        )
        print(f"\nLearning rate chosen by dev accuracy ({where}): {trials} → {chosen['lr']:g}")
    if args.plot:
        plot(runs, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
