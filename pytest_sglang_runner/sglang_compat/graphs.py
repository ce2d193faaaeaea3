"""One extend batch straight through ``runner.model``: eager, or captured once and replayed.

``ModelRunner.forward`` re-plans attention and copies the batch into its own buffers on every
call, and SGLang captures CUDA graphs for decode only. A `ModelCall` makes the call SGLang's own
graph runners make: plan the attention backend's metadata for the batch, then
``runner.model.forward(input_ids, positions, forward_batch)`` inside SGLang's forward context.
Captured, a replay costs one launch; the batch's inputs (`input_ids`, `rows`) are static tensors
that the next batch of the same layout is copied into.

Capture is offered only where it was checked: CUDA, and an attention backend whose extend path
makes no host round trip once planned (`CAPTURABLE_BACKENDS`). The plan lives in the backend
(``forward_metadata``, partly in buffers the backend reuses), so another batch's forward
overwrites it: a call re-plans itself when the backend holds someone else's plan, and keeps the
plan it was captured with alive, since the graph reads that plan's tensors.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Sequence

from ..model_io import KitRequest, kit_request
from .batches import free_kv, pack_batch

# Attention backends whose planned extend forward was checked to be capturable (SGLang 0.5.17).
CAPTURABLE_BACKENDS = ("TritonAttnBackend",)
# Attention backends whose extend attends over k and v as given (the KV pool only stores them).
KV_AS_GIVEN_BACKENDS = ("TritonAttnBackend",)


def can_capture(runner) -> bool:
    return str(runner.device).startswith("cuda") and type(runner.attn_backend).__name__ in CAPTURABLE_BACKENDS


def attention_takes_kv_directly(runner) -> bool:
    """Whether the backend's extend attention reads k and v as given, so an encoder batch needs no KV write.

    Triton's does (it stores them only for later batches to reuse); torch_native reads the KV pool.
    """
    return type(runner.attn_backend).__name__ in KV_AS_GIVEN_BACKENDS


_CAPTURE_STREAMS: dict = {}


def _capture_stream(device):
    """One side stream per device for every warm-up and capture: cuBLAS keeps a workspace per stream."""
    import torch

    key = torch.device(device)
    if key not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[key] = torch.cuda.Stream(device=key)
    return _CAPTURE_STREAMS[key]


def _forward_context(runner, forward_batch):
    try:
        from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
    except ImportError:  # no forward context in this SGLang: the backend travels in the batch
        return contextlib.nullcontext()
    context = ForwardContext(attn_backend=runner.attn_backend)
    if "forward_batch" in inspect.signature(forward_context).parameters:  # 0.5.23 generation
        return forward_context(context, forward_batch=forward_batch)
    return forward_context(context)


class ModelCall:
    """A packed extend batch and the model call on it; `capture` turns the call into a graph replay.

    ``rows`` (optional): the packed rows whose outputs the model should project; a static tensor
    like the inputs. Both travel in the call's `KitRequest`, which also says
    ``skip_kv_cache_write`` where the backend attends over k and v as given.
    """

    def __init__(self, runner, token_lists: Sequence[Sequence[int]], rows: Sequence[int] | None = None):
        import torch

        self.runner = runner
        self.layout = tuple(len(ids) for ids in token_lists)
        self.packed = pack_batch(runner, token_lists)
        self.forward_batch = self.packed.forward_batch
        self.rows = None if rows is None else torch.tensor(list(rows), dtype=torch.long, device=runner.device)
        # The batch is never extended, so its KV is never read back.
        self.request = KitRequest(rows=self.rows, skip_kv_cache_write=attention_takes_kv_directly(runner))
        self.graph = None
        self.output: Any = None
        self._plan = None  # the backend's plan for this batch, when it is the backend's current one
        self._captured_plan = None
        self.released = False

    def _ensure_planned(self) -> None:
        backend = self.runner.attn_backend
        current = getattr(backend, "forward_metadata", None)
        if current is None or current is not self._plan:
            backend.init_forward_metadata(self.forward_batch)
            self._plan = getattr(backend, "forward_metadata", None)

    def _call(self):
        fb = self.forward_batch
        kwargs = {} if self.runner.is_generation else {"get_embedding": True}
        with _forward_context(self.runner, fb), kit_request(self.request):
            return self.runner.model.forward(fb.input_ids, fb.positions, fb, **kwargs)

    def __call__(self):
        """The model's output for the batch's current inputs (a replay when captured)."""
        if self.released:
            raise RuntimeError("this batch was released")
        self._ensure_planned()
        if self.graph is None:
            return self._call()
        self.graph.replay()
        return self.output

    def load(self, token_lists: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> None:
        """Copy another batch of the same layout into the static inputs."""
        import torch

        if tuple(len(ids) for ids in token_lists) != self.layout:
            raise ValueError("load() needs a batch of the same layout (sequence lengths) as the captured one")
        pinned = self.forward_batch.input_ids.is_cuda

        def staged(values):
            tensor = torch.tensor(values, dtype=torch.long)
            return tensor.pin_memory() if pinned else tensor

        self.forward_batch.input_ids.copy_(staged([t for seq in token_lists for t in seq]), non_blocking=pinned)
        if rows is not None:
            self.rows.copy_(staged(list(rows)), non_blocking=pinned)

    def capture(self, pool=None) -> None:
        """Warm up on a side stream, then capture the call (torch.cuda.graphs' recipe)."""
        import torch

        self._ensure_planned()
        side = _capture_stream(self.runner.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=side):
            self.output = self._call()
        self.graph, self._captured_plan = graph, self._plan

    def release(self) -> None:
        """Drop the graph and give the KV slots back (idempotent)."""
        if self.released:
            return
        self.graph = self.output = self._captured_plan = self._plan = None
        free_kv(self.runner)
        self.released = True
