"""One extend batch straight through ``runner.model``: eager, or captured once and replayed.

``ModelRunner.forward`` re-plans attention and copies the batch into its own buffers on every
call, and SGLang captures CUDA graphs for decode only. A `ModelCall` makes the call SGLang's own
graph runners make: plan the attention backend's metadata for the batch, then
``runner.model.forward(input_ids, positions, forward_batch)`` inside SGLang's forward context.
Captured, a replay costs one launch; the batch's inputs (`input_ids`, `positions`, `rows`) are
static tensors that the next batch is copied into.

A bucketed call (`buckets.BucketLayout`) is padded with filler sequences to its bucket's total,
and a captured one takes any batch of its bucket: its graph starts by scattering one staging
tensor (token ids, positions, rows, sequence offsets) into the static inputs and into the plan's
tensors (`_write_extend_lengths`, per backend), so a new batch costs one host-to-device copy and
one replay; the plan's longest-sequence bound is the bucket's, so the kernels' grids fit every
layout of the bucket.

Capture is offered only where it was checked: CUDA, and an attention backend whose extend path
makes no host round trip once planned and reads k and v as given (`CAPTURABLE_BACKENDS`), so a
captured call needs no KV slots. The plan lives in the backend (``forward_metadata``, partly in
buffers the backend reuses), so another batch's forward overwrites it: an eager call re-plans
itself when the backend holds someone else's plan, and a captured one rewrites its lengths into
the shared buffers before every replay and keeps the plan it was captured with alive, since the
graph reads that plan's tensors.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from typing import Any, Sequence

from ..buckets import LARGEST_STEP, BucketLayout
from ..model_io import KitRequest, kit_request
from .batches import free_kv, pack_batch, runner_limits

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


def bucket_of(runner, lengths: Sequence[int]) -> BucketLayout:
    """The batch's bucket on this runner: filler sequences no longer than the model takes."""
    return BucketLayout.of(lengths, longest_filler=min(LARGEST_STEP, runner_limits(runner).max_sequence))


def _write_extend_lengths(plan, query_offsets) -> None:
    """Triton's extend plan for new sequence lengths, in place (on the device, so a graph holds it):
    the query offsets, and no prefix.

    Both live in the backend's shared buffers (``qo_indptr``, ``kv_indptr``), which another
    batch's plan may have overwritten; ``kv_indices`` is the captured plan's own and is not read
    without a prefix.
    """
    plan.qo_indptr.copy_(query_offsets)
    plan.kv_indptr.zero_()


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
    ``skip_kv_cache_write`` where the backend attends over k and v as given. ``bucket``: pack the
    batch padded to its `BucketLayout` (filler sequences of ``filler_token`` after the real ones).
    ``prefix_slots``: every sequence starts with a prefix whose KV is in these slots already
    (`SharedPrefixCall`); only the rest of each sequence is run.
    """

    def __init__(
        self,
        runner,
        token_lists: Sequence[Sequence[int]],
        rows: Sequence[int] | None = None,
        *,
        bucket: BucketLayout | None = None,
        filler_token: int = 0,
        prefix_slots=None,
    ):
        import torch

        self.runner = runner
        self.bucket, self.filler_token = bucket, filler_token
        packed_lists = bucket.pad(token_lists, filler_token) if bucket is not None else token_lists
        self.layout = tuple(len(ids) for ids in packed_lists)
        self.packed = pack_batch(runner, packed_lists, prefix_slots=prefix_slots)
        self.forward_batch = self.packed.forward_batch
        self.rows = None if rows is None else torch.tensor(list(rows), dtype=torch.long, device=runner.device)
        # The batch is never extended, so its KV is never read back.
        self.request = KitRequest(rows=self.rows, skip_kv_cache_write=attention_takes_kv_directly(runner))
        self.graph = None
        self.output: Any = None
        self._plan = None  # the backend's plan for this batch, when it is the backend's current one
        self._captured_plan = None
        self.holds_kv = True  # a captured bucketed call gives its KV slots back
        self.released = False

    @property
    def key(self) -> tuple[int, ...]:
        """What another batch must share to be loaded into this call: its bucket, else its layout."""
        return self.layout if self.bucket is None else self.bucket.key

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
        if self.graph is None or self.bucket is None:  # a bucketed graph writes its own plan
            self._ensure_planned()
        if self.graph is None:
            return self._call()
        self.graph.replay()
        return self.output

    def _staged(self, values, dtype):
        """A host tensor to copy into the device from (pinned where the batch is on CUDA)."""
        import torch

        tensor = torch.tensor(values, dtype=dtype)
        return tensor.pin_memory() if self.forward_batch.input_ids.is_cuda else tensor

    def _staging_values(self, packed_lists, rows) -> list[int]:
        """Token ids, positions, rows, then the query offsets, as `_scatter_staging` reads them."""
        flat = [t for seq in packed_lists for t in seq]
        return flat + self.bucket.positions() + list(rows) + [0, *itertools.accumulate(self.layout)]

    def _scatter_staging(self) -> None:
        """Inside the graph: the staged batch into the static inputs and the plan."""
        fb, total, staging = self.forward_batch, self.bucket.total, self._staging
        fb.input_ids.copy_(staging[:total])
        fb.positions.copy_(staging[total : 2 * total])
        self.rows.copy_(staging[2 * total : 2 * total + len(self.rows)])
        _write_extend_lengths(self._plan, staging[2 * total + len(self.rows) :])

    def load(self, token_lists: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> None:
        """Copy another batch into the static inputs: one of the same layout, or, once captured,
        any batch of the same bucket."""
        lengths = tuple(len(ids) for ids in token_lists)
        if self.bucket is None:
            if lengths != self.layout:
                raise ValueError("load() needs a batch of the same layout (sequence lengths) as this one")
            packed_lists = token_lists
        else:
            bucket = bucket_of(self.runner, lengths)
            if bucket.key != self.bucket.key:
                raise ValueError(f"load() needs a batch of bucket {self.bucket.key}, not {bucket.key}")
            if bucket.packed_lengths != self.layout and self.graph is None:
                raise ValueError("an eager call is planned for its own lengths: load() needs the same ones")
            packed_lists = bucket.pad(token_lists, self.filler_token)
            self.bucket, self.layout = bucket, bucket.packed_lengths
            if self.graph is not None:  # one copy; the graph scatters it
                values = self._staging_values(packed_lists, rows)
                self._staging.copy_(self._staged(values, self._staging.dtype), non_blocking=True)
                return
        # Eager: the same lengths, so positions and plan stand; only the tokens and rows are new.
        fb, pinned = self.forward_batch, self.forward_batch.input_ids.is_cuda
        fb.input_ids.copy_(
            self._staged([t for seq in packed_lists for t in seq], fb.input_ids.dtype), non_blocking=pinned
        )
        if rows is not None:
            self.rows.copy_(self._staged(list(rows), self.rows.dtype), non_blocking=pinned)

    def capture(self, pool=None) -> None:
        """Warm up on a side stream, then capture the call (torch.cuda.graphs' recipe).

        A bucketed call's plan is widened to the longest sequence any batch of the bucket may
        have, its graph starts with `_scatter_staging`, and its KV slots are given back (the
        capturable backends read k and v as given; the graph never touches the KV pool).
        """
        import torch

        self._ensure_planned()
        bucketed = self.bucket is not None
        if bucketed:
            if self.rows is None:
                raise ValueError("a bucketed call needs the rows it projects (filler rows are nobody's)")
            self._plan.max_extend_len = self.bucket.longest
            fb = self.forward_batch
            offsets = torch.tensor([0, *itertools.accumulate(self.layout)], device=self.rows.device)
            self._staging = torch.cat([fb.input_ids.long(), fb.positions.long(), self.rows, offsets])

        def call():
            if bucketed:
                self._scatter_staging()
            return self._call()

        side = _capture_stream(self.runner.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=side):
            self.output = call()
        self.graph, self._captured_plan = graph, self._plan
        if bucketed and self.request.skip_kv_cache_write:
            free_kv(self.runner)
            self.holds_kv = False

    def release(self) -> None:
        """Drop the graph and give the KV slots back (idempotent)."""
        if self.released:
            return
        self.graph = self.output = self._captured_plan = self._plan = None
        if self.holds_kv:
            free_kv(self.runner)
        self.released = True


class SharedPrefixCall:
    """A batch whose sequences share a prefix: the prefix runs once, then every sequence's rest on
    top of its KV, in each call (so the prefix's KV is always the current weights'). The answer is
    the second call's: SGLang's logits processor gives each whole sequence's last-position logits.
    """

    graph = None  # never captured

    def __init__(self, runner, prefix: Sequence[int], token_lists: Sequence[Sequence[int]]):
        self.prefix_call = ModelCall(runner, [prefix])
        slots = self.prefix_call.forward_batch.out_cache_loc
        self.rest_call = ModelCall(runner, token_lists, prefix_slots=slots)
        self.layout, self.released = self.rest_call.layout, False

    def __call__(self):
        self.prefix_call()
        return self.rest_call()

    def release(self) -> None:
        self.rest_call.release()
        self.prefix_call.released = True  # the same pools, cleared by the first release
        self.released = True


def shared_prefix_length(token_lists: Sequence[Sequence[int]]) -> int:
    """The longest prefix every sequence starts with, leaving each at least one token of its own."""
    first, shortest = token_lists[0], min(len(ids) for ids in token_lists)
    length = 0
    while length < shortest - 1 and all(ids[length] == first[length] for ids in token_lists):
        length += 1
    return length
