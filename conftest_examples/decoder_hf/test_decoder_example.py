"""The examples of docs/decoders.md, runnable as they stand (on CPU, float32):

    pytest conftest_examples/decoder_hf    (its pytest.ini: sglang_model = embedded-llama)

(or any decoder checkpoint directory). tests/test_decoder.py runs this file, so the page stays true.
"""

import pytest

from pytest_sglang_runner import assert_logprobs_close, assert_tokens_equal

PROMPTS = ["the film was", "the music and the film were very"]


def test_prefill_logits_match_hf(sglang_forward, hf_runner):
    ours = sglang_forward(PROMPTS).next_token_logits.float().cpu()  # [batch, vocab], last position
    theirs = hf_runner.next_token_logits(PROMPTS).float().cpu()
    assert (ours - theirs).abs().max() <= 1e-4


def test_greedy_decode(sglang_forward):
    (result,) = sglang_forward.generate("the film was", max_new_tokens=16, top_logprobs=5)
    assert result.finish_reason in ("stop", "length")
    assert len(result.output_logprobs) == len(result.output_ids)
    print(repr(result.text), result.output_ids, result.output_logprobs[0].top)


def test_decode_matches_hf(sglang_forward, hf_runner):
    ours = sglang_forward.generate(PROMPTS, max_new_tokens=16, top_logprobs=5)
    theirs = hf_runner.generate(PROMPTS, max_new_tokens=16, top_logprobs=5)
    assert_logprobs_close(ours, theirs)  # rank rule and tolerance rule
    assert_tokens_equal(ours, theirs)  # exact, in float32


@pytest.mark.sglang(disable_cuda_graph=False)
def test_decode_with_cuda_graphs(sglang_forward, runner):
    results = sglang_forward.generate(PROMPTS, max_new_tokens=16)
    if runner.device == "cuda":  # SGLang captures no graphs on CPU
        assert all(r.graph_steps == r.decode_steps for r in results)
