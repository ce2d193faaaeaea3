"""The runner's internals: how a spec becomes a live ModelRunner, how prompts reach it, and how it goes.

- `plan`: a spec resolved once (model directory, device, GPUs, dtype, backend) and its ServerArgs;
- `build`: one rank built from a plan, its KV budget checked, warmed up;
- `peers`: the TP ranks beyond 0 in their processes, and both ends of the protocol to them;
- `live` / `factory`: the live runner, and the factory that builds, reuses and tears it down;
- `forward` / `generate` / `limits`: prompts in, logits and generations out, batches checked first;
- `ranks`: code on every TP rank at once (the every-rank test mode);
- `build_errors` / `quiet`: a failed build in the kit's words; SGLang's noise kept out of tests.

May import: the leaf modules, the version adapter (`sglang_compat`), the kit's settings and
process helpers (`options`, `devices`, `ports`, `timeouts`, `model_dir`) and its models. Never the
plugin, the services or MeZO (they build on this).
"""

from .factory import RunnerFactory, teardown
from .forward import Forward, ForwardResult
from .live import BuildRecord, LiveRunner
from .plan import BuildPlan

__all__ = ["BuildPlan", "BuildRecord", "Forward", "ForwardResult", "LiveRunner", "RunnerFactory", "teardown"]
