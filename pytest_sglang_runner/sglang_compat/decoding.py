"""Generation the way SGLang's scheduler runs it: one extend batch, then decode steps.

A `DecodeBatch` appends each sampled token to its ``Req`` and updates the request's finish state
(EOS, stop tokens, ``max_new_tokens``), filters finished requests out, lets
``prepare_for_decode`` allocate the next KV slot, and runs ``ModelRunner.forward``, which
replays a captured CUDA graph when the batch fits one. Tokens come from SGLang's sampler and
logprobs are SGLang's own (the logits processor's for the prompt, the sampler's for the output),
read back into plain Python here. SGLang's sampler does the sampling too (temperature, top-k,
top-p, min-p; its penalizers, which ``prepare_for_decode`` feeds each step's tokens), and
`seeded` makes it repeatable.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..results import Sampling
from .batches import GREEDY, extend_batch, forward_batch_of, make_request


def _as_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _top(ids, logprobs) -> dict[int, float]:
    return {int(i): float(v) for i, v in zip(_as_list(ids), _as_list(logprobs))}


@dataclass
class Step:
    """One forward of a `DecodeBatch`; ``rows`` are the prompts that took part. Its output logprobs
    stay on the device until `read_logprobs` brings every step's back in one transfer: reading them
    per step would stop the GPU once per row and step."""

    rows: list[int]
    token_ids: list[int]
    graph: bool  # ModelRunner.forward replayed a captured CUDA graph
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    # Extend step only, per row: (logprob of prompt token i+1, top-k) at each position i < len - 1.
    prompt_logprobs: list[list[tuple[float, dict[int, float]]]] | None = field(default=None, repr=False)
    # SGLang's output logprobs as it left them, until read: (chosen [rows], top ids and values or None).
    pending: tuple | None = field(default=None, repr=False)


def _stacked(rows):
    """SGLang's per-row top-k (tensors or lists, one per row) as one ``[rows, k]`` tensor."""
    import torch

    return torch.stack(list(rows)) if rows and hasattr(rows[0], "shape") else torch.tensor(rows)


def read_logprobs(steps: Sequence[Step]) -> None:
    """Fill each step's ``logprobs`` and ``top_logprobs`` from what it holds on the device, with one
    transfer per kind for all the steps together."""
    import torch

    pending = [step for step in steps if step.pending is not None]
    if not pending:
        return
    chosen = torch.cat([torch.as_tensor(step.pending[0]).reshape(-1).float() for step in pending]).tolist()
    with_top = [step.pending for step in pending if step.pending[1] is not None]
    ids = torch.cat([top_ids for _, top_ids, _ in with_top]).tolist() if with_top else []
    values = torch.cat([top_values.float() for _, _, top_values in with_top]).tolist() if with_top else []
    start = top_start = 0
    for step in pending:
        count = len(step.rows)
        step.logprobs = chosen[start : start + count]
        if step.pending[1] is not None:
            step.top_logprobs = [dict(zip(ids[top_start + k], values[top_start + k])) for k in range(count)]
            top_start += count
        start += count
        step.pending = None


class DecodeBatch:
    """Prompts through one extend forward, then decode steps, as SGLang's scheduler runs them."""

    def __init__(
        self,
        runner,
        token_lists: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        top_logprobs: int | None,
        stop_token_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        sampling: Sampling = GREEDY,
    ):
        self.runner = runner
        self.top_logprobs = top_logprobs
        config = runner.model_config
        self.requests = [
            make_request(
                i,
                ids,
                max_new_tokens=max_new_tokens,
                top_logprobs=top_logprobs,
                stop_token_ids=stop_token_ids,
                ignore_eos=ignore_eos,
                eos_token_ids=config.hf_eos_token_id,
                vocab_size=config.vocab_size,
                sampling=sampling,
            )
            for i, ids in enumerate(token_lists)
        ]
        self._rows = list(range(len(self.requests)))
        self._batch = extend_batch(runner, list(self.requests))
        self._extending = True

    @property
    def done(self) -> bool:
        return not self._rows

    def step(self) -> Step:
        """Run the current batch (the prompts first, then one decode step) and sample each row's next token."""
        import torch

        forward_batch = forward_batch_of(self.runner, self._batch)
        with torch.no_grad():
            output = self.runner.forward(forward_batch)
            logits = output.logits_output
            next_ids = self.runner.sample(logits, forward_batch)
        tokens = _as_list(next_ids)  # the step's one wait for the device: the finish checks need them
        step = Step(rows=list(self._rows), token_ids=tokens, graph=bool(getattr(output, "can_run_graph", False)))
        if self.top_logprobs is not None:
            top = (
                (_stacked(logits.next_token_top_logprobs_idx), _stacked(logits.next_token_top_logprobs_val))
                if self.top_logprobs
                else (None, None)
            )
            step.pending = (logits.next_token_logprobs, *top)
            if self._extending:
                step.prompt_logprobs = self._prompt_logprobs(logits)
        self._accept(next_ids, tokens)
        return step

    def _prompt_logprobs(self, logits) -> list[list[tuple[float, dict[int, float]]]]:
        chosen = _as_list(logits.input_token_logprobs)
        tops = zip(logits.input_top_logprobs_idx, logits.input_top_logprobs_val) if self.top_logprobs else None
        per_row, start = [], 0
        for req in self.requests:
            length = len(req.origin_input_ids)
            top_ids, top_values = next(tops) if tops is not None else ([], [])
            per_row.append(
                [
                    (float(chosen[start + i]), _top(top_ids[i], top_values[i]) if tops is not None else {})
                    for i in range(length - 1)
                ]
            )
            start += length
        return per_row

    def _accept(self, next_ids, tokens: list[int]) -> None:
        """What the scheduler does with a step's tokens: append, update finish state, drop finished rows."""
        import torch

        self._batch.input_ids = next_ids.to(torch.int64)
        for req, token in zip(self._batch.reqs, tokens):
            req.output_ids.append(int(token))
            req.update_finish_state(1)
        self._rows = [row for row, req in zip(self._rows, self._batch.reqs) if not req.finished()]
        self._batch.filter_batch()
        self._extending = False
        if self._rows:
            self._batch.prepare_for_decode()

    def output_ids(self, row: int) -> list[int]:
        return [int(t) for t in self.requests[row].output_ids_through_stop]

    def finish_reason(self, row: int) -> str | None:
        """``"stop"`` (EOS or a stop token), ``"length"`` (``max_new_tokens``), as SGLang reports it."""
        reason = self.requests[row].finished_reason
        return reason.to_json().get("type") if reason is not None else None


@contextlib.contextmanager
def seeded(device, seed: int | None) -> Iterator[None]:
    """Sampling repeatable per ``seed``, and torch's random state as it was afterwards.

    Outside ``enable_deterministic_inference`` SGLang's sampler draws from torch's default
    generator of the runner's device (``torch.multinomial`` on the pytorch backend; FlashInfer's
    kernels take their seed and offset from it), and ignores the request's ``sampling_seed``.
    So this seeds the CPU generator and, on CUDA, the runner's GPU's, restoring both on exit.
    """
    if seed is None:
        yield
        return
    import torch

    device = torch.device(device)
    gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.random.default_generator.manual_seed(seed)
        for gpu in gpus:
            torch.cuda.default_generators[gpu].manual_seed(seed)
        yield
