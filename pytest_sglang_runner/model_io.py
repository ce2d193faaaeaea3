"""What the kit asks of its own models, and what they answer (a leaf: imports nothing of the kit).

The kit runs models two ways: SGLang's scheduler runs them (the Engine, the server), and the kit
runs them itself (`Forward`, `ModelCall`, MeZO). A kit call says what it wants in one typed
`KitRequest`, set around the call with `kit_request`; a model that reads `current_request()`
answers a kit call with a known type (the kit's masked LM: `MaskedLMOutput`) and SGLang's
scheduler with SGLang's own. The request travels beside the batch, not on it, because
``ModelRunner.forward`` copies only the batch's dataclass fields; it is read while the model
runs (also while a CUDA graph is captured, so the tensors it names must be static ones).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class KitRequest:
    """One call by the kit: per-token outputs, and what the model may leave out.

    ``rows``: the packed rows whose outputs the LM head should project (a long tensor on the
    model's device, a static one under CUDA graph capture), or None for every row.
    ``skip_kv_cache_write``: the attention backend reads k and v as given, and the batch is never
    extended, so nothing would read the KV pool back.
    """

    rows: Any = None
    skip_kv_cache_write: bool = False


_CURRENT: contextvars.ContextVar[KitRequest | None] = contextvars.ContextVar(
    "pytest_sglang_runner_request", default=None
)


@contextlib.contextmanager
def kit_request(request: KitRequest | None = None) -> Iterator[KitRequest]:
    """While the kit runs the model: `current_request()` returns ``request``."""
    request = request or KitRequest()
    token = _CURRENT.set(request)
    try:
        yield request
    finally:
        _CURRENT.reset(token)


def current_request() -> KitRequest | None:
    """The kit's request while the kit runs the model; None under SGLang's scheduler."""
    return _CURRENT.get()


@dataclass
class MaskedLMOutput:
    """The kit's masked LM's answer to a kit call: per-token outputs of one packed batch, rows in
    the batch's token order."""

    hidden_states: Any  # [total_tokens, hidden]
    logits: Any  # [total_tokens, vocab], or [len(rows), vocab] when the request names rows
    pool: Callable[[], Any] = field(repr=False, default=None)

    @property
    def embeddings(self) -> Any:
        """``[batch, hidden]``: each sequence's <s> vector, L2-normalised, as SGLang's own
        ``XLMRobertaModel`` pools; computed when read (MeZO's forwards never pay for it)."""
        return self.pool()
