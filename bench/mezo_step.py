"""MeZO step time on the SGLang runner vs HF, with a floor; a benchmark script, not a test.

    PYTHONPATH=. python bench/mezo_step.py                       # embedded model, CPU
    PYTHONPATH=. python bench/mezo_step.py --model DIR --device cuda --dtype bfloat16 --batch 64 --seq 128

Rows: one forward of a prepared batch (HF, runner), one perturbation pass (regenerate z for
every parameter and write master + eps z into the model), a full MeZO step (zo_step + zo_update)
on each backend, and the floor = 2 runner forwards + 4 passes (3 perturbations, 1 update).
Note: the runner's RoBERTa computes vocabulary logits for every token; the HF path only at <mask>.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def timed(fn, repeat: int, sync) -> float:
    fn()
    sync()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - started) / repeat * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="model directory (default: the embedded RoBERTa)")
    ap.add_argument("--roberta-large-random", action="store_true", help="write and use a RoBERTa-large-shaped model with random weights")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--attention-backend", default="")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave as is)")
    args = ap.parse_args()

    import torch

    from pytest_sglang_runner import mezo
    from pytest_sglang_runner.lifecycle import RunnerFactory
    from pytest_sglang_runner.options import RunnerSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.roberta_large_random:
        from pytest_sglang_runner.models.embedded import write_random_roberta

        args.model = str(write_random_roberta(Path(tempfile.mkdtemp(prefix="roberta-large-random-"))))
    spec = RunnerSpec(model=args.model, device=args.device, dtype=args.dtype, attention_backend=args.attention_backend,
                      max_total_tokens=max(4096, 2 * args.batch * args.seq))
    factory = RunnerFactory(default_spec=spec, cache_root=Path(tempfile.gettempdir()) / "pytest-sglang-runner-bench")
    live = factory.get()
    try:
        runner = live.model_runner
        device = str(runner.device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        dtype = getattr(torch, args.dtype)
        from transformers import AutoModelForMaskedLM

        model_path = factory.model_path()
        hf = AutoModelForMaskedLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        config = runner.model_config.hf_config
        g = torch.Generator().manual_seed(0)
        body = lambda: torch.randint(5, config.vocab_size - 1, (args.seq - 3,), generator=g).tolist()  # noqa: E731
        mask_id = getattr(config, "mask_token_id", None) or config.vocab_size - 1
        examples = [mezo.Encoded(tuple([config.bos_token_id, *body(), mask_id, config.eos_token_id]), args.seq - 2, i % 2)
                    for i in range(args.batch)]
        labels = [5, 6]
        rows = []
        for name, lm in (("hf", mezo.HFMaskedLM(hf)), ("runner", mezo.SGLangMaskedLM(runner, live.forward))):
            objective = mezo.PromptObjective(lm, labels)
            opt = mezo.MeZO(lm.views, objective, lr=1e-6, eps=1e-3, on_weights_changed=lm.weights_changed)
            prepared = objective.prepare(examples)
            fwd_ms = timed(lambda: objective.loss(prepared), args.repeat, sync)
            objective.release(prepared)
            opt.zo_random_seed = 1

            def one_pass():
                opt.zo_perturb_parameters(1)
                opt.zo_perturb_parameters(-1)

            pass_ms = timed(one_pass, args.repeat, sync) / 2
            step_ms = timed(lambda: (opt.zo_step(examples), opt.zo_update()), args.repeat, sync)
            rows.append((name, fwd_ms, pass_ms, step_ms))
        runner_fwd, runner_pass = rows[1][1], rows[1][2]
        params = sum(m.numel() for m in opt.masters)  # the runner's, last in the loop
        print(f"model={model_path} device={device} dtype={args.dtype} batch={args.batch} seq={args.seq} params={params / 1e6:.1f}M")
        floor = 2 * runner_fwd + 4 * runner_pass
        baseline = rows[0][3]  # MeZO on HF
        print("| backend | forward (ms) | perturbation pass (ms) | MeZO step (ms) | step / HF step | step / floor |")
        print("|---|---|---|---|---|---|")
        for name, fwd_ms, pass_ms, step_ms in rows:
            print(f"| {name} | {fwd_ms:.2f} | {pass_ms:.2f} | {step_ms:.2f} | {step_ms / baseline:.2f} | {step_ms / floor:.2f} |")
        print(f"| floor (2 runner fwd + 4 passes) | | | {floor:.2f} | {floor / baseline:.2f} | 1.00 |")
    finally:
        factory.close()


if __name__ == "__main__":
    main()
