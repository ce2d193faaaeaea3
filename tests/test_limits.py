"""Batches past the runner's limits are refused before SGLang sees them, naming the limit and the fix."""

import pytest

from pytest_sglang_runner import mezo
from pytest_sglang_runner.errors import BatchLimitError
from pytest_sglang_runner.sglang_compat import batches


def test_limits_are_read_from_the_runner(runner):
    limits = batches.runner_limits(runner)
    config = runner.model_config.hf_config
    # RoBERTa's positions start after the padding index: 2 of its position rows are not for tokens.
    assert limits.max_sequence == config.max_position_embeddings - config.pad_token_id - 1
    assert limits.vocab_size == runner.model_config.vocab_size
    assert limits.kv_slots == batches.free_kv_slots(runner) > 0 and limits.request_slots > 0


def test_the_longest_sequence_the_positions_take_runs_and_one_more_is_refused(sglang_forward, runner):
    longest = batches.runner_limits(runner).max_sequence
    assert sglang_forward([[0] + [5] * (longest - 2) + [2]]).logits[0].shape[0] == longest
    with pytest.raises(
        BatchLimitError, match=rf"sequence 1 has {longest + 1} tokens, but this model takes at most {longest}"
    ):
        sglang_forward([[0, 5, 2], [0] + [5] * (longest - 1) + [2]])


def test_a_token_id_outside_the_vocabulary_is_refused(sglang_forward, runner):
    vocab = runner.model_config.vocab_size
    for bad in (vocab, -1):
        with pytest.raises(
            BatchLimitError, match=rf"sequence 1 has token id {bad}, outside this model's vocabulary \[0, {vocab}\)"
        ):
            sglang_forward([[0, 5, 2], [0, bad, 2]])


def test_more_tokens_than_the_kv_pool_names_the_option(sglang_forward, runner):
    free = batches.free_kv_slots(runner)
    length = batches.runner_limits(runner).max_sequence
    count = free // length + 1
    with pytest.raises(
        BatchLimitError,
        match=rf"needs up to {count * length} KV slots .*\(--sglang-max-total-tokens {count * length}\)",
    ):
        sglang_forward([[5] * length] * count)
    assert batches.free_kv_slots(runner) == free  # nothing was allocated


@pytest.mark.sglang(max_running_requests=4)
def test_more_sequences_than_request_slots_names_the_option(sglang_forward, runner):
    slots = batches.runner_limits(runner).request_slots
    with pytest.raises(
        BatchLimitError,
        match=rf"has {slots + 1} sequences but the runner has {slots} request slots free.*max_running_requests={slots + 1}",
    ):
        sglang_forward([[0, 5, 2]] * (slots + 1))
    assert len(sglang_forward([[0, 5, 2]] * slots).logits) == slots


def test_mezo_batches_are_checked_too(runner):
    lm = mezo.SGLangMaskedLM(runner)
    vocab = runner.model_config.vocab_size
    try:
        with pytest.raises(BatchLimitError, match="outside this model's vocabulary"):
            lm.prepare([[0, vocab + 7, 2]], [1])
    finally:
        lm.close()


def test_generation_past_the_positions_is_refused(runner_factory):
    import torch

    live = runner_factory.get(model="embedded-llama", dtype="bfloat16" if torch.cuda.is_available() else "float32")
    longest = batches.runner_limits(live.model_runner).max_sequence
    assert longest == live.model_runner.model_config.context_len  # rotary positions: all of them are for tokens
    with pytest.raises(
        BatchLimitError, match=rf"sequence 0 has {longest - 4} tokens \+ 16 new, but this model takes at most {longest}"
    ):
        live.forward.generate([[1] + [5] * (longest - 5)], max_new_tokens=16)
