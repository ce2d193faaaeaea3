"""A MeZO run as data: the checkpoint that replays it bitwise, and the history that plots it.

A checkpoint is the initial weights' fingerprint plus the (seed, projected gradient) of every
step: z is regenerated from the seed, so replaying the pairs on the same initial weights gives
the trained weights bit for bit, in a few kilobytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Checkpoint:
    """Initial weights' fingerprint + every step's (seed, projected gradient): the whole run."""

    fingerprint: str
    names: list[str]
    lr: float
    eps: float
    weight_decay: float
    steps: list[tuple[int, float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))  # floats round-trip exactly through repr

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        data = json.loads(Path(path).read_text())
        data["steps"] = [(int(s), float(g)) for s, g in data["steps"]]
        return cls(**data)


@dataclass
class History:
    """Per-step training loss and projected gradient; dev loss/accuracy at each evaluation."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    projected_grad: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)

    def save_plot(self, path: Path, title: str = "MeZO") -> Path:
        """Loss (train, dev) and dev accuracy against step, as a PNG (matplotlib, Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.5))
        ax_loss, ax_acc = fig.subplots(1, 2)
        ax_loss.plot(self.step, self.loss, lw=0.6, alpha=0.6, label="train loss (+eps)")
        if self.eval_step:
            ax_loss.plot(self.eval_step, self.eval_loss, "o-", label="dev loss")
            ax_acc.plot(self.eval_step, self.eval_accuracy, "o-", color="C2")
        ax_loss.set_xlabel("step")
        ax_loss.legend()
        ax_acc.set_xlabel("step")
        ax_acc.set_ylabel("dev accuracy")
        ax_acc.set_ylim(0, 1)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(str(path), dpi=100)
        return Path(path)
