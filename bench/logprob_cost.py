"""The kit's prefill and decode step against SGLang's own ``bench_one_batch``, in one run.

    PYTHONPATH=. python bench/logprob_cost.py --device cuda          # Llama-3.2-1B's shape, bf16, graphs on
    PYTHONPATH=. python bench/logprob_cost.py --small --device cpu   # a quick look on CPU

One runner; on it, for the same 16 prompts of 256 random tokens and 64 new tokens (issue #23):

- ``bench_one_batch``: ``sglang.benchmark.one_batch``'s ``extend`` and ``decode`` as its latency
  test runs them (a synchronize after each), the KV pool cleared between repeats;
- the kit: `runner.generate.generate` (what ``sglang_forward.generate`` runs, without the text
  decode), with ``top_logprobs=None`` and with the default ``top_logprobs=5``. Its prefill is a
  generate of one token; its decode step is (a generate of 1 + N tokens - a generate of 1) / N,
  so it counts everything a test waits for per token: the step, reading the tokens and
  logprobs back, the finish checks.

Targets: the kit's decode step with top-k logprobs within 1.2x of its plain step, and its prefill
within 1.1x of bench_one_batch's. ``--profile FILE`` writes the top CUDA and CPU ops of one kit
generate with top-k logprobs. The medians of ``--repeats`` runs are printed as one table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

LLAMA_3_2_1B_SHAPE = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=128256,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    bos_token_id=0,
    eos_token_id=1,
)
SMALL_SHAPE = {**LLAMA_3_2_1B_SHAPE, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2}
TARGETS = {"decode step, top_logprobs=5 / top_logprobs=None": 1.2, "prefill / bench_one_batch": 1.1}


def median_ms(fn, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def bench_one_batch(runner, token_lists, new_tokens: int, repeats: int, sync) -> tuple[float, float]:
    """(prefill ms, decode step ms): SGLang's own extend and decode on the same runner."""
    from sglang.benchmark import one_batch

    prefill, steps = [], []
    for _ in range(repeats + 1):  # the first is a warmup
        runner.req_to_token_pool.clear()
        runner.token_to_kv_pool_allocator.clear()
        reqs = one_batch.prepare_synthetic_inputs_for_latency_test(len(token_lists), 0, custom_inputs=token_lists)
        sync()
        started = time.perf_counter()
        next_ids, _, batch = one_batch.extend(reqs, runner)
        sync()
        prefill.append((time.perf_counter() - started) * 1e3)
        for _ in range(new_tokens):
            started = time.perf_counter()
            next_ids, _ = one_batch.decode(next_ids, batch, runner)
            sync()
            steps.append((time.perf_counter() - started) * 1e3)
    runner.req_to_token_pool.clear()
    runner.token_to_kv_pool_allocator.clear()
    return statistics.median(prefill[1:]), statistics.median(steps[new_tokens:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="a 2-layer, 256-wide model of the same vocabulary")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs (they are on by default on CUDA)")
    parser.add_argument("--profile", type=Path, help="write the top ops of one kit generate with top-k logprobs")
    args = parser.parse_args()

    import torch

    from pytest_sglang_runner.models.embedded_llama import write_random_llama
    from pytest_sglang_runner.options import RunnerSpec
    from pytest_sglang_runner.runner import RunnerFactory
    from pytest_sglang_runner.runner.generate import generate

    shape = SMALL_SHAPE if args.small else LLAMA_3_2_1B_SHAPE
    model = write_random_llama(Path(tempfile.mkdtemp(prefix="llama-logprob-")), shape=shape, dtype=args.dtype)
    cuda = args.device.startswith("cuda")
    graphs = cuda and not args.eager
    spec = RunnerSpec(
        model=str(model),
        device=args.device,
        dtype=args.dtype,
        max_total_tokens=max(8192, 2 * args.batch * (args.input_len + args.output_len)),
    ).with_overrides(disable_cuda_graph=not graphs)
    factory = RunnerFactory(default_spec=spec, cache_root=Path(tempfile.gettempdir()) / "pytest-sglang-runner-bench")
    runner = factory.get().model_runner
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    token_lists = torch.randint(2, 10000, (args.batch, args.input_len), generator=generator).tolist()

    def kit(new_tokens: int, top_logprobs: int | None):
        return lambda: generate(
            runner, token_lists, max_new_tokens=new_tokens, top_logprobs=top_logprobs, ignore_eos=True
        )

    for top in (None, 5):  # warmup: graphs, kernels, allocator
        kit(args.output_len + 1, top)()
    rows = {}
    for top in (None, 5):
        one = median_ms(kit(1, top), args.repeats, sync)
        many = median_ms(kit(args.output_len + 1, top), args.repeats, sync)
        rows[f"kit prefill, top_logprobs={top}"] = one
        rows[f"kit decode step, top_logprobs={top}"] = (many - one) / args.output_len
    reference_prefill, reference_step = bench_one_batch(runner, token_lists, args.output_len, args.repeats, sync)
    rows["bench_one_batch prefill"] = reference_prefill
    rows["bench_one_batch decode step"] = reference_step

    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        f"# {device}, {args.dtype}, {'CUDA graphs' if graphs else 'eager'}, {args.batch} x {args.input_len} "
        f"prompt tokens, {args.output_len} new tokens, medians of {args.repeats}"
    )
    print("| measured | ms |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.3f} |")
    ratios = {
        "decode step, top_logprobs=5 / top_logprobs=None": rows["kit decode step, top_logprobs=5"]
        / rows["kit decode step, top_logprobs=None"],
        "decode step, top_logprobs=None / bench_one_batch": rows["kit decode step, top_logprobs=None"] / reference_step,
        "decode step, top_logprobs=5 / bench_one_batch": rows["kit decode step, top_logprobs=5"] / reference_step,
        "prefill / bench_one_batch": rows["kit prefill, top_logprobs=None"] / reference_prefill,
        "prefill with prompt logprobs / bench_one_batch": rows["kit prefill, top_logprobs=5"] / reference_prefill,
    }
    print("\n| ratio | value | target | met |\n|---|---|---|---|")
    for name, value in ratios.items():
        target = TARGETS.get(name)
        met = "" if target is None else ("yes" if value <= target else f"no, by {value / target - 1:.0%}")
        print(f"| {name} | {value:.2f} | {'' if target is None else f'<= {target}'} | {met} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            kit(args.output_len + 1, 5)()
            sync()
        sort = "cuda_time_total" if cuda else "cpu_time_total"
        args.profile.write_text(prof.key_averages().table(sort_by=sort, row_limit=30))
    factory.close()


if __name__ == "__main__":
    main()
