"""MeZO step time against the physical floor and the reference implementation, in one run.

    PYTHONPATH=. python bench/mezo_step.py                     # embedded model, CPU, small shape
    PYTHONPATH=. python bench/mezo_step.py --roberta-large-random --device cuda --dtype bfloat16 \\
        --attention-backend triton --shapes 16x128,64x48,64x128 --profile prof_bf16.txt
    (and the same with --dtype float32; `BENCH=1 bash bench/run_gpu.sh` runs both: docs/performance.md)
    ... --shapes 16xsst2,16xrt,64xsst2 --steps 40 --warmup 40   # batches of varying lengths
    PYTHONPATH=. python bench/mezo_step.py --llama-random --device cuda --dtype bfloat16 \
        --attention-backend triton --shapes 16x128,16xrt --shared-prefix 256    # decoder MeZO

``--decoder`` (the embedded Llama, or ``--model DIR``) or ``--llama-random`` (SmolLM2-135M's shape,
random weights): decoder MeZO, the label words scored at each prompt's last position, against
the reference on HF's causal LM. ``--shared-prefix N``: every prompt starts with the same N tokens
(demonstrations), run once per forward (`SGLangCausalLM(share_prefix=True)`); the floor counts
them once, and a row gives the same batches without sharing.

A shape is ``BxS`` (B sequences of S tokens, the same batch every step) or ``BxDIST``: a fresh
batch every step, B prompts whose lengths are drawn (seeded, the same batches for every
implementation) from ``DIST``:

- ``sst2``: SST-2-like prompts under MeZO's template, 6 template tokens + a sentence of
  2 + round(Gamma(shape 2, scale 10)) tokens, at most 60: 8 to 66 tokens, mean 28;
- ``rt``: the real Rotten Tomatoes review sentences of `bench/data/rotten_tomatoes_lengths.json`
  (SmolLM2's tokenizer; the data set of the decoder issue) + the same 6 template tokens: 8 to 84
  tokens, mean 31.

Everything a ratio needs is measured in the same process, on the same card:

- matmul rate: ``torch.matmul`` of two n x n matrices in the run's dtype (n = 8192 on CUDA);
- copy bandwidth: ``dst.copy_(src)`` of 1 GiB, counting bytes read + written;
- physical floor of one MeZO step: two forwards at that matmul rate (2 x non-embedding parameters
  x tokens FLOPs each; the real tokens, the mean over the measured batches when they vary) + four
  read-and-write passes over the weights in the model dtype at that
  bandwidth. Nothing of the kit's own timings goes into it;
- reference MeZO: princeton-nlp/MeZO ``large_models/trainer.py`` as written (``torch.manual_seed``,
  ``torch.normal`` per parameter, ``param.data = param.data + scaling * z * eps``) on the HF model,
  with the prompt loss at ``<mask>`` (LM head on the mask rows, as its medium models do);
- the kit's MeZO (`MeZO.step` as `MeZO.train` runs it: batch preparation included, each update
  folded into the next step's first weight pass) on the HF model and on the runner.

Step times are medians of ``--steps`` steps after ``--warmup``, each step synchronised; the
runner's table also gives the mean, which includes the captures of buckets first seen while
measured, and the eager runner (graphs off) for varying batches. Peak
memory (CUDA) is taken above the runner's weights and KV pool: inference alone (the batch run
three times: eager, captured, replayed, as the kit runs a repeated layout), then MeZO on top.
``--profile PATH`` writes where a runner step's GPU time goes (torch.profiler) for each shape.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

TEMPLATE_TOKENS = 6  # <s> ... " It" " was" <mask> "." </s>
RT_LENGTHS = Path(__file__).parent / "data" / "rotten_tomatoes_lengths.json"


def sst2_like_length(rng: random.Random) -> int:
    return TEMPLATE_TOKENS + min(60, 2 + round(rng.gammavariate(2, 10)))


def rotten_tomatoes_length_sampler():
    sentences = json.loads(RT_LENGTHS.read_text())["sentence_tokens"]
    return lambda rng: TEMPLATE_TOKENS + rng.choice(sentences)


@dataclass(frozen=True)
class Workload:
    """``batch`` prompts a step: ``seq`` tokens each, the same batch every step, or ``dist`` lengths, fresh each step."""

    batch: int
    seq: int = 0
    dist: str = ""

    @property
    def label(self) -> str:
        return f"{self.batch} × {self.seq or self.dist}"

    @property
    def varying(self) -> bool:
        return bool(self.dist)

    def batches(self, config, decoder: bool = False, shared_prefix: int = 0) -> Iterator[list]:
        """The same sequence of batches at every call, random token ids. Masked LM: ``<s> ... <mask> </s>``;
        decoder: ``<s> [prefix] ...``, scored at the last position, the same ``shared_prefix`` tokens
        (demonstrations) before every prompt."""
        from pytest_sglang_runner import mezo

        rng = random.Random(self.batch * 1000 + (self.seq or len(self.dist)))
        length = {"sst2": sst2_like_length, "rt": rotten_tomatoes_length_sampler()}.get(self.dist)
        mask_id = getattr(config, "mask_token_id", None) or config.vocab_size - 1
        words = lambda n, r=rng: [r.randrange(5, config.vocab_size - 1) for _ in range(n)]  # noqa: E731
        prefix = [config.bos_token_id, *words(shared_prefix, random.Random(7))]

        def encoded(i: int, n: int):
            if decoder:
                ids = [*prefix, *words(n - 1)]
                return mezo.Encoded(tuple(ids), len(ids) - 1, i % 2)
            return mezo.Encoded(tuple([config.bos_token_id, *words(n - 3), mask_id, config.eos_token_id]), n - 2, i % 2)

        def draw():
            return [encoded(i, length(rng) if length else self.seq) for i in range(self.batch)]

        if not self.varying:
            fixed = draw()
            while True:
                yield fixed
        while True:
            yield draw()


def parse_shapes(text: str) -> list[Workload]:
    workloads = []
    for part in filter(None, text.lower().split(",")):
        batch, _, rest = part.partition("x")
        if rest not in ("sst2", "rt") and not rest.isdigit():
            raise SystemExit(f"--shapes {part}: give BxS (e.g. 16x128) or BxDIST with DIST sst2 or rt")
        workloads.append(Workload(int(batch), int(rest)) if rest.isdigit() else Workload(int(batch), dist=rest))
    return workloads


def synchronizer(device: str):
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def step_times_ms(fn, steps: int, warmup: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def median_ms(fn, steps: int, warmup: int, sync) -> float:
    return statistics.median(step_times_ms(fn, steps, warmup, sync))


def measure_matmul_rate(device: str, dtype, n: int) -> float:
    """FLOP/s of an n^3 matmul in ``dtype`` (median of 10)."""
    import torch

    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    ms = median_ms(lambda: torch.matmul(a, b), 10, 3, synchronizer(device))
    return 2 * n**3 / (ms / 1e3)


def measure_copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes/s of a device copy, counting bytes read and written (median of 10)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), 10, 3, synchronizer(device))
    return 2 * nbytes / (ms / 1e3)


def physical_floor_ms(
    non_embedding: int, params: int, tokens: int, bytes_per_param: int, matmul_rate: float, bandwidth: float
):
    """(matmul part, bandwidth part) of one MeZO step, in ms."""
    matmul = 2 * (2 * non_embedding * tokens) / matmul_rate
    passes = 4 * (2 * params * bytes_per_param) / bandwidth
    return matmul * 1e3, passes * 1e3


class ReferenceMeZO:
    """princeton-nlp/MeZO ``large_models/trainer.py``'s zo_step / zo_update, on an HF masked LM or
    causal LM (the label words' logits at each example's scoring position)."""

    def __init__(self, model, label_word_ids, lr: float, eps: float, weight_decay: float = 0.0):
        import numpy as np
        import torch

        self.model, self.lr, self.eps, self.weight_decay = model.eval(), lr, eps, weight_decay
        self.label_word_ids = torch.tensor(label_word_ids, device=model.device)
        self.named_parameters_to_optim = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.rng = np.random.default_rng(0)

    def zo_perturb_parameters(self, random_seed=None, scaling_factor=1):
        import torch

        torch.manual_seed(random_seed if random_seed is not None else self.zo_random_seed)
        for _, param in self.named_parameters_to_optim:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            param.data = param.data + scaling_factor * z * self.eps

    def inputs(self, examples, pad_token_id: int):
        import torch

        width = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(examples):
            ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[row, : len(e.input_ids)] = 1
        device = self.model.device
        positions = torch.tensor([e.mask_pos for e in examples], device=device)
        labels = torch.tensor([e.label for e in examples], device=device)
        return ids.to(device), mask.to(device), positions, labels

    def zo_forward(self, inputs):
        import torch
        import torch.nn.functional as F

        ids, mask, positions, labels = inputs
        with torch.inference_mode():
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = self.model.lm_head(hidden[torch.arange(len(ids), device=ids.device), positions])
            return F.cross_entropy(logits[:, self.label_word_ids].float(), labels).detach()

    def zo_step(self, inputs):
        self.zo_random_seed = int(self.rng.integers(1_000_000_000))
        self.zo_perturb_parameters(scaling_factor=1)
        loss1 = self.zo_forward(inputs)
        self.zo_perturb_parameters(scaling_factor=-2)
        loss2 = self.zo_forward(inputs)
        self.projected_grad = ((loss1 - loss2) / (2 * self.eps)).item()
        self.zo_perturb_parameters(scaling_factor=1)
        return loss1

    def zo_update(self):
        import torch

        torch.manual_seed(self.zo_random_seed)
        for name, param in self.named_parameters_to_optim:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            lowered = name.lower()
            if "bias" not in lowered and "layer_norm" not in lowered and "layernorm" not in lowered:
                param.data = param.data - self.lr * (self.projected_grad * z + self.weight_decay * param.data)
            else:
                param.data = param.data - self.lr * (self.projected_grad * z)


# Kernel names -> where the time goes (torch.profiler's device time per kernel), first match wins.
CATEGORIES = [
    ("fused MeZO passes", r"zo_pass"),
    ("matmul (GEMM)", r"gemm|matmul|cutlass|xmma|nvjet|ampere_|sm80_|sm90_|cublas"),
    ("attention", r"_fwd_kernel|attention|flash|sdpa|fmha"),
    ("add + LayerNorm", r"add_layer_norm|layer_norm|LayerNorm"),
    ("other elementwise (GELU, adds, casts)", r"elementwise|vectorized|gelu"),
    ("KV writes, copies, indexing", r"kvcache|copy|index|gather|cat|fill|Memcpy|Memset"),
]


def profile_step(step, sync, path: Path, label: str) -> str:
    """Five steps under torch.profiler: GPU time per category + the kernel table; returns the summary line."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync()
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(5):
            step()
        sync()
    wall_ms = (time.perf_counter() - started) * 1e3 / 5
    per_category = {name: 0.0 for name, _ in CATEGORIES} | {"other": 0.0}
    for event in prof.key_averages():
        if "CUDA" not in str(getattr(event, "device_type", "")):
            continue
        ms = getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)) / 1e3 / 5
        name = next((name for name, pattern in CATEGORIES if re.search(pattern, event.key, re.IGNORECASE)), "other")
        per_category[name] += ms
    busy = sum(per_category.values())
    lines = [
        f"## {label}: {wall_ms:.2f} ms/step under the profiler, GPU busy {busy:.2f} ms/step",
        "| where | GPU ms/step | share of busy |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {ms:.2f} | {ms / busy:.0%} |" for name, ms in per_category.items() if busy]
    lines += ["", prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=25), ""]
    with open(path, "a") as out:
        out.write("\n".join(lines) + "\n")
    return lines[0].removeprefix("## ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded-roberta", help="model directory (default: the embedded RoBERTa)")
    ap.add_argument(
        "--roberta-large-random", action="store_true", help="write and use a RoBERTa-large-shaped model, random weights"
    )
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--attention-backend", default="")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument(
        "--shapes", default="", help="comma-separated BxS list, e.g. 16x128,64x48 (default: --batch x --seq)"
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    ap.add_argument("--profile", default="", help="write a profile of the runner's step per shape to this file")
    ap.add_argument("--decoder", action="store_true", help="decoder MeZO (default model: the embedded Llama)")
    ap.add_argument(
        "--llama-random", action="store_true", help="write and use a SmolLM2-135M-shaped Llama, random weights"
    )
    ap.add_argument(
        "--shared-prefix", type=int, default=0, help="decoder: the same N tokens before every prompt, shared"
    )
    args = ap.parse_args()
    args.decoder = args.decoder or args.llama_random
    if args.decoder and args.model == "embedded-roberta":
        args.model = "embedded-llama"

    import torch

    from pytest_sglang_runner import mezo
    from pytest_sglang_runner.options import RunnerSpec
    from pytest_sglang_runner.runner import RunnerFactory

    workloads = parse_shapes(args.shapes) or [Workload(args.batch, args.seq)]
    if args.roberta_large_random:
        from pytest_sglang_runner.models.embedded import write_random_roberta

        args.model = str(write_random_roberta(Path(tempfile.mkdtemp(prefix="roberta-large-random-"))))
    if args.llama_random:
        from pytest_sglang_runner.models.embedded_llama import write_random_llama

        args.model = str(write_random_llama(Path(tempfile.mkdtemp(prefix="llama-random-")), dtype=args.dtype))
    from pytest_sglang_runner.mezo.causal_lm import HFCausalLM, SGLangCausalLM

    RunnerLM = SGLangCausalLM if args.decoder else mezo.SGLangMaskedLM  # noqa: N806
    HFLM = HFCausalLM if args.decoder else mezo.HFMaskedLM  # noqa: N806
    shared = dict(share_prefix=True) if args.shared_prefix else {}
    most_tokens = max(w.batch * (w.seq or 96) for w in workloads)
    spec = RunnerSpec(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        attention_backend=args.attention_backend,
        max_total_tokens=max(4096, 2 * most_tokens),
    )
    factory = RunnerFactory(default_spec=spec, cache_root=Path(tempfile.gettempdir()) / "pytest-sglang-runner-bench")
    live = factory.get()
    runner = live.model_runner
    device = str(runner.device)
    cuda = device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(args.threads)
    sync = synchronizer(device)
    dtype = getattr(torch, args.dtype)
    config = runner.model_config.hf_config
    labels = [5, 6]
    if args.profile:
        Path(args.profile).write_text(f"# MeZO step profiles, {args.dtype}\n")
    measured = args.warmup + args.steps

    def stepping(fn, workload):
        """``fn(batch)`` on the workload's batches, in the same order for every implementation."""
        batches = workload.batches(config, args.decoder, args.shared_prefix)
        return lambda: fn(next(batches))

    def train_step(opt):
        """A step as `MeZO.train` runs it: the update folded into the next step's first pass."""
        return lambda examples: opt.step(examples, defer_update=True)

    def forward_once(objective):
        def run(examples):
            prepared = objective.prepare(examples)
            objective.loss(prepared)
            objective.release(prepared)

        return run

    try:
        matmul_rate = measure_matmul_rate(device, dtype, 8192 if cuda else 1024)
        bandwidth = measure_copy_bandwidth(device, 2**30 if cuda else 2**26)
        rows: dict[Workload, dict] = {}
        # 1. The runner: inference peak, then MeZO (before any HF model takes GPU memory).
        for workload in workloads:
            row = rows.setdefault(workload, {})
            drawn = list(
                itertools.islice(workload.batches(config, args.decoder, args.shared_prefix), args.warmup, measured)
            )
            shared_once = (len(drawn[0]) - 1) * (1 + args.shared_prefix) if args.shared_prefix else 0
            row["tokens"] = statistics.mean(sum(len(e.input_ids) for e in batch) for batch in drawn) - shared_once
            row["padded_tokens"] = statistics.mean(len(b) * max(len(e.input_ids) for e in b) for b in drawn)
            lm = RunnerLM(runner, **shared)
            objective = mezo.PromptObjective(lm, labels)
            first = next(workload.batches(config, args.decoder, args.shared_prefix))
            sync()
            base = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for _ in range(3):  # inference as the kit runs it: eager, captured, then replayed (when graphs are on)
                forward_once(objective)(first)
            row["inference_peak"] = torch.cuda.max_memory_allocated() - base if cuda else None
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            opt = mezo.MeZO(lm.views, objective, lr=1e-6, eps=1e-3, on_weights_changed=lm.weights_changed)
            captured_before = len(lm.captured_keys)
            times = step_times_ms(stepping(train_step(opt), workload), args.steps, args.warmup, sync)
            row["runner_step"], row["runner_step_mean"] = statistics.median(times), statistics.mean(times)
            row["mezo_peak"] = torch.cuda.max_memory_allocated() - base if cuda else None
            row["fp32_copy"] = 4 * sum(m.numel() for m in opt.masters)
            row["params"] = sum(m.numel() for m in opt.masters)
            row["non_embedding"] = sum(m.numel() for v, m in zip(opt.views, opt.masters) if "embed" not in v.name)
            row["kernel"], row["captured"] = opt.kernel, len(lm.captured_keys)
            row["captured_new"] = len(lm.captured_keys) - captured_before
            row["runner_fwd"] = median_ms(stepping(forward_once(objective), workload), args.steps, args.warmup, sync)
            perturb_and_restore = lambda: (opt.zo_perturb_parameters(1), opt.zo_perturb_parameters(-1))  # noqa: E731
            row["pass"] = median_ms(perturb_and_restore, args.steps, 1, sync) / 2
            if args.profile:
                row["profile"] = profile_step(
                    stepping(train_step(opt), workload),
                    sync,
                    Path(args.profile),
                    f"runner MeZO step, {workload.label}, {args.dtype}",
                )
            lm.close()
            del opt, objective, lm
            extra = {"eager_step": dict(graphs=False)} if workload.varying else {}  # before size buckets
            if args.shared_prefix:
                extra["unshared_step"] = {}  # the same batches, every prompt's prefix run again
            for key, options in extra.items():
                other = RunnerLM(runner, **options)
                opt = mezo.MeZO(other.views, mezo.PromptObjective(other, labels), lr=1e-6, eps=1e-3)
                row[key] = median_ms(stepping(train_step(opt), workload), args.steps, args.warmup, sync)
                other.close()
                del opt, other
        # 2. HF: the kit's MeZO, then the reference, each on its own copy of the weights.
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        model_path = factory.model_path()
        auto = AutoModelForCausalLM if args.decoder else AutoModelForMaskedLM
        load = lambda: auto.from_pretrained(model_path, dtype=dtype).to(device).eval()  # noqa: E731
        hf_kit, hf_reference = load(), load()
        pad = config.pad_token_id
        for workload in workloads:
            row = rows[workload]
            lm = HFLM(hf_kit)
            objective = mezo.PromptObjective(lm, labels)
            opt = mezo.MeZO(lm.views, objective, lr=1e-6, eps=1e-3)
            row["hf_step"] = median_ms(stepping(train_step(opt), workload), args.steps, args.warmup, sync)
            row["hf_fwd"] = median_ms(stepping(forward_once(objective), workload), args.steps, args.warmup, sync)
            del opt
            reference = ReferenceMeZO(hf_reference, labels, lr=1e-6, eps=1e-3)
            reference_step = lambda examples: (
                reference.zo_step(reference.inputs(examples, pad)),
                reference.zo_update(),
            )  # noqa: E731
            row["ref_step"] = median_ms(stepping(reference_step, workload), args.steps, args.warmup, sync)
            reference_forward = lambda examples: reference.zo_forward(reference.inputs(examples, pad)).item()  # noqa: E731
            row["ref_fwd"] = median_ms(stepping(reference_forward, workload), args.steps, args.warmup, sync)
    finally:
        factory.close()
    report(
        rows,
        args,
        matmul_rate,
        bandwidth,
        torch.cuda.get_device_name() if cuda else "cpu",
        runner.server_args.attention_backend,
    )


# (runner ÷ floor at most, reference ÷ runner at least): fixed shapes (the first MeZO issue), varying (#20).
TARGETS = {False: (2.0, 8.0), True: (3.0, 15.0)}


def report(rows: dict, args, matmul_rate: float, bandwidth: float, card: str, attention: str) -> None:
    """The tables: per workload, then a summary."""
    import sglang
    import torch
    import transformers

    bytes_per_param = torch.finfo(getattr(torch, args.dtype)).bits // 8
    first = next(iter(rows.values()))
    print(
        f"device: {card}; sglang {sglang.__version__}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"dtype {args.dtype}; attention {attention}; MeZO passes: {first['kernel']}; "
        + ("decoder, scored at the last position" if args.decoder else "masked LM, scored at <mask>")
        + (f"; the same {args.shared_prefix} tokens before every prompt, shared" if args.shared_prefix else "")
    )
    print(
        f"model: {first['params'] / 1e6:.1f}M trainable parameters, {first['non_embedding'] / 1e6:.1f}M outside the embeddings"
    )
    print(
        f"measured: matmul {matmul_rate / 1e12:.1f} TFLOP/s ({args.dtype}); copy {bandwidth / 1e12:.3f} TB/s (read + write)"
    )
    summary = []
    for workload, row in rows.items():
        mm, bw = physical_floor_ms(
            row["non_embedding"], row["params"], row["tokens"], bytes_per_param, matmul_rate, bandwidth
        )
        floor = mm + bw
        max_to_floor, min_speedup = TARGETS[workload.varying]
        tokens = (
            f"{row['tokens']:.0f} real tokens a batch on average, {row['padded_tokens']:.0f} padded as HF pads; "
            "a fresh batch every step"
            if workload.varying
            else f"{row['tokens']:.0f} tokens"
        )
        print(f"\n### {workload.label} ({tokens}), median of {args.steps} steps after {args.warmup}")
        print("| what | ms | × floor | reference ÷ this |")
        print("|---|---|---|---|")
        print(f"| floor: 2 forwards at the matmul rate (real tokens) | {mm:.2f} | | |")
        print(f"| floor: 4 weight passes at the copy bandwidth | {bw:.2f} | | |")
        print(f"| **physical floor** | {floor:.2f} | 1.00 | {row['ref_step'] / floor:.1f} |")
        steps = [
            ("reference MeZO step (princeton-nlp, HF)", "ref_step"),
            ("kit MeZO step on HF", "hf_step"),
            ("kit MeZO step on the runner, eager (no graphs)", "eager_step"),
            ("kit MeZO step on the runner, prefix not shared", "unshared_step"),
            ("**kit MeZO step on the runner**", "runner_step"),
            ("kit MeZO step on the runner, mean (captures included)", "runner_step_mean"),
        ]
        for label, key in steps:
            if key in row:
                print(f"| {label} | {row[key]:.2f} | {row[key] / floor:.2f} | {row['ref_step'] / row[key]:.1f} |")
        for label, key in (
            ("forward: reference (HF)", "ref_fwd"),
            ("forward: kit on HF", "hf_fwd"),
            ("forward: kit on the runner (batch preparation included)", "runner_fwd"),
            ("one weight pass on the runner (mean of perturb and restore)", "pass"),
        ):
            print(f"| {label} | {row[key]:.2f} | {row[key] / floor:.2f} | |")
        to_floor, speedup = row["runner_step"] / floor, row["ref_step"] / row["runner_step"]
        print(
            f"- runner step ≤ {max_to_floor:g}× floor: {to_floor:.2f}× — "
            + ("met" if to_floor <= max_to_floor else f"missed by {to_floor / max_to_floor - 1:.0%}")
        )
        print(
            f"- runner ≥ {min_speedup:g}× faster than the reference: {speedup:.1f}× — "
            + ("met" if speedup >= min_speedup else f"missed by {1 - speedup / min_speedup:.0%}")
        )
        print(f"- CUDA graphs held: {row['captured']} ({row['captured_new']} captured during the measured steps)")
        if row["inference_peak"] is not None:
            allowed = row["inference_peak"] + row["fp32_copy"]
            print(
                f"- memory above weights + KV pool: inference peak {row['inference_peak'] / 2**20:.0f} MiB, MeZO peak "
                f"{row['mezo_peak'] / 2**20:.0f} MiB, one fp32 copy {row['fp32_copy'] / 2**20:.0f} MiB: MeZO ≤ inference + copy: "
                + ("yes" if row["mezo_peak"] <= allowed else f"no (+{(row['mezo_peak'] - allowed) / 2**20:.0f} MiB)")
            )
        if "profile" in row:
            print(f"- profile: {row['profile']}")
        eager = f"{row['eager_step']:.2f}" if "eager_step" in row else "—"
        summary.append(
            f"| {workload.label} | {row['tokens']:.0f} | {floor:.2f} | {row['ref_step']:.2f} | {row['hf_step']:.2f} | "
            f"{eager} | {row['runner_step']:.2f} | {to_floor:.2f} | {speedup:.1f} |"
        )
    print(f"\n### Summary ({card}, {args.dtype})")
    print(
        "| batch | real tokens | floor ms | reference ms | kit on HF ms | runner eager ms | kit on runner ms "
        "| runner ÷ floor | reference ÷ runner |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
