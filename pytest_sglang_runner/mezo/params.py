"""Trainable parameters as named views, and their fp32 masters in one flat buffer.

The optimizer sees only a list of `ParamView` (canonical HF name + a tensor that is a view of
the model's own storage). `Masters` owns the fp32 copy of those tensors, one flat buffer with a
segment per view, and writes into the model through the fused passes of `noise`: the model only
ever receives ``master + offset * eps * z`` or the master itself, so a restore is exact in any
model dtype (in-place bf16 +eps/-2eps/+eps drifts by 0.078).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from . import noise
from .noise import Shard


@dataclass(frozen=True)
class ParamView:
    """One trainable parameter under its canonical HF name; ``tensor`` shares the model's storage.

    ``shard``: under tensor parallelism, where ``tensor`` (this rank's part) sits in the full
    parameter; None for a whole parameter (TP=1, or one replicated on every rank).
    """

    name: str
    tensor: torch.Tensor
    shard: Shard | None = None


def hf_parameter_views(model: torch.nn.Module) -> list[ParamView]:
    """An HF model's trainable parameters, in ``named_parameters`` order (tied weights once)."""
    return [ParamView(name, p.data) for name, p in model.named_parameters() if p.requires_grad]


def select_views(views: Sequence[ParamView], patterns: Sequence[str] | None) -> list[ParamView]:
    """MeZO option ``trainable``: keep only views whose canonical name matches a glob pattern.

    ``None`` keeps everything (full-parameter MeZO, the paper's default). Like the reference's
    ``requires_grad`` filter, the rest stay frozen and draw no z; the canonical order is kept.
    """
    if patterns is None:
        return list(views)
    from fnmatch import fnmatchcase

    kept = [v for v in views if any(fnmatchcase(v.name, p) for p in patterns)]
    if not kept:
        raise ValueError(f"trainable patterns {list(patterns)} match no parameter")
    return kept


def no_decay(name: str) -> bool:
    """The reference exempts biases and layer norms from weight decay (any spelling of LayerNorm)."""
    return name.endswith("bias") or "layernorm" in name.lower().replace("_", "")


class Masters:
    """fp32 masters of the views (`tensors`, views of one flat buffer) and the passes that write the model.

    ``kernel``: "auto" (Triton on CUDA, torch elsewhere), "triton" or "torch" (`noise.make_passes`).
    """

    def __init__(self, views: Sequence[ParamView], kernel: str = "auto"):
        targets = [v.tensor for v in views]
        if not all(t.is_contiguous() for t in targets):
            raise ValueError("MeZO parameter views must be contiguous")
        self.segments, total = noise.layout([t.numel() for t in targets], [not no_decay(v.name) for v in views])
        self.flat = torch.zeros(total, dtype=torch.float32, device=targets[0].device)
        self.tensors = [self.flat[s.offset : s.offset + s.numel].view(t.shape) for s, t in zip(self.segments, targets)]
        with torch.no_grad():
            for master, target in zip(self.tensors, targets):
                master.copy_(target)
        self.passes = noise.make_passes(self.flat, self.segments, targets, kernel, shards=[v.shard for v in views])

    @property
    def numel(self) -> int:
        return sum(s.numel for s in self.segments)


def canonical_state(views: Sequence[ParamView]) -> list[torch.Tensor]:
    """fp32 copies of the views' current values, in canonical order."""
    return [v.tensor.detach().float().clone() for v in views]


def load_canonical(views: Sequence[ParamView], tensors: Sequence[torch.Tensor]) -> None:
    """Write canonical fp32 tensors into the model through its views (cast to the model dtype)."""
    with torch.no_grad():
        for view, value in zip(views, tensors, strict=True):
            view.tensor.copy_(value)


def fingerprint(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> str:
    """sha256 over canonical names, shapes and fp32 bytes: 'same starting weights' for replay."""
    digest = hashlib.sha256()
    for name, tensor in zip(names, tensors, strict=True):
        digest.update(f"{name}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def max_abs_difference(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Largest elementwise |a - b| over two canonical states (for tests and reports)."""
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


def relative_difference(x: float, y: float) -> float:
    return abs(x - y) / max(abs(x), abs(y), 1e-12) if not (math.isnan(x) or math.isnan(y)) else math.inf
