"""What the check between tests costs (`plugin.guard`), against a typical decoder test, in one run.

    PYTHONPATH=.:bench python bench/guard_cost.py                        # CPU: the embedded decoder
    PYTHONPATH=.:bench python bench/guard_cost.py --device cuda --llama-1b  # GPU: Llama-3.2-1B's shape, bf16

Each runner test pays for two fingerprints (`runner.guard.RunnerState.of`: every parameter's
bytes summed as integers, one transfer back, plus the KV pool's free slots). A typical test here
is what tests/test_decoder.py's tests do: 4 prompts, a greedy generate of 16 tokens with top-5
logprobs. Target (issue #24): the two fingerprints under 2% of that test. Medians of --repeats.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from logprob_cost import LLAMA_3_2_1B_SHAPE, median_ms  # bench/ is on PYTHONPATH, as the docstring runs it

PROMPTS = ["the film was", "the music and the film were very", "It", "this story is really good ! the acting"]
TARGET = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--llama-1b", action="store_true", help="Llama-3.2-1B's shape, random weights")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import torch

    from pytest_sglang_runner.options import RunnerSpec
    from pytest_sglang_runner.runner import RunnerFactory
    from pytest_sglang_runner.runner.guard import RunnerState

    cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    cache = Path(tempfile.gettempdir()) / "pytest-sglang-runner-bench"
    model = "embedded-llama"
    if args.llama_1b:
        from pytest_sglang_runner.models.embedded_llama import write_random_llama

        model = str(write_random_llama(Path(tempfile.mkdtemp(prefix="llama-1b-")), LLAMA_3_2_1B_SHAPE, dtype))
    factory = RunnerFactory(default_spec=RunnerSpec(model=model, device=args.device, dtype=dtype), cache_root=cache)
    live = factory.get()
    runner = live.model_runner
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    parameters = sum(p.numel() for p in runner.model.parameters())
    tensors = len(list(runner.model.parameters()))

    def typical_test():
        live.forward.generate(PROMPTS, max_new_tokens=16, top_logprobs=5)

    typical_test()
    RunnerState.of(runner)
    test_ms = median_ms(typical_test, args.repeats, sync)
    fingerprint_ms = median_ms(lambda: RunnerState.of(runner), args.repeats, sync)
    share = 2 * fingerprint_ms / test_ms
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        f"# {device}, {dtype}, {model if not args.llama_1b else 'Llama-3.2-1B shape'}: {parameters / 1e6:.1f}M parameters in {tensors} tensors"
    )
    print("| fingerprint ms | typical test ms | two fingerprints / test | target | met |\n|---|---|---|---|---|")
    met = "yes" if share <= TARGET else f"no, by {share / TARGET - 1:.0%}"
    print(f"| {fingerprint_ms:.3f} | {test_ms:.2f} | {share:.2%} | <= {TARGET:.0%} | {met} |")
    factory.close()


if __name__ == "__main__":
    main()
