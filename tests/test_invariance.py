"""Batch invariance (issue #23): the needle alone against the needle inside batches of 8 and 32.

What holds on CPU (float32, torch_native attention): the needle's tokens and its prompt logprobs
are the same at every batch size and row, but not every bit of its output: a one-row matmul (the
LM head on the needle's last token alone) rounds differently from a many-row one, so its output
top-k logprobs and last-token logits differ by ~1e-6 from any batch of two or more. So the
positive case uses the kit's rules, and the bitwise report is checked for what does hold. The
negative control is a perturbation that grows with the batch size, hooked onto the model's final
norm for one test only.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from pytest_sglang_runner.compare import BFLOAT16_TOLERANCES
from pytest_sglang_runner.invariance import assert_batch_invariant, check_batch_invariance

pytestmark = pytest.mark.sglang(model="embedded-llama")
CPU_FINDING = pytest.mark.skipif(torch.cuda.is_available(), reason="what holds on CPU; a GPU rounds otherwise")

NEEDLE = "the film was really good and the music"
RANDOM_PROMPTS = 64  # others=N: that many random-token prompts, drawn with the seed


@contextlib.contextmanager
def output_scaled_by_batch_size(forward, step: float):
    """Multiply the final norm's output by ``1 + step * (batch_size - 1)``: batch variance by construction.

    Scaling leaves every greedy token as it was (the argmax of the logits does not move) and moves
    every logprob, so only the tolerance rule can see it."""

    def scale(module, args, hidden_states):
        forward_batch = args[2]  # LlamaModel.forward(input_ids, positions, forward_batch, ...)
        return hidden_states * (1 + step * (forward_batch.batch_size - 1))

    handle = forward.runner.model.model.register_forward_hook(scale)
    try:
        yield
    finally:
        handle.remove()


@CPU_FINDING
def test_on_cpu_the_tokens_are_batch_invariant_and_the_logprobs_within_float32_rounding(sglang_forward):
    report = check_batch_invariance(sglang_forward, NEEDLE, RANDOM_PROMPTS, batch_sizes=(1, 8, 32))
    assert [(case.batch_size, case.label) for case in report.cases] == [
        (1, "first/middle/last"),
        *[(size, label) for size in (8, 32) for label in ("first", "middle", "last")],
    ]
    assert report.cases[0].identical, "the needle alone, run twice, is not bit-identical"
    assert all(case.first_divergence is None for case in report.cases), report.table()
    assert all(case.max_abs_difference < 1e-4 for case in report.cases), report.table()


def test_the_needle_passes_the_kits_rules_in_batches_of_8_and_32(sglang_forward):
    rules = {} if sglang_forward.runner.dtype == torch.float32 else BFLOAT16_TOLERANCES
    report = assert_batch_invariant(sglang_forward, NEEDLE, RANDOM_PROMPTS, compare=rules)
    assert len(report.cases) == 7


@CPU_FINDING
def test_on_cpu_the_last_token_logits_alone_are_deterministic_and_in_a_batch_within_float32_rounding(sglang_forward):
    report = check_batch_invariance(sglang_forward, NEEDLE, RANDOM_PROMPTS, what="logits", batch_sizes=(1, 8))
    assert report.cases[0].identical and report.cases[0].max_abs_difference == 0.0
    assert all(case.max_abs_difference < 1e-4 for case in report.cases), report.table()


def test_negative_control_a_batch_dependent_perturbation_fails_at_the_right_batch_sizes(sglang_forward):
    """The check can fail: with the output scaled by the batch size, batches of 8 and 32 fail the
    rules at every row while a batch of 1 (the needle alone again) still passes."""
    with output_scaled_by_batch_size(sglang_forward, step=0.1):
        report = check_batch_invariance(sglang_forward, NEEDLE, RANDOM_PROMPTS, compare={})
        with pytest.raises(AssertionError) as failure:
            assert_batch_invariant(sglang_forward, NEEDLE, RANDOM_PROMPTS, compare={}, batch_sizes=(1, 8))
    assert [(case.batch_size, case.label) for case in report.failures] == [
        (size, label) for size in (8, 32) for label in ("first", "middle", "last")
    ]
    assert all(case.first_divergence is None for case in report.cases)  # the tokens did not move
    message = str(failure.value)
    assert "changed inside a batch" in message and "in 3 of 4 cases" in message
    assert "FAIL" not in message.splitlines()[2]  # the batch of 1's row
    assert all(line.startswith("8 ") and "FAIL" in line for line in message.splitlines()[3:])


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(batch_sizes=(8,), positions=(8,)), "positions: row 8 is past the batch of 8"),
        (dict(positions=("end",)), "positions: 'end'"),
        (dict(batch_sizes=(0, 8)), "batch_sizes="),
        (dict(batch_sizes=(8,), others=3), "others: 3 prompts"),
        (dict(what="logits", compare={}), "what='generate'"),
        (dict(compare="close"), "compare='close'"),
    ],
)
def test_a_bad_argument_is_a_value_error_naming_it(sglang_forward, options, named):
    options.setdefault("others", RANDOM_PROMPTS)
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        check_batch_invariance(sglang_forward, NEEDLE, **options)


def test_a_batch_past_the_kv_pool_is_a_value_error_before_anything_runs(sglang_forward, monkeypatch):
    long_prompts = [[10 + i] * 100 for i in range(47)]  # 48 x (100 + 8) tokens > the default 4096
    monkeypatch.setattr(sglang_forward, "generate", lambda *a, **k: pytest.fail("ran before the limits were checked"))
    with pytest.raises(ValueError, match=r"the batch of 48 does not fit.*--sglang-max-total-tokens"):
        check_batch_invariance(sglang_forward, NEEDLE, long_prompts, batch_sizes=(1, 48))


def test_others_may_be_texts_and_the_seed_decides_the_batches(sglang_forward, monkeypatch):
    texts = ["the acting was bad", "a long and boring story", "It", "music !", "the film was very good"]
    batches = []
    generate = sglang_forward.generate

    def recording_generate(prompts, **options):
        batches.append(prompts)
        return generate(prompts, **options)

    monkeypatch.setattr(sglang_forward, "generate", recording_generate)

    def draw(seed: int) -> list:
        batches.clear()
        check_batch_invariance(sglang_forward, NEEDLE, texts, batch_sizes=(4,), positions=(1,), seed=seed)
        return list(batches)

    first = draw(seed=0)
    assert first == draw(seed=0) and first != draw(seed=1)
    needle_ids = sglang_forward.token_lists([NEEDLE])[0]
    assert first[0] == [needle_ids] and len(first[1]) == 4 and first[1][1] == needle_ids
