"""One rank's runner built from a plan, checked and warmed up (the same on rank 0 and the peers)."""

from __future__ import annotations

from ..errors import SpecError
from ..models import register_kit_models
from ..options import RunnerSpec
from ..sglang_compat import batches, bootstrap, server_args
from .build_errors import mem_fraction_flag
from .generate import generate
from .plan import BuildPlan

WARM_UP_PROMPT = [[0, 1]]
WARM_UP_NEW_TOKENS = 2


def build_rank(plan: BuildPlan, kwargs: dict, rank: int):
    """Rank ``rank``'s ModelRunner from the ServerArgs ``kwargs`` (with the kit's models registered)."""
    register_kit_models()
    args = server_args.make_server_args(**kwargs)
    runner = bootstrap.build_model_runner(
        args, tp_rank=rank, gpu_id=plan.gpu_ids[rank], dist_port=kwargs["nccl_port"], device=plan.device
    )
    check_kv_budget(runner, plan.spec)
    warm_up(runner)
    return runner


def check_kv_budget(runner, spec: RunnerSpec) -> None:
    """A pool too small for the warm-up is a bad setting, named as such (SGLang sizes its request
    slots from the pool, so a 1-token pool would otherwise blame max_running_requests)."""
    limits = batches.runner_limits(runner)
    needed = sum(map(len, WARM_UP_PROMPT)) + (WARM_UP_NEW_TOKENS if runner.is_generation else 0)
    if limits.kv_slots >= needed and limits.request_slots >= len(WARM_UP_PROMPT):
        return
    sized = f"SGLang sized this runner to {limits.kv_slots} KV token slot(s) and {limits.request_slots} request slot(s)"
    if limits.kv_slots < spec.max_total_tokens:  # memory, not the option, was the limit
        raise SpecError(
            f"{mem_fraction_flag(spec)}: {sized}, too few for one {needed}-token sequence; raise --sglang-mem-fraction"
        )
    raise SpecError(
        f"--sglang-max-total-tokens {spec.max_total_tokens}: {sized}, too few for one {needed}-token sequence; "
        f"use at least {2 * needed} (the default is {RunnerSpec.max_total_tokens})"
    )


def warm_up(runner) -> None:
    """Two tokens through every path a test takes (prompt; a decode step for generative models).

    A kernel that cannot run this model (a dtype it lacks, an op missing on this device) then
    fails the build, once, with advice, instead of every test with a traceback from inside SGLang.
    Every TP rank runs it at the same point, so its collectives line up.
    """
    if runner.is_generation:
        generate(runner, WARM_UP_PROMPT, max_new_tokens=WARM_UP_NEW_TOKENS, top_logprobs=None, ignore_eos=True)
    else:
        try:
            batches.run_packed(runner, batches.pack_batch(runner, WARM_UP_PROMPT))
        finally:
            batches.free_kv(runner)
