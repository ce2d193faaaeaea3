"""Two runner configs in one test (`sglang_compare`), and every position's logits of a decoder.

A flag that must change nothing (the KV pool's size) passes; another model fails with the rules'
table naming both configs. The outputs are kept per config and prompt set: a second comparison
and a prefetched prompt set build nothing.
"""

from __future__ import annotations

import pytest
import torch

from pytest_sglang_runner.ab import assert_embeddings_close, check_not_mixed
from pytest_sglang_runner.errors import SpecError

PROMPTS = ["the film was", "It", "this story is really good ! the acting"]
SMALLER_POOL = dict(max_total_tokens=2048)  # a different build that must give the same outputs
pytestmark = pytest.mark.sglang(model="embedded-llama", dtype="float32")


def test_a_flag_that_changes_nothing_passes_and_is_built_once(sglang_compare, runner_factory):
    ours, theirs = sglang_compare(PROMPTS, baseline={}, candidate=SMALLER_POOL, max_new_tokens=6)
    assert [g.output_ids for g in ours] == [g.output_ids for g in theirs]
    assert all(g.output_logprobs for g in ours)
    builds = len(runner_factory.records)
    sglang_compare(PROMPTS, baseline={}, candidate=SMALLER_POOL, max_new_tokens=6)
    sglang_compare(PROMPTS, baseline={}, candidate=SMALLER_POOL, kind="tokens", max_new_tokens=6)
    assert len(runner_factory.records) == builds + 1  # kind="tokens" asks again, in the live config first


def test_prefetch_builds_each_config_once_for_every_prompt_set(sglang_compare, runner_factory):
    sets = [PROMPTS[:1], PROMPTS[1:], ["the music and the film were very"]]
    before = len(runner_factory.records)
    sglang_compare.prefetch(sets, baseline={}, candidate=dict(max_total_tokens=3072), max_new_tokens=4)
    assert len(runner_factory.records) - before <= 2
    built = len(runner_factory.records)
    for prompts in sets:
        sglang_compare(prompts, baseline={}, candidate=dict(max_total_tokens=3072), max_new_tokens=4)
    assert len(runner_factory.records) == built


def test_another_model_fails_with_a_table_naming_both_configs(sglang_compare):
    with pytest.raises(AssertionError) as failure:
        sglang_compare(PROMPTS, baseline={}, candidate=dict(model="tiny:LlamaForCausalLM"), max_new_tokens=6)
    text = str(failure.value)
    assert "baseline and candidate (model='tiny:LlamaForCausalLM') logprobs disagree" in text
    assert "rank" in text and "candidate (model='tiny:LlamaForCausalLM') token" in text


def test_outputs_are_copies_of_the_cache(sglang_compare):
    first = sglang_compare.outputs({}, PROMPTS[:1], max_new_tokens=3)
    first[0].output_ids.clear()
    assert sglang_compare.outputs({}, PROMPTS[:1], max_new_tokens=3)[0].output_ids


@pytest.mark.sglang(model="embedded-roberta")
def test_embeddings_compare_by_cosine(sglang_compare):
    ours, theirs = sglang_compare(
        ["a good film", "the acting was bad"], baseline={}, candidate=SMALLER_POOL, kind="embeddings"
    )
    assert len(ours) == 2 and ours[0].shape == theirs[0].shape
    with pytest.raises(AssertionError, match="cosine below 0.99"):
        assert_embeddings_close(ours, [-row for row in theirs], names=("a", "b"))


def test_bad_kind_and_options_are_refused(sglang_compare):
    with pytest.raises(ValueError, match="kind='text'"):
        sglang_compare(PROMPTS, baseline={}, candidate=SMALLER_POOL, kind="text")
    with pytest.raises(ValueError, match="embeddings take no generate options"):
        sglang_compare.outputs({}, PROMPTS, kind="embeddings", max_new_tokens=3)


def test_a_runner_fixture_beside_it_is_a_setup_error():
    with pytest.raises(SpecError, match="tears down this test's sglang_forward"):
        check_not_mixed(["sglang_compare", "sglang_forward"], {"runner", "sglang_forward"})


def test_full_logits_are_every_positions_and_match_hf(sglang_forward, hf_runner):
    ours = sglang_forward.full_logits(PROMPTS)
    theirs = hf_runner.full_logits(PROMPTS)
    last = sglang_forward.logits(PROMPTS)
    for index, prompt in enumerate(sglang_forward.token_lists(PROMPTS)):
        assert ours[index].shape == (len(prompt), last.shape[-1])
        torch.testing.assert_close(ours[index], theirs[index], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours[index][-1], last[index], rtol=1e-5, atol=1e-5)
