"""The same checks on CUDA, plus what only CUDA has: the Triton passes, captured forwards, memory."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from pytest_sglang_runner import mezo, sst2


@pytest.mark.sglang_gpu(1)
@pytest.mark.sglang(dtype="float32", attention_backend="torch_native")
def test_runner_and_hf_agree_on_cuda(runner, fresh_hf, prompt, synthetic_glue):
    """Equivalence and exact restore on the GPU, z from the Triton kernel on both sides (torch_native: triton uses TF32)."""
    lm = mezo.SGLangMaskedLM(runner)
    start = mezo.canonical_state(lm.views)
    try:
        train = prompt.encode_all(sst2.read_tsv(synthetic_glue / "train.tsv"))
        hp = dict(lr=1e-3, eps=1e-3, seed=3)
        a = mezo.MeZO(lm.views, mezo.PromptObjective(lm, prompt.label_word_ids), **hp)
        hf = mezo.HFMaskedLM(fresh_hf(device="cuda"))
        b = mezo.MeZO(hf.views, mezo.PromptObjective(hf, prompt.label_word_ids), **hp)
        assert a.kernel == b.kernel == "triton"
        a.train(train, 20, batch_size=16)
        b.train(train, 20, batch_size=16)
        grads = list(zip(a.history.projected_grad, b.history.projected_grad))
        rms = (sum(g * g for g, _ in grads) / len(grads)) ** 0.5
        assert all(abs(x - y) <= 1e-3 * max(abs(x), abs(y), rms) for x, y in grads), grads
        before = mezo.canonical_state(lm.views)
        a.zo_step(train[:16])
        assert mezo.max_abs_difference(mezo.canonical_state(lm.views), before) == 0.0
    finally:
        lm.close()
        mezo.load_canonical(lm.views, start)


@pytest.mark.sglang_gpu(1)
def test_triton_passes_compute_the_torch_definition_on_cuda(fresh_hf):
    """Kernel against twin on one GPU: z to the fast intrinsics' rounding, restore exact, updates together."""
    fast_lm, twin_lm = mezo.HFMaskedLM(fresh_hf(device="cuda")), mezo.HFMaskedLM(fresh_hf(device="cuda"))
    fast, twin = mezo.Masters(fast_lm.views, "triton"), mezo.Masters(twin_lm.views, "torch")
    assert (fast.passes.name, twin.passes.name) == ("triton", "torch")
    fast.passes.perturb(123, 1.0)
    twin.passes.perturb(123, 1.0)
    # Same integers; the kernel's fast log/sin/cos (GPU intrinsics) sit ~3e-5 from libm's.
    z_gap = max(
        float(((a.tensor - b.tensor).abs() / (1 + b.tensor.abs())).max()) for a, b in zip(fast_lm.views, twin_lm.views)
    )
    assert z_gap < 1e-4, z_gap
    fast.passes.restore()
    assert all(torch.equal(view.tensor, master) for view, master in zip(fast_lm.views, fast.tensors))
    fast.passes.update(7, 1e-2, 3.0, weight_decay=0.1)
    twin.passes.update(7, 1e-2, 3.0, weight_decay=0.1)
    assert mezo.max_abs_difference(fast.tensors, twin.tensors) < 1e-6
    # The folded pass (update, then the next perturbation) is bitwise the two passes it replaces.
    apart_lm = mezo.HFMaskedLM(fresh_hf(device="cuda"))
    apart = mezo.Masters(apart_lm.views, "triton")
    apart.passes.flat.copy_(fast.passes.flat)
    fast.passes.update_and_perturb(9, 1e-2, -2.0, 0.1, 11, 1e-3)
    apart.passes.update(9, 1e-2, -2.0, weight_decay=0.1)
    apart.passes.perturb(11, 1e-3)
    assert torch.equal(fast.passes.flat, apart.passes.flat)
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(fast_lm.views, apart_lm.views))


def _same_layout_batches(prompt, synthetic_glue, batch: int, count: int):
    """``count`` batches whose sequences have one common length: one layout, so one captured graph."""
    train = prompt.encode_all(sst2.read_tsv(synthetic_glue / "train.tsv"))
    length, _ = Counter(len(e.input_ids) for e in train).most_common(1)[0]
    same = [e for e in train if len(e.input_ids) == length][: batch * count]
    assert len(same) == batch * count
    return [same[i * batch : (i + 1) * batch] for i in range(count)]


@pytest.mark.sglang_gpu(1)
@pytest.mark.sglang(dtype="bfloat16", attention_backend="triton")
def test_captured_forward_gives_the_eager_losses(runner, prompt, synthetic_glue):
    """Steps replayed from a CUDA graph (new examples copied in) give the eager steps' losses and weights
    (both padded to the same bucket, so the shapes match)."""
    batches = _same_layout_batches(prompt, synthetic_glue, batch=16, count=4)
    start = mezo.canonical_state(mezo.SGLangMaskedLM(runner, graphs=False).views)

    def four_steps(graphs: bool):
        lm = mezo.SGLangMaskedLM(runner, graphs=graphs, padding=True)
        opt = mezo.MeZO(lm.views, mezo.PromptObjective(lm, prompt.label_word_ids), lr=1e-3, eps=1e-3, seed=3)
        try:
            losses = [opt.step(examples) for examples in batches]
            return losses, opt.checkpoint.steps, bool(lm.captured_keys), mezo.canonical_state(lm.views)
        finally:
            lm.close()
            mezo.load_canonical(lm.views, start)

    eager_losses, eager_steps, eager_captured, eager_weights = four_steps(False)
    graph_losses, graph_steps, graph_captured, graph_weights = four_steps(True)
    assert (eager_captured, graph_captured) == (False, True)
    print(f"\neager losses {eager_losses}\ngraph losses {graph_losses}")
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    assert [s for s, _ in graph_steps] == [s for s, _ in eager_steps]
    assert mezo.max_abs_difference(graph_weights, eager_weights) <= 1e-6


@pytest.fixture(scope="module")
def large_random_model(tmp_path_factory):
    """A RoBERTa-large-shaped masked LM (355M) with random weights, plus the embedded tokenizer."""
    from pytest_sglang_runner.models.embedded import write_random_roberta

    return write_random_roberta(tmp_path_factory.mktemp("roberta-large-random"))


@pytest.mark.sglang_gpu(1)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_mezo_memory_is_inference_plus_one_fp32_copy(runner_factory, large_random_model, dtype, record_property):
    """RoBERTa-large shape, batch 64 x 32: MeZO's peak <= the inference peak + the fp32 masters.

    Inference is the same batch through the same captured forward; MeZO adds the masters only
    (as the allocator hands them out: rounded up to its 2 MiB segments).
    """
    live = runner_factory.get(model=str(large_random_model), dtype=dtype, attention_backend="triton")
    lm = mezo.SGLangMaskedLM(live.model_runner)
    g = torch.Generator().manual_seed(0)
    examples = [
        mezo.Encoded(tuple([0] + torch.randint(5, 50000, (28,), generator=g).tolist() + [50264, 4, 2]), 29, i % 2)
        for i in range(64)
    ]
    objective = mezo.PromptObjective(lm, [6587, 372])  # " terrible", " great" in RoBERTa's vocabulary
    try:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):  # inference as the kit runs it: eager, captured, then replayed
            prepared = objective.prepare(examples)
            objective.loss(prepared)
            objective.release(prepared)
        inference_peak = torch.cuda.max_memory_allocated() - base

        torch.cuda.reset_peak_memory_stats()
        before_optimizer = torch.cuda.memory_allocated()
        opt = mezo.MeZO(lm.views, objective, lr=1e-6, eps=1e-3)
        optimizer_bytes = torch.cuda.memory_allocated() - before_optimizer
        for _ in range(3):
            opt.step(examples)
        torch.cuda.synchronize()
        mezo_peak = torch.cuda.max_memory_allocated() - base
        assert lm.captured_keys and opt.kernel == "triton"
    finally:
        lm.close()
    master_bytes = sum(m.numel() for m in opt.masters) * 4
    for key, value in dict(
        inference_peak_mib=inference_peak,
        mezo_peak_mib=mezo_peak,
        fp32_masters_mib=master_bytes,
        optimizer_allocated_mib=optimizer_bytes,
    ).items():
        record_property(key, round(value / 2**20, 2))
    print(
        f"\n[{dtype}] peak over weights+KV: inference {inference_peak / 2**20:.1f} MiB, MeZO {mezo_peak / 2**20:.1f} MiB, "
        f"fp32 masters {master_bytes / 2**20:.1f} MiB, allocated by the optimizer {optimizer_bytes / 2**20:.1f} MiB"
    )
    # The optimizer's allocation is the masters, rounded up to the caching allocator's 2 MiB segments,
    # plus its pass tables (a few KiB); MeZO adds nothing else above inference.
    assert optimizer_bytes <= master_bytes + 2 * 2**20 + 64 * 2**10
    assert mezo_peak <= inference_peak + optimizer_bytes
