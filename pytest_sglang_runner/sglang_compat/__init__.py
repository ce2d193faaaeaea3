"""The SGLang version adapter: every difference between SGLang releases lives in this package.

- `process`: the environment SGLang reads at import, the import itself, which bootstrap API it has;
- `server_args`: ``--sglang-arg KEY=VALUE`` checked and typed against this SGLang's ``ServerArgs``;
- `bootstrap`: one rank's ModelRunner built in the order this SGLang needs, and torn down;
- `shims`: what a plain install cannot run as it stands (CPU layers, kernels without a dtype, the
  rendezvous, the conv-state dtype) and what the kit does about it;
- `config_gaps`: config attributes transformers 5 dropped or moved that SGLang's model classes still
  read, filled per ``model_type`` from the new layout (Gemma2, DeepSeek V2/V3, Qwen3-Next, Mamba2, ...);
- `cpu_ops`: torch stand-ins for SGLang functions that exist only as Triton/CUDA kernels (MoE gates
  and experts, logit soft-cap, causal conv1d, the Mamba2 scan, attention sinks, MLA on torch_native),
  installed once per process for plain CPU runners and dispatching on the tensor's device;
- `batches`: extend batches through the scheduler's own preparation, the runner's limits and KV pool;
- `decoding`: decode steps as the scheduler runs them, greedy or sampled;
- `logits`: every position's logits of a decoder, from SGLang's own logits processor;
- `graphs`: one extend batch straight through ``runner.model``, eager or as a CUDA graph, exact or
  padded to a size bucket;
- `attention`: the kit's encoder attention on the Triton kernel without SGLang's k/v copies;
- `serving`: SGLang's own Engine and server hosted by the kit (the shims in every process SGLang
  spawns there, requests in and answers out in the kit's types).

The rest of the kit imports these modules by name (``from ..sglang_compat import batches``),
never SGLang's batch or bootstrap modules directly. This package imports nothing of the kit but
its leaf modules (`errors`, `results`, `model_io`, `paths`, `buckets`): the kit registers its models and
builds its runner from above.
"""
