"""The examples of docs/decoders.md, runnable as they stand:

    pytest conftest_examples/decoder_hf                     # CPU: float32, exact tokens
    pytest conftest_examples/decoder_hf --sglang-dtype bfloat16 --sglang-arg enable_fp32_lm_head=true   # GPU

(its pytest.ini: sglang_model = embedded-llama; or any decoder checkpoint directory).
tests/test_examples.py runs both lines, so the page stays true.
"""

import pytest
import torch

from pytest_sglang_runner import assert_logprobs_close, assert_tokens_equal

PROMPTS = ["the film was", "the music and the film were very"]
# bfloat16 keeps 8 bits of mantissa: twice SGLang's float16 tolerances (docs/decoders.md, "Half precision")
BFLOAT16_TOLERANCES = dict(prefill_tolerance=1e-1, decode_tolerance=1.2e-1)


def test_prefill_logits_match_hf(sglang_forward, hf_runner, runner):
    ours = sglang_forward(PROMPTS).next_token_logits.float().cpu()  # [batch, vocab], last position
    theirs = hf_runner.next_token_logits(PROMPTS).float().cpu()
    if runner.dtype == torch.float32:
        assert (ours - theirs).abs().max() <= 1e-4
    else:  # compare the top-5 logprobs, as the tolerance rule does

        def top5(logits):
            return logits.log_softmax(-1).topk(5).values

        assert (top5(ours) - top5(theirs)).abs().max() <= BFLOAT16_TOLERANCES["prefill_tolerance"]


def test_greedy_decode(sglang_forward):
    (result,) = sglang_forward.generate("the film was", max_new_tokens=16, top_logprobs=5)
    assert result.finish_reason in ("stop", "length")
    assert len(result.output_logprobs) == len(result.output_ids)
    print(repr(result.text), result.output_ids, result.output_logprobs[0].top)


def test_decode_matches_hf(sglang_forward, hf_runner, runner):
    ours = sglang_forward.generate(PROMPTS, max_new_tokens=16, top_logprobs=5)
    theirs = hf_runner.generate(PROMPTS, max_new_tokens=16, top_logprobs=5)
    if runner.dtype == torch.float32:
        assert_logprobs_close(ours, theirs)  # rank rule and tolerance rule
        assert_tokens_equal(ours, theirs)  # exact, in float32
    else:
        assert_logprobs_close(ours, theirs, **BFLOAT16_TOLERANCES)


@pytest.mark.sglang(disable_cuda_graph=False)
def test_decode_with_cuda_graphs(sglang_forward, runner):
    results = sglang_forward.generate(PROMPTS, max_new_tokens=16)
    if runner.device == "cuda":  # SGLang captures no graphs on CPU
        assert all(r.graph_steps == r.decode_steps for r in results)
