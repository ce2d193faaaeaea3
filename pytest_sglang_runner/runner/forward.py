"""Token lists (or texts) in, logits / hidden states / embeddings / generations out: no batch plumbing.

`Forward` packs a batch the way SGLang's scheduler would (through the version adapter), runs
it on the ModelRunner, splits the packed output back into one tensor per sequence, and gives
the KV slots back. `prepare` / `run` / `release` keep a packed batch alive so it can be run
again (MeZO runs one batch twice per step); only one prepared batch lives at a time.
`generate` decodes greedily (`runner.generate`). Each call runs under the runner's time limit
(`timeouts`); after a timeout the runner's state is unknown, and its owner tears it down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .. import timeouts
from ..model_io import MaskedLMOutput
from ..results import Generation, Sampling
from ..sglang_compat import batches
from ..sglang_compat.logits import capture_full_logits
from ..tokens import Tokenized
from . import limits
from .generate import check_request
from .generate import generate as generate_tokens


@dataclass
class ForwardResult:
    """One batch's outputs; per-token tensors are packed in batch order, `offsets` mark each sequence."""

    lengths: list[int]
    packed_logits: Any = None  # [total_tokens, vocab]: per-token logits (masked LMs)
    packed_hidden_states: Any = None  # [total_tokens, hidden]
    next_token_logits: Any = None  # [batch, vocab]: last-position logits (generative models)
    raw: Any = field(default=None, repr=False)  # what the model returned

    @property
    def embeddings(self):
        """``[batch, dim]``: the pooled output SGLang's embedding path returns (embedding and
        classification models, the kit's masked LM), or None for generative models."""
        return getattr(self.raw, "embeddings", None)

    @property
    def offsets(self) -> list[int]:
        starts, total = [], 0
        for length in self.lengths:
            starts.append(total)
            total += length
        return starts

    def _split(self, packed):
        if packed is None:
            return None
        return [packed[start : start + length] for start, length in zip(self.offsets, self.lengths)]

    @property
    def logits(self):
        """Per-sequence ``[len_i, vocab]`` logits, or None when the model gives only last-token logits."""
        return self._split(self.packed_logits)

    @property
    def hidden_states(self):
        """Per-sequence ``[len_i, hidden]`` hidden states (generative models: ask `prepare(..., hidden_states=True)`)."""
        return self._split(self.packed_hidden_states)


def _interpret(raw: Any, lengths: list[int], is_generation: bool) -> ForwardResult:
    """The output's type is known from the runner: a generative model answers with SGLang's
    LogitsProcessorOutput, the kit's masked LM a kit call with `MaskedLMOutput`, any other
    embedding or classification model with SGLang's EmbeddingPoolerOutput."""
    result = ForwardResult(lengths=lengths, raw=raw)
    if is_generation:
        result.next_token_logits = raw.next_token_logits
        result.packed_hidden_states = raw.hidden_states
    elif isinstance(raw, MaskedLMOutput):
        result.packed_logits = raw.logits
        result.packed_hidden_states = raw.hidden_states
    return result


@dataclass
class PreparedBatch:
    token_lists: list[list[int]]
    packed: Any
    hidden_states: bool
    full_logits: bool = False  # a decoder's logits at every position, not only the last
    released: bool = False


def _bounded(phase: str):
    """The method under the runner's time limit. On a timeout, or on an error after the call was
    sent to the TP peers (they may wait in a collective that rank 0 never reaches), the owner's
    `on_broken` tears the runner down before the test sees the error, so the next test gets a
    fresh one. A call inside another (``__call__``'s ``run``) runs under the outer one's limit."""

    def decorate(method):
        @functools.wraps(method)
        def bounded(self: Forward, *args, **kwargs):
            __tracebackhide__ = True  # pytest shows the test's call, then the error
            if self._bounding:
                return method(self, *args, **kwargs)
            self._bounding, self._mirrored = True, False
            try:
                if not self.timeout_s:
                    return method(self, *args, **kwargs)
                with timeouts.deadline(phase, self.timeout_s, on_expire=self.on_expire):
                    return method(self, *args, **kwargs)
            except BaseException as exc:
                if isinstance(exc, timeouts.SGLangTimeout) or (self._mirrored and isinstance(exc, Exception)):
                    self._live = None
                    if self.on_broken is not None:
                        self.on_broken()
                raise
            finally:
                self._bounding = False

        return bounded

    return decorate


class Forward(Tokenized):
    """Runs batches on one ModelRunner; with TP, `mirror` replays each call on the other ranks.

    `timeout_s` (0: none) bounds each call; the factory sets it to the current test's limit and
    gives the hooks `timeouts.deadline` runs past it (`on_expire`) and after it (`on_broken`)."""

    def __init__(self, runner, model_path: str | None = None, mirror: Callable[..., None] | None = None):
        """``mirror(method, *args, **kwargs)`` replays a call on the TP peers (`peers.RankPeers.mirror`)."""
        self.runner = runner
        self.model_path = model_path or runner.model_config.model_path
        self._send = mirror
        self._mirrored = False  # whether the current call reached the peers
        self._live: PreparedBatch | None = None
        self.timeout_s = 0.0
        self.on_expire: Callable[[], None] | None = None
        self.on_broken: Callable[[], None] | None = None
        self._bounding = False

    def _mirror(self, method: str, *args, **kwargs) -> None:
        """Replay this call, ``self.<method>(*args, **kwargs)``, on the other TP ranks."""
        if self._send is not None:
            self._mirrored = True
            self._send(method, *args, **kwargs)

    @contextlib.contextmanager
    def unmirrored(self) -> Iterator[None]:
        """Every rank runs its own calls (`ranks`): none is replayed, and the caller bounds the time."""
        send, bounding = self._send, self._bounding
        self._send, self._bounding = None, True
        try:
            yield
        finally:
            self._send, self._bounding = send, bounding

    def _check_no_live_batch(self) -> None:
        if self._live is not None:
            raise RuntimeError("a prepared batch is still alive: release() it before preparing another")

    @_bounded("forward")
    def prepare(self, inputs, hidden_states: bool = False, full_logits: bool = False) -> PreparedBatch:
        """Allocate KV slots and pack the batch; it can then be `run` any number of times.
        ``full_logits``: a decoder's run also gives every position's logits (`ForwardResult.logits`)."""
        self._check_no_live_batch()
        token_lists = self.token_lists(inputs)
        limits.check_batch(self.runner, token_lists)  # before any rank starts
        if full_logits and not self.runner.is_generation:
            raise ValueError("full_logits=True is for decoders; this model's forward gives its logits already")
        self._mirror("prepare", token_lists, hidden_states=hidden_states, full_logits=full_logits)
        packed = batches.pack_batch(self.runner, token_lists, capture_hidden=hidden_states)
        self._live = PreparedBatch(token_lists, packed, hidden_states, full_logits)
        return self._live

    @_bounded("forward")
    def run(self, prepared: PreparedBatch | None = None) -> ForwardResult:
        """Run a prepared batch (by default the live one) again."""
        prepared = prepared or self._live
        if prepared is None or prepared.released:
            raise RuntimeError("this prepared batch was released; prepare it again")
        import torch

        self._mirror("run")
        capture = capture_full_logits(self.runner) if prepared.full_logits else contextlib.nullcontext([])
        with torch.no_grad(), capture as full:
            raw = batches.run_packed(self.runner, prepared.packed)
        result = _interpret(raw, [len(ids) for ids in prepared.token_lists], self.runner.is_generation)
        if prepared.full_logits:
            (result.packed_logits,) = full
        return result

    @_bounded("forward")
    def release(self, prepared: PreparedBatch | None = None) -> None:
        """Give the batch's KV slots back (idempotent)."""
        target = prepared or self._live
        if target is None or target.released:
            return
        self._mirror("release")
        batches.free_kv(self.runner)
        target.released = True
        if self._live is target:
            self._live = None

    @_bounded("forward")
    def __call__(self, inputs, hidden_states: bool = False, full_logits: bool = False) -> ForwardResult:
        prepared = self.prepare(inputs, hidden_states=hidden_states, full_logits=full_logits)
        try:
            return self.run(prepared)
        finally:
            self.release(prepared)

    def logits(self, inputs):
        """Per-token logits per sequence (masked LMs), else last-token logits ``[batch, vocab]``."""
        result = self(inputs)
        return result.logits if result.packed_logits is not None else result.next_token_logits

    def full_logits(self, inputs) -> list:
        """Per sequence ``[len_i, vocab]`` logits at every position, decoders and masked LMs alike
        (a decoder's position i predicts token i+1), as `HFRunner.full_logits` gives them."""
        if not self.runner.is_generation:
            return self(inputs).logits
        return self(inputs, full_logits=True).logits

    def hidden_states(self, inputs):
        return self(inputs, hidden_states=True).hidden_states

    def embeddings(self, inputs):
        return self(inputs).embeddings

    @_bounded("generate")
    def generate(
        self,
        prompts,
        max_new_tokens: int = 16,
        top_logprobs: int | None = 5,
        stop_token_ids=(),
        ignore_eos: bool = False,
        temperature: float = 0.0,
        top_k: int = -1,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        seed: int | None = None,
    ) -> list[Generation]:
        """Continuations, one `Generation` per prompt (texts or token lists, any lengths).

        One extend batch, then decode steps through ``ModelRunner.forward`` (captured CUDA graphs
        when the runner has them); each sequence stops at its EOS, a stop token or
        ``max_new_tokens``. ``top_logprobs=None`` skips logprobs. Greedy by default; otherwise
        SGLang's sampler picks each token with these sampling parameters (`results.Sampling`
        gives their ranges), and the same ``seed`` gives the same tokens on the same device.
        """
        if not self.runner.is_generation:
            raise ValueError(
                f"generate() needs a generative model; {self.model_path} runs as an embedding model here "
                "(use sglang_forward(...) for its logits or embeddings)"
            )
        self._check_no_live_batch()
        token_lists = self.token_lists(prompts)
        sampling = Sampling(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            seed=seed,
        )  # a bad value is a ValueError here, before any rank starts
        check_request(self.runner, token_lists, max_new_tokens, top_logprobs)
        options = dict(
            max_new_tokens=max_new_tokens,
            top_logprobs=top_logprobs,
            stop_token_ids=tuple(stop_token_ids),
            ignore_eos=ignore_eos,
        )
        self._mirror("generate", token_lists, **options, **dataclasses.asdict(sampling))  # the peers sample alike
        results = generate_tokens(self.runner, token_lists, **options, sampling=sampling)
        for result in results:
            result.text = self.decode(result.output_ids)
        return results
