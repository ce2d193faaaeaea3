"""Size buckets: padding a batch to its bucket never changes a real example's loss.

The same bucketing code runs on CPU (eager, `padding=True`) and on the GPU (captured graphs that
take every batch of their bucket); a filler that leaked into a real sequence is caught.
"""

from __future__ import annotations

import random

import pytest
import torch

from pytest_sglang_runner import mezo
from pytest_sglang_runner.buckets import LARGEST_STEP, SMALLEST_STEP, BucketLayout, bucket_total


def test_the_ladder_pads_less_than_an_eighth():
    previous = 0
    for tokens in range(1, 5000):
        total = bucket_total(tokens)
        assert tokens <= total < tokens + max(SMALLEST_STEP, min(tokens / 8 + 1, LARGEST_STEP)), tokens
        assert total >= previous
        previous = total
    assert len({bucket_total(t) for t in range(300, 700)}) <= 16  # a batch of SST-2 prompts: a few buckets


def test_filler_is_cut_to_the_longest_sequence_the_model_takes():
    layout = BucketLayout.of([3000, 7], longest_filler=100)
    assert layout.total == bucket_total(3007) and sum(layout.filler) == layout.total - 3007
    assert max(layout.filler) <= 100 and layout.key == (2, len(layout.filler), layout.total, 4096)
    short = BucketLayout.of([20, 30, 9])  # no filler longer than the bucket's longest sequence
    assert short.longest == 32 and max(short.filler) <= 32 and short.total == bucket_total(59)
    assert BucketLayout.of([16, 16]).filler == ()  # a batch on the ladder runs as it is
    assert layout.pad([[1] * 3000, [2] * 7], filler_token=0)[2:] == [[0] * n for n in layout.filler]
    assert BucketLayout.of([2, 3]).positions()[:5] == [0, 1, 0, 1, 2]


def varied_examples(vocab_size: int, lengths, seed: int = 0) -> list[mezo.Encoded]:
    """Prompts of the given lengths: <s> random words <mask> </s>, random labels."""
    rng = random.Random(seed)
    return [
        mezo.Encoded(tuple([0, *(rng.randrange(5, vocab_size) for _ in range(n - 3)), 3, 2]), n - 2, rng.randrange(2))
        for n in lengths
    ]


def example_losses(objective, examples) -> list[float]:
    prepared = objective.prepare(examples)
    try:
        return objective.example_losses(prepared).tolist()
    finally:
        objective.release(prepared)


def losses_in_random_buckets(objective, examples, batches: int, batch_size: int, seed: int = 1) -> list[tuple]:
    """(example index, its loss inside a random batch) for ``batches`` random batches."""
    rng = random.Random(seed)
    seen = []
    for _ in range(batches):
        chosen = rng.sample(range(len(examples)), batch_size)
        seen += zip(chosen, example_losses(objective, [examples[i] for i in chosen]))
    return seen


# The loss of an example moves with the shapes its matmuls are cut into: fp32 by ~1e-7, bf16 by ~1e-2.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def assert_alone_equals_in_bucket(alone: list[float], in_buckets: list[tuple], dtype) -> float:
    worst = max(abs(loss - alone[i]) / max(1.0, abs(alone[i])) for i, loss in in_buckets)
    assert worst <= TOLERANCE[dtype], f"a real example's loss moved by {worst:.2e} inside a bucket"
    return worst


def test_padding_never_changes_a_real_examples_loss(runner, record_property):
    """Each example alone (unpadded) against the same example inside random padded batches (CPU in CI)."""
    dtype = runner.model_config.dtype
    vocab = runner.model_config.vocab_size
    examples = varied_examples(vocab, [random.Random(7).randrange(5, 60) for _ in range(24)])
    alone_lm, padded_lm = mezo.SGLangMaskedLM(runner, padding=False), mezo.SGLangMaskedLM(runner, padding=True)
    alone = [example_losses(mezo.PromptObjective(alone_lm, [5, 6]), [e])[0] for e in examples]
    padded = mezo.PromptObjective(padded_lm, [5, 6])
    in_buckets = losses_in_random_buckets(padded, examples, batches=4, batch_size=6)
    record_property("worst_relative_change", assert_alone_equals_in_bucket(alone, in_buckets, dtype))
    # The check can fail: filler that leaks into a real sequence moves that example's loss.
    leaked = list(examples[0].input_ids)
    leaked[-1:-1] = [0] * 9
    moved = example_losses(padded, [mezo.Encoded(tuple(leaked), examples[0].mask_pos, examples[0].label)])[0]
    assert abs(moved - alone[0]) > 10 * TOLERANCE[dtype]
    padded_lm.close()


@pytest.mark.sglang_gpu(1)
@pytest.mark.sglang(dtype="bfloat16", attention_backend="triton")
def test_captured_buckets_take_every_layout_of_their_bucket(runner, record_property):
    """New layouts replayed through a bucket's graph: the eager padded losses, and each example's loss alone."""
    vocab = runner.model_config.vocab_size
    rng = random.Random(3)
    examples = varied_examples(vocab, [rng.randrange(8, 66) for _ in range(64)])
    labels = [5, 6]
    eager = mezo.PromptObjective(mezo.SGLangMaskedLM(runner, graphs=False, padding=True), labels)
    graphs_lm = mezo.SGLangMaskedLM(runner)
    captured = mezo.PromptObjective(graphs_lm, labels)
    try:
        assert graphs_lm.graphs and graphs_lm.padding
        layouts: dict = {}  # bucket -> the layouts its graph replayed
        for _ in range(16):  # the second batch of a bucket is captured, the later ones replay it
            batch = rng.sample(examples, 16)
            prepared = captured.prepare(batch)
            if prepared[0].graph is not None:
                layouts.setdefault(prepared[0].key, set()).add(prepared[0].layout)
            got = captured.example_losses(prepared).tolist()
            captured.release(prepared)
            assert got == pytest.approx(example_losses(eager, batch), rel=1e-5, abs=1e-5)
        assert any(len(seen) > 1 for seen in layouts.values()), f"no graph replayed a new layout: {layouts}"
        alone_lm = mezo.SGLangMaskedLM(runner, graphs=False, padding=False)
        alone = [example_losses(mezo.PromptObjective(alone_lm, labels), [e])[0] for e in examples]
        in_buckets = losses_in_random_buckets(captured, examples, batches=12, batch_size=16)
        record_property("worst_relative_change", assert_alone_equals_in_bucket(alone, in_buckets, torch.bfloat16))
        record_property("captured_buckets", len(graphs_lm.captured_keys))
    finally:
        graphs_lm.close()


@pytest.mark.sglang_gpu(1)
@pytest.mark.sglang(dtype="bfloat16", attention_backend="triton")
def test_kit_attention_is_bitwise_sglangs(runner):
    """k and v handed to the Triton kernel as slices (no copies): bitwise SGLang's own extend path."""
    from pytest_sglang_runner.sglang_compat import attention

    examples = varied_examples(runner.model_config.vocab_size, [9, 40, 66, 17], seed=5)
    objective = mezo.PromptObjective(mezo.SGLangMaskedLM(runner, graphs=False, padding=True), [5, 6])

    def logits():
        prepared = objective.prepare(examples)
        try:
            return objective.lm.mask_logits(prepared[0]).clone()
        finally:
            objective.release(prepared)

    before = attention.direct_calls
    direct = logits()
    layers = attention.direct_calls - before
    assert layers == runner.model_config.hf_config.num_hidden_layers  # every layer took the direct call
    with attention.sglang_path():
        sglangs = logits()
    assert attention.direct_calls - before == layers
    assert torch.equal(direct, sglangs)
