"""The comparison helpers' two rules, on hand-made generations (the rules are plain Python)."""

import dataclasses

import pytest

from pytest_sglang_runner import (
    Generation,
    TokenLogprob,
    assert_logprobs_close,
    assert_tokens_equal,
    logprob_mismatches,
    max_logprob_differences,
)


def entry(token, top):
    return TokenLogprob(token, top[token] if token in top else -9.0, top)


def generation(output, tops, prompt=(0, 5, 6), prompt_top=None):
    prompt_top = prompt_top or {5: -0.5, 7: -1.5}
    return Generation(
        prompt_ids=list(prompt),
        output_ids=list(output),
        prompt_logprobs=[None] + [entry(token, prompt_top) for token in prompt[1:]],
        output_logprobs=[entry(token, top) for token, top in zip(output, tops)],
    )


TOPS = [{11: -0.1, 12: -2.5}, {21: -0.2, 22: -1.9}, {31: -0.3, 32: -1.4}]


def test_identical_generations_pass_both_rules():
    ours, theirs = generation([11, 21, 31], TOPS), generation([11, 21, 31], TOPS)
    assert logprob_mismatches([ours], [theirs]) == []
    assert_tokens_equal([ours], [theirs])


def test_rank_rule_accepts_a_divergence_inside_each_others_top_k_and_stops_comparing_there():
    theirs_tops = [TOPS[0], {22: -0.2, 21: -0.21}, {99: -0.1, 98: -3.0}]  # tokens differ at 1; 2 is not compared
    ours, theirs = generation([11, 21, 31], TOPS), generation([11, 22, 99], theirs_tops)
    assert logprob_mismatches([ours], [theirs], tolerance_rule=False) == []
    with pytest.raises(AssertionError, match="1 of 1 sequences differ"):
        assert_tokens_equal([ours], [theirs])


def test_rank_rule_fails_when_a_token_is_outside_the_other_top_k_and_prints_a_table():
    ours, theirs = generation([11, 21], TOPS[:2]), generation([11, 23], [TOPS[0], {23: -0.1, 24: -0.9}])
    with pytest.raises(AssertionError) as failure:
        assert_logprobs_close([ours], [theirs], tolerance_rule=False)
    table = str(failure.value).splitlines()
    assert table[0] == "sglang and hf logprobs disagree at 1 position(s):"
    assert table[1].split() == [
        "rule",
        "seq",
        "position",
        "sglang",
        "token",
        "hf",
        "token",
        "sglang",
        "logprob",
        "hf",
        "logprob",
        "detail",
    ]
    assert table[2].split()[:7] == ["rank", "0", "output", "1", "21", "23", "-0.2000"]
    assert "ours not in their top-k; theirs not in our top-k" in table[2]


def test_tolerance_rule_checks_prompt_and_output_top_k_values_up_to_the_divergence():
    shifted = [{11: -0.1, 12: -2.5}, {21: -0.2, 22: -1.9 + 0.07}, {31: -0.3, 32: -1.4}]  # 0.07 > 6e-2 at output 1
    ours, theirs = (
        generation([11, 21, 31], TOPS),
        generation([11, 21, 31], shifted, prompt_top={5: -0.5, 7: -1.5 + 0.04}),
    )
    mismatches = logprob_mismatches([ours], [theirs], rank_rule=False)
    assert [(m.rule, m.position) for m in mismatches] == [("tolerance", "output 1")]
    assert logprob_mismatches([ours], [theirs], rank_rule=False, prefill_tolerance=3e-2)[0].position == "prompt 1"
    assert logprob_mismatches([ours], [theirs], rank_rule=False, decode_tolerance=8e-2) == []


def test_same_tokens_but_one_side_stopped_earlier_fails_the_rank_rule():
    ours, theirs = generation([11, 21], TOPS[:2]), generation([11, 21, 31], TOPS)
    (mismatch,) = logprob_mismatches([ours], [theirs], tolerance_rule=False)
    assert "same tokens, but lengths 2 and 3" in mismatch.detail


def test_rules_need_logprobs_and_the_same_prompts():
    ours = generation([11], TOPS[:1])
    with pytest.raises(ValueError, match="top_logprobs"):
        logprob_mismatches([ours], [Generation(prompt_ids=ours.prompt_ids, output_ids=[11])])
    with pytest.raises(ValueError, match="different prompts"):
        logprob_mismatches([ours], [generation([11], TOPS[:1], prompt=(0, 5, 7))])
    with pytest.raises(ValueError, match="1 generations against 2"):
        assert_tokens_equal([ours], [ours, ours])


def without_top_k(result, phase, position):
    """A copy of ``result`` whose entry at ``phase`` ``position`` has an empty top-k (a side that returned none)."""
    entries = list(getattr(result, f"{phase}_logprobs"))
    entries[position] = dataclasses.replace(entries[position], top={})
    return dataclasses.replace(result, **{f"{phase}_logprobs": entries})


def test_a_position_where_either_side_has_no_top_k_fails_naming_the_side_and_the_position():
    """An empty top-k would compare nothing (a gap of 0.0): it fails the tolerance rule instead."""
    ours, theirs = generation([11, 21, 31], TOPS), generation([11, 21, 31], TOPS)
    assert_logprobs_close([ours], [theirs], names=("runner", "server"))  # the control: the same data passes
    assert max_logprob_differences([ours], [theirs]) == {"prompt": 0.0, "output": 0.0}
    cases = [
        (without_top_k(ours, "output", 1), theirs, "runner", "output 1"),
        (without_top_k(ours, "prompt", 2), theirs, "runner", "prompt 2"),
        (ours, without_top_k(theirs, "output", 0), "server", "output 0"),
        (ours, without_top_k(theirs, "prompt", 1), "server", "prompt 1"),
    ]
    for a, b, side, position in cases:
        with pytest.raises(AssertionError) as failure:
            assert_logprobs_close([a], [b], names=("runner", "server"))
        lines = str(failure.value).splitlines()
        assert lines[0] == "runner and server logprobs disagree at 1 position(s):"
        assert lines[2].split()[:4] == ["tolerance", "0", *position.split()]
        assert lines[2].endswith(f"no top-k logprobs from {side}: nothing to compare")
        with pytest.raises(AssertionError, match=f"^sequence 0, {position}: no top-k logprobs from {side}: "):
            max_logprob_differences([a], [b], names=("runner", "server"))


def test_a_side_with_no_top_k_anywhere_or_missing_entries_fails_at_every_position():
    ours = generation([11, 21, 31], TOPS)
    empty = generation([11, 21, 31], [{}, {}, {}])  # a side that returned no top-k at all
    empty = dataclasses.replace(
        empty, prompt_logprobs=[None] + [dataclasses.replace(e, top={}) for e in empty.prompt_logprobs[1:]]
    )
    mismatches = logprob_mismatches([ours], [empty], rank_rule=False)
    assert [m.position for m in mismatches] == ["prompt 1", "prompt 2", "output 0", "output 1", "output 2"]
    assert {m.detail for m in mismatches} == {"no top-k logprobs from hf: nothing to compare"}
    lacking = without_top_k(ours, "output", 2)
    (both,) = logprob_mismatches([lacking], [lacking], rank_rule=False)
    assert (both.position, both.detail) == ("output 2", "no top-k logprobs from sglang and hf: nothing to compare")
    no_prompt = dataclasses.replace(ours, prompt_logprobs=None)  # a side that returned no prompt logprobs
    assert [m.position for m in logprob_mismatches([ours], [no_prompt])] == ["prompt 1", "prompt 2"]
    short = dataclasses.replace(ours, output_logprobs=ours.output_logprobs[:2])  # an output entry missing
    (missing,) = logprob_mismatches([short], [ours], rank_rule=False)
    assert (missing.position, missing.ours, missing.detail) == (
        "output 2",
        None,
        "no top-k logprobs from sglang: nothing to compare",
    )
