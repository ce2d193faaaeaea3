"""Building one rank's ModelRunner in the order the installed SGLang needs, and undoing it.

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

from .config_gaps import fill_config_gaps, fill_config_gaps_while_parsing
from .process import cpu_threads_bind, detect_api
from .server_args import resolved
from .shims import cpu_native_layers, default_dtype_kept, float32_conv_state, loopback_rendezvous


def build_model_runner(server_args, *, tp_rank: int, gpu_id: int, dist_port: int, device: str):
    """A fully initialised ModelRunner (weights, KV pool, attention backend, graphs) for one rank."""
    with (
        cpu_native_layers(device),
        cpu_threads_bind(device, server_args.tp_size),
        loopback_rendezvous(),
        default_dtype_kept(),
        float32_conv_state(getattr(server_args, "dtype", None)),
    ):
        return _build(server_args, tp_rank=tp_rank, gpu_id=gpu_id, dist_port=dist_port, device=device)


def _build(server_args, *, tp_rank: int, gpu_id: int, dist_port: int, device: str):
    api = detect_api()
    fill_config_gaps_while_parsing()
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
        fill_config_gaps(model_config.hf_config)
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
        fill_config_gaps(model_config.hf_config)
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
    _init_mamba_backend(server_args)
    runner.alloc_memory_pool()
    runner.init_attention_backends()
    runner.init_cuda_graphs()
    return runner


def _init_mamba_backend(server_args) -> None:
    """The Mamba state-update kernel's backend, which SGLang's scheduler chooses at its start
    (``Scheduler.init_mamba_backend``, both API generations): without it a Mamba layer's decode on
    CUDA fails ("backend not initialized"), first in the CUDA-graph capture."""
    from sglang.kernels.ops.mamba.triton_ops import initialize_mamba_selective_state_update_backend

    initialize_mamba_selective_state_update_backend(server_args)


def destroy_distributed_state() -> None:
    """Undo everything a build published or initialised, so the next build starts clean."""
    from sglang.srt.distributed import parallel_state

    parallel_state.destroy_model_parallel()
    # 0.5.23 builds a singleton "self_pp" group that destroy_model_parallel forgets: it kept the
    # rendezvous store and two gloo listeners open after close, and the next build reused it.
    if getattr(parallel_state, "_SELF_PP", None) is not None:
        parallel_state._SELF_PP.destroy()
        parallel_state._SELF_PP = None
    parallel_state.destroy_distributed_environment()
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    from sglang.srt import runtime_context

    reset = getattr(runtime_context, "reset_context", None)
    if reset is not None:
        reset()


def tp_world_size() -> int:
    """Ranks in this runner's TP group: 0.5.23 reads it from its parallel context (and deprecates
    ``get_tp_group`` and ``get_tensor_model_parallel_world_size``); 0.5.17 from the group."""
    from sglang.srt import runtime_context

    if hasattr(runtime_context, "get_parallel"):
        return runtime_context.get_parallel().tp_group.world_size
    from sglang.srt.distributed.parallel_state import get_tp_group

    return get_tp_group().world_size


def barrier() -> None:
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.barrier()
