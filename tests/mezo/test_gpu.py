"""The same checks on CUDA, and RoBERTa-large-shaped cost: step time and peak memory vs inference."""

from __future__ import annotations

import time

import pytest
import torch

from pytest_sglang_runner import mezo, sst2


@pytest.mark.gpu(1)
@pytest.mark.sglang(dtype="float32", attention_backend="torch_native")
def test_runner_and_hf_agree_on_cuda(runner, sglang_forward, fresh_hf, prompt, synthetic_glue):
    """Equivalence and exact restore on the GPU (torch_native attention: triton uses TF32)."""
    lm = mezo.SGLangMaskedLM(runner, sglang_forward)
    start = mezo.canonical_state(lm.views)
    try:
        train = prompt.encode_all(sst2.read_tsv(synthetic_glue / "train.tsv"))
        hp = dict(lr=1e-3, eps=1e-3, seed=3)
        a = mezo.MeZO(lm.views, mezo.PromptObjective(lm, prompt.label_word_ids), **hp)
        hf = mezo.HFMaskedLM(fresh_hf(device="cuda"))
        b = mezo.MeZO(hf.views, mezo.PromptObjective(hf, prompt.label_word_ids), **hp)
        a.train(train, 20, batch_size=16)
        b.train(train, 20, batch_size=16)
        grads = list(zip(a.history.projected_grad, b.history.projected_grad))
        rms = (sum(g * g for g, _ in grads) / len(grads)) ** 0.5
        assert all(abs(x - y) <= 1e-3 * max(abs(x), abs(y), rms) for x, y in grads), grads
        before = mezo.canonical_state(lm.views)
        a.zo_step(train[:16])
        assert mezo.max_abs_difference(mezo.canonical_state(lm.views), before) == 0.0
    finally:
        mezo.load_canonical(lm.views, start)


@pytest.fixture(scope="module")
def large_random_model(tmp_path_factory):
    """A RoBERTa-large-shaped masked LM (355M) with random weights, plus the embedded tokenizer."""
    from pytest_sglang_runner.models.embedded import write_random_roberta

    return write_random_roberta(tmp_path_factory.mktemp("roberta-large-random"))


@pytest.mark.gpu(1)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_roberta_large_step_time_and_memory(runner_factory, large_random_model, dtype, record_property):
    """One MeZO step (batch 64, ~32 tokens) on the runner; peak memory next to inference only."""
    live = runner_factory.get(model=str(large_random_model), dtype=dtype)
    lm = mezo.SGLangMaskedLM(live.model_runner, live.forward)
    g = torch.Generator().manual_seed(0)
    examples = [mezo.Encoded(tuple([0] + torch.randint(5, 50000, (28,), generator=g).tolist() + [50264, 4, 2]), 29, i % 2)
                for i in range(64)]
    objective = mezo.PromptObjective(lm, [6587, 372])  # " terrible", " great" in RoBERTa's vocabulary
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    prepared = objective.prepare(examples)
    objective.loss(prepared)
    objective.release(prepared)
    torch.cuda.synchronize()
    inference_peak = torch.cuda.max_memory_allocated() - base

    opt = mezo.MeZO(lm.views, objective, lr=1e-6, eps=1e-3)
    opt.zo_step(examples)
    opt.zo_update()  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(5):
        opt.zo_step(examples)
        opt.zo_update()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - started) / 5 * 1e3
    mezo_peak = torch.cuda.max_memory_allocated() - base
    record_property("mezo_step_ms", round(step_ms, 1))
    record_property("inference_peak_mb", round(inference_peak / 2**20))
    record_property("mezo_peak_mb_over_weights", round(mezo_peak / 2**20))
    print(f"\n[{dtype}] MeZO step {step_ms:.1f} ms; peak over weights+KV: inference {inference_peak / 2**20:.0f} MiB, "
          f"MeZO {mezo_peak / 2**20:.0f} MiB (fp32 masters {sum(m.numel() for m in opt.masters) * 4 / 2**20:.0f} MiB)")
    assert step_ms > 0 and opt.projected_grad is not None
    master_bytes = sum(m.numel() * 4 for m in opt.masters)
    # Beyond inference: the fp32 masters, plus one parameter's z and perturbed copy at a time.
    assert mezo_peak <= inference_peak + master_bytes + 4 * max(m.numel() * 4 for m in opt.masters)
