"""Whether a test left the shared runner as it found it: its weights, its KV pool, torch's globals.

One runner serves every test of its config, which is what makes the kit fast, and what lets a
test that halves the weights and fails make the next test fail with a mismatch naming nothing.
`RunnerState.of` takes a fingerprint before the test and after: each parameter's bytes summed
as integers (exact: any changed bit changes the sum, short of a collision), read back in one
transfer; the KV pool's and request table's free slots; torch's default dtype, grad mode and
deterministic-algorithms flag. `differences` names what changed. `PristineWeights` keeps a copy
of the weights to put back, for projects that opt in to the memory; without it the owner
rebuilds the runner.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

MAX_NAMED = 5  # changed tensors named in a message; the rest are counted
_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (names, integer views, data pointers)


def _as_integers(tensor):
    """The tensor's bytes as 64-bit integers where they fill whole words (a sum over half as many
    elements, with no widening), else as integers of its element size."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    if (flat.numel() * flat.element_size()) % 8 == 0 and flat.data_ptr() % 8 == 0:
        return flat.view(torch.uint8).view(torch.int64)
    if flat.dtype.is_floating_point or flat.dtype.is_complex:
        return flat.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()])
    return flat


def _integer_views(model) -> tuple[list[str], list]:
    """Each parameter's bytes as integers, made once per model: the views share the parameters'
    storage, so later sums see later values; a parameter given new storage makes them again."""
    names, parameters = zip(*[(n, p) for n, p in model.named_parameters() if p.numel()]) or ((), ())
    cached = _VIEWS.get(model)
    if cached is None or [p.data_ptr() for p in parameters] != cached[2]:
        cached = _VIEWS[model] = (
            list(names),
            [_as_integers(p) for p in parameters],
            [p.data_ptr() for p in parameters],
        )
    return cached[0], cached[1]


def weight_checksums(model) -> dict[str, int]:
    """Per parameter of ``model``: the sum of its bytes read as integers, in one transfer to the host."""
    import torch

    names, views = _integer_views(model)
    if not names:
        return {}
    sums = torch.stack([view.sum(dtype=torch.int64) for view in views])
    return dict(zip(names, sums.tolist()))


def torch_globals() -> dict[str, Any]:
    """The process-global torch settings a test may flip and forget."""
    import torch

    return {
        "default dtype": torch.get_default_dtype(),
        "grad mode": torch.is_grad_enabled(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def restore_torch_globals(saved: dict[str, Any]) -> None:
    import torch

    torch.set_default_dtype(saved["default dtype"])
    torch.set_grad_enabled(saved["grad mode"])
    torch.use_deterministic_algorithms(saved["deterministic algorithms"])


@dataclass(frozen=True)
class RunnerState:
    weights: dict[str, int]
    free_kv_slots: int
    free_request_slots: int
    torch_globals: dict[str, Any]

    @classmethod
    def of(cls, model_runner) -> RunnerState:
        return cls(
            weight_checksums(model_runner.model),
            model_runner.token_to_kv_pool_allocator.available_size(),
            model_runner.req_to_token_pool.available_size(),
            torch_globals(),
        )

    def changed_weights(self, after: RunnerState) -> list[str]:
        return [name for name, total in self.weights.items() if after.weights.get(name) != total]

    def differences(self, after: RunnerState) -> list[str]:
        """One line per thing the test changed that the next test would see: weights, torch's globals."""
        lines = []
        changed = self.changed_weights(after)
        if changed:
            named = ", ".join(changed[:MAX_NAMED]) + (
                f" and {len(changed) - MAX_NAMED} more" if len(changed) > MAX_NAMED else ""
            )
            lines.append(f"weights changed: {len(changed)} of {len(self.weights)} tensors ({named})")
        for what, before in self.torch_globals.items():
            now = after.torch_globals[what]
            if now != before:
                lines.append(f"torch's {what}: {before} before the test, {now} after")
        return lines

    def held_slots(self, after: RunnerState) -> list[str]:
        """KV or request slots still taken after the kit released its own batch."""
        return [
            f"{what}: {before} free before the test, {now} after"
            for what, before, now in (
                ("KV cache slots", self.free_kv_slots, after.free_kv_slots),
                ("request slots", self.free_request_slots, after.free_request_slots),
            )
            if now != before
        ]


class PristineWeights:
    """A copy of the weights as built, in host memory, to put back what a test changed."""

    def __init__(self, model) -> None:
        self.copies = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}

    def restore(self, model, names: list[str]) -> None:
        import torch

        wanted = set(names)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in wanted:
                    parameter.copy_(self.copies[name])
