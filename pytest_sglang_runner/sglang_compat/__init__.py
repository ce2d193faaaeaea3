"""The SGLang version adapter: every difference between SGLang releases lives in this package.

- `process`: the environment SGLang reads at import, the import itself, which bootstrap API it has;
- `server_args`: ``--sglang-arg KEY=VALUE`` checked and typed against this SGLang's ``ServerArgs``;
- `bootstrap`: one rank's ModelRunner built in the order this SGLang needs, and torn down;
- `shims`: what a plain install cannot run as it stands (CPU layers, dropped config attributes,
  kernels without a dtype) and what the kit does about it;
- `batches`: extend batches and greedy decode steps through the scheduler's own preparation;
- `graphs`: one extend batch straight through ``runner.model``, eager or as a CUDA graph;
- `serving`: SGLang's own Engine and server hosted by the kit (the shims in every process SGLang
  spawns there, requests in and answers out in the kit's types).

The rest of the kit imports from here, never from SGLang's batch or bootstrap modules directly.
"""

from .batches import (
    GreedyBatch,
    Limits,
    PackedBatch,
    Step,
    free_kv,
    free_kv_slots,
    kit_call,
    pack_batch,
    per_token_outputs,
    prefix_cache_disabled,
    run_packed,
    runner_limits,
)
from .bootstrap import barrier, build_model_runner, destroy_distributed_state, tp_world_size
from .graphs import CAPTURABLE_BACKENDS, ModelCall, can_capture
from .process import (
    SUPPORTED_VERSIONS,
    UnsupportedSGLang,
    detect_api,
    import_sglang,
    installed_version,
    prepare_process,
    supported_architectures,
    uses_cpu_engine,
)
from .server_args import check_attention_backend, make_server_args, resolved, typed_server_args
from .shims import cpu_less_op, cpu_native_layers, fill_config_gaps, kv_pool_does_not_fit, refused_dtype

__all__ = [
    "CAPTURABLE_BACKENDS",
    "SUPPORTED_VERSIONS",
    "GreedyBatch",
    "Limits",
    "ModelCall",
    "PackedBatch",
    "Step",
    "UnsupportedSGLang",
    "barrier",
    "build_model_runner",
    "can_capture",
    "check_attention_backend",
    "cpu_less_op",
    "cpu_native_layers",
    "destroy_distributed_state",
    "detect_api",
    "fill_config_gaps",
    "free_kv",
    "free_kv_slots",
    "import_sglang",
    "kit_call",
    "installed_version",
    "kv_pool_does_not_fit",
    "make_server_args",
    "pack_batch",
    "per_token_outputs",
    "prefix_cache_disabled",
    "prepare_process",
    "refused_dtype",
    "resolved",
    "run_packed",
    "runner_limits",
    "supported_architectures",
    "tp_world_size",
    "typed_server_args",
    "uses_cpu_engine",
]
