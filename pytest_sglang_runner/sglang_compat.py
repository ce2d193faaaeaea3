"""Every difference between SGLang releases lives here, and nowhere else.

The two API generations the kit supports, told apart by the API itself, not the version string:

* ``runner-builds-groups`` (SGLang 0.5.17): ``ModelRunner(ps=ParallelState(...), nccl_port=...)``
  publishes the config and builds the world and model-parallel groups itself.
* ``caller-builds-groups`` (SGLang 0.5.23): the caller runs ``server_args.resolve_once()``,
  ``publish(..., ranks=SpawnRanks(...))``, the process-global config initialisers,
  ``bootstrap.init_parallel_runtime`` and ``bootstrap.init_layer_runtime`` before
  ``ModelRunner(...)``.

Calling ``initialize_model_parallel`` before the world group exists is what produces the
"world group is not initialized" error users hit; neither path does that. Nothing here installs
SGLang's server-side process effects (``_set_envs_and_config``: the SIGQUIT handler that kills
the process tree, the forced ``spawn`` start method).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import types
import typing
from array import array
from dataclasses import dataclass
from typing import Any, Sequence

from .options import SpecError

SUPPORTED_VERSIONS = {
    "0.5.17": "runner-builds-groups",
    "0.5.23": "caller-builds-groups",
}

# The runner's modules plus those it would otherwise import lazily inside a build.
_IMPORTED_ON_A_CLEAN_STACK = (
    "sglang.srt.server_args",
    "sglang.srt.configs.model_config",
    "sglang.srt.distributed.bootstrap",
    "sglang.srt.model_executor.model_runner",
    "sglang.srt.model_executor.forward_batch_info",
    "sglang.srt.managers.schedule_batch",
    "sglang.srt.utils.torch_memory_saver_adapter",
    "sglang.srt.layers.quantization.mxfp4",
    "sglang.srt.layers.attention.dsa.dsa_indexer",
    "sglang.srt.layers.attention.torch_native_backend",
    "sglang.srt.layers.attention.triton_backend",
)


class UnsupportedSGLang(RuntimeError):
    """The installed SGLang's API is not one the kit knows how to bootstrap."""


def prepare_process(device: str, tp: int = 1) -> None:
    """Environment SGLang reads (some of it once, at import); call before the first SGLang import."""
    if device == "cpu" and tp > 1 and "SGLANG_CPU_OMP_THREADS_BIND" not in os.environ:
        # SGLang's CPU path wants one NUMA node per rank unless told which cores each rank uses.
        cores = sorted(os.sched_getaffinity(0))
        share = max(1, len(cores) // tp)
        groups = [cores[(rank * share) % len(cores) : (rank * share) % len(cores) + share] for rank in range(tp)]
        os.environ["SGLANG_CPU_OMP_THREADS_BIND"] = "|".join(f"{g[0]}-{g[-1]}" for g in groups)
    if device == "cpu":
        # A CUDA build of torch on a GPU-less machine makes SGLang try PyNccl for TP>1.
        os.environ.setdefault("SGLANG_NCCL_SO_PATH", "/nonexistent")
        # The first TP>1 forward would torch.compile a helper for 10-20 s on CPU, same outputs.
        os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
    # Keep SGLang on its plain CPU path unless the user chose its Xeon engine explicitly.
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "0")


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        raise UnsupportedSGLang(
            f"SGLang is not installed; pip install 'sglang' (supported: {', '.join(SUPPORTED_VERSIONS)})"
        ) from None


def detect_api() -> str:
    """Which bootstrap order the installed SGLang needs."""
    from sglang.srt.distributed import bootstrap
    from sglang.srt.model_executor.model_runner import ModelRunner

    runner_params = inspect.signature(ModelRunner.__init__).parameters
    if hasattr(bootstrap, "init_parallel_runtime") and "ps" not in runner_params:
        return "caller-builds-groups"
    if "ps" in runner_params and hasattr(bootstrap, "init_torch_distributed"):
        return "runner-builds-groups"
    supported = ", ".join(f"{v} ({api})" for v, api in SUPPORTED_VERSIONS.items())
    raise UnsupportedSGLang(
        f"SGLang {installed_version()} has a ModelRunner bootstrap this kit does not know; supported: {supported}. "
        "Install one of those (pip install 'sglang==0.5.23') or a newer pytest-sglang-runner."
    )


def import_sglang() -> None:
    """Import SGLang's runner modules on a thread of their own, once.

    Some SGLang modules keep a failed optional import's exception in a module global. Its
    traceback holds every frame of the importing stack; imported from the build's own stack,
    that pins the first runner (weights, KV pool) for the life of the process. A fresh
    thread's stack holds nothing of ours.
    """
    errors: list[BaseException] = []

    def load() -> None:
        try:
            for name in _IMPORTED_ON_A_CLEAN_STACK:
                try:
                    importlib.import_module(name)
                except ImportError:
                    if not name.startswith("sglang.srt.layers"):
                        raise
            from sglang.srt.models.registry import ModelRegistry

            ModelRegistry.get_supported_archs()  # imports every model module now
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    import threading

    thread = threading.Thread(target=load, name="sglang-import")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------------------------
# ServerArgs
# ---------------------------------------------------------------------------------------------


def _base_type(annotation: Any) -> Any:
    """``T`` from ``Optional[T]``; other unions read as text."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def _coerce(key: str, raw: Any, annotation: Any, choices: Sequence[Any] | None) -> Any:
    base = _base_type(annotation)
    value = raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if text.lower() in ("none", "null"):
                value = None
            elif base is bool:
                if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = text.lower() in ("1", "true", "yes", "on")
            elif base is int:
                value = int(text)
            elif base is float:
                value = float(text)
            elif base in (list, dict) or typing.get_origin(base) in (list, dict):
                value = json.loads(text)
            else:
                value = text
        except ValueError:
            type_name = getattr(base, "__name__", str(base))
            raise SpecError(f"--sglang-arg {key}={raw}: expected a {type_name} value") from None
    if choices and value is not None and value not in choices:
        raise SpecError(f"--sglang-arg {key}={raw}: expected one of {', '.join(map(str, choices))}")
    return value


def _server_args_schema() -> tuple[set[str], dict[str, Any], dict[str, Sequence[Any]]]:
    """Field names, their types and their CLI choices, as the installed SGLang declares them."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    names = set(inspect.signature(ServerArgs).parameters)
    hints = typing.get_type_hints(ServerArgs)  # evaluates string annotations (0.5.17)
    parser = argparse.ArgumentParser(add_help=False)
    ServerArgs.add_cli_args(parser)
    choices = {action.dest: action.choices for action in parser._actions if action.choices}
    return names, hints, choices


def typed_server_args(extra: dict[str, Any]) -> dict[str, Any]:
    """Check user ``KEY=VALUE`` pairs against this SGLang's ServerArgs and give them their types."""
    if not extra:
        return {}
    names, hints, choices = _server_args_schema()
    typed = {}
    for key, raw in extra.items():
        if key not in names:
            close = [name for name in sorted(names) if key in name or name in key][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SpecError(f"--sglang-arg {key}=...: SGLang {installed_version()} has no ServerArgs field {key!r}{hint}")
        typed[key] = _coerce(key, raw, hints.get(key, str), choices.get(key))
    return typed


def make_server_args(**kwargs: Any):
    from sglang.srt.server_args import ServerArgs

    fields = inspect.signature(ServerArgs).parameters
    return ServerArgs(**{k: v for k, v in kwargs.items() if k in fields})


def resolved(server_args, name: str) -> Any:
    """A ServerArgs value after SGLang's own resolution (0.5.23 resolves into a separate view)."""
    try:
        from sglang.srt.arg_groups.overrides import resolving_view
    except ImportError:
        return getattr(server_args, name)
    return getattr(resolving_view(server_args), name)


# ---------------------------------------------------------------------------------------------
# Build and teardown
# ---------------------------------------------------------------------------------------------


def build_model_runner(server_args, *, tp_rank: int, gpu_id: int, dist_port: int, device: str):
    """A fully initialised ModelRunner (weights, KV pool, attention backend, graphs) for one rank."""
    api = detect_api()
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_executor.model_runner import ModelRunner

    if api == "caller-builds-groups":
        from sglang.srt.distributed import bootstrap
        from sglang.srt.layers.moe import initialize_moe_config
        from sglang.srt.layers.quantization.fp4_utils import initialize_fp4_gemm_config
        from sglang.srt.layers.quantization.fp8_utils import initialize_fp8_gemm_config
        from sglang.srt.layers.quantization.unquant import initialize_bf16_gemm_config
        from sglang.srt.runtime_context import SpawnRanks, publish, spawn_world_rank

        server_args.resolve_once()
        world_rank = spawn_world_rank(server_args, tp_rank=tp_rank, pp_rank=0)
        publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=world_rank, gpu_id=gpu_id))
        initialize_moe_config()
        initialize_fp8_gemm_config()
        initialize_bf16_gemm_config()
        initialize_fp4_gemm_config()
        model_config = ModelConfig.from_server_args(server_args)
        bootstrap.init_parallel_runtime(server_args=server_args, device=device, dist_port=dist_port)
        bootstrap.init_layer_runtime(model_config=model_config)
        runner = ModelRunner(
            model_config=model_config,
            mem_fraction_static=resolved(server_args, "mem_fraction_static"),
            gpu_id=gpu_id,
            nccl_port=dist_port,
            server_args=server_args,
        )
    else:
        from sglang.srt.distributed.parallel_state_wrapper import ParallelState
        from sglang.srt.layers.dp_attention import compute_dp_attention_world_info
        from sglang.srt.runtime_context import publish

        publish(server_args, role="scheduler")
        model_config = ModelConfig.from_server_args(server_args)
        attn_tp_rank, attn_tp_size, attn_dp_rank, attn_dp_size = compute_dp_attention_world_info(
            server_args.enable_dp_attention, tp_rank, server_args.tp_size, server_args.dp_size, server_args.attn_cp_size
        )
        ps = ParallelState(
            tp_rank=tp_rank,
            tp_size=server_args.tp_size,
            pp_rank=0,
            pp_size=1,
            dp_rank=None,
            dp_size=server_args.dp_size,
            attn_tp_rank=attn_tp_rank,
            attn_tp_size=attn_tp_size,
            attn_cp_rank=0,
            attn_cp_size=server_args.attn_cp_size,
            attn_dp_rank=attn_dp_rank,
            attn_dp_size=attn_dp_size,
            moe_ep_rank=tp_rank // (server_args.tp_size // server_args.ep_size),
            moe_ep_size=server_args.ep_size,
            moe_dp_rank=None,
            moe_dp_size=server_args.moe_dp_size,
            dcp_size=server_args.dcp_size,
            gpu_id=gpu_id,
        )
        runner = ModelRunner(
            model_config=model_config,
            mem_fraction_static=server_args.mem_fraction_static,
            gpu_id=gpu_id,
            ps=ps,
            nccl_port=dist_port,
            server_args=server_args,
        )
    runner.alloc_memory_pool()
    runner.init_attention_backends()
    runner.init_cuda_graphs()
    return runner


def destroy_distributed_state() -> None:
    """Undo everything a build published or initialised, so the next build starts clean."""
    from sglang.srt.distributed import parallel_state

    parallel_state.destroy_model_parallel()
    parallel_state.destroy_distributed_environment()
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    from sglang.srt import runtime_context

    reset = getattr(runtime_context, "reset_context", None)
    if reset is not None:
        reset()


def barrier() -> None:
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------
# One forward without the scheduler
# ---------------------------------------------------------------------------------------------


class _NoPrefixCache(types.SimpleNamespace):
    """What ScheduleBatch asks of a tree cache when nothing is cached (as in SGLang's one_batch)."""

    def supports_swa(self) -> bool:
        return False

    def supports_mamba(self) -> bool:
        return False

    def supports_prefix_sharing(self) -> bool:
        return True

    def is_chunk_cache(self) -> bool:
        return False

    def is_tree_cache(self) -> bool:
        return True

    def evict(self, params) -> None:
        pass

    def maybe_hand_to_session(self, req) -> None:
        pass


def _page_size(runner) -> int:
    try:
        from sglang.srt.runtime_context import get_schedule

        return get_schedule().page_size
    except (ImportError, AttributeError):
        return runner.server_args.page_size


def _make_request(index: int, token_ids: Sequence[int]):
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    req = Req(
        rid=str(index),
        origin_input_text="",
        origin_input_ids=array("q", token_ids),
        sampling_params=SamplingParams(temperature=0, max_new_tokens=0),
    )
    req.full_untruncated_fill_ids = req.origin_input_ids
    req.logprob_start_len = -1
    if hasattr(req, "set_extend_range"):  # runner-builds-groups generation
        req.set_extend_range(len(req.prefix_indices), len(req.origin_input_ids))
    else:
        req.extend_end = len(req.origin_input_ids)
    return req


@dataclass
class PackedBatch:
    """The SGLang objects for one extend batch; `forward_batch` can be run again as is."""

    schedule_batch: Any
    forward_batch: Any


def pack_batch(runner, token_lists: Sequence[Sequence[int]], capture_hidden: bool = False) -> PackedBatch:
    from sglang.srt.managers.schedule_batch import ScheduleBatch
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    tree_cache = _NoPrefixCache(
        page_size=_page_size(runner), device=runner.device, token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator
    )
    batch = ScheduleBatch.init_new(
        reqs=[_make_request(i, ids) for i, ids in enumerate(token_lists)],
        req_to_token_pool=runner.req_to_token_pool,
        token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator,
        tree_cache=tree_cache,
        model_config=runner.model_config,
        enable_overlap=False,
        spec_algorithm=SpeculativeAlgorithm.NONE,
    )
    batch.prepare_for_extend()
    if batch.input_ids is None and getattr(batch, "prefill_input_ids_cpu", None) is not None:
        batch.input_ids = batch.prefill_input_ids_cpu.to(batch.device, non_blocking=True)
        batch.prefill_input_ids_cpu = None
    forward_batch = ForwardBatch.init_new(batch, runner, return_hidden_states_before_norm=False)
    if capture_hidden and runner.is_generation:
        from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode

        forward_batch.capture_hidden_mode = CaptureHiddenMode.FULL
    return PackedBatch(batch, forward_batch)


def run_packed(runner, packed: PackedBatch):
    """The model's raw output for a packed batch (LogitsProcessorOutput, EmbeddingPoolerOutput, ...)."""
    output = runner.forward(packed.forward_batch)
    return getattr(output, "logits_output", output)


def free_kv(runner) -> None:
    """Give every request slot and KV slot back (only one packed batch is ever alive)."""
    runner.req_to_token_pool.clear()
    runner.token_to_kv_pool_allocator.clear()


def prefix_cache_disabled(runner) -> bool:
    return bool(resolved(runner.server_args, "disable_radix_cache"))
