"""Decoder LLMs end to end on the real runner: prefill logits, greedy decode, logprobs, EOS, KV pool, CUDA graphs.

The decoders are the kit's embedded-llama and its tiny Llama, Qwen2, Qwen3, Mistral and GPT-2
checkpoints (`tiny_checkpoint`: seeded random weights with clear top-1 margins, the embedded
decoder tokenizer), each copied with the EOS its greedy decode reaches at step 4. On CPU the runner runs float32 and
must give HF's tokens exactly. On a GPU it runs bfloat16 (sgl_kernel has no float32 RMSNorm),
against HF in bfloat16 on the same GPU, and must pass the rank and tolerance rules. There both
sides compute the LM head in float32 (``enable_fp32_lm_head``): bfloat16 rounds a logit of 8 to
steps of 0.0625, the size of the tolerance itself, and that rounding is not what is under test.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pytest_sglang_runner import devices
from pytest_sglang_runner.compare import (
    BFLOAT16_TOLERANCES,
    assert_logprobs_close,
    assert_tokens_equal,
    max_logprob_differences,
)
from pytest_sglang_runner.errors import SpecError
from pytest_sglang_runner.reference import HFRunner

# Different lengths; the embedded decoder ends some early with EOS.
PROMPTS = ["the film was", "the music and the film were very", "It", "this story is really good ! the acting"]
MAX_NEW_TOKENS = 16


# The tiny checkpoints (`tiny_checkpoint`: seeded random weights, the LM head scaled for clear
# top-1 margins, the embedded decoder tokenizer) of these architectures.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}


def _set_eos(directory, eos: int) -> None:
    for name in ("config.json", "generation_config.json"):
        path = directory / name
        config = json.loads(path.read_text())
        config["eos_token_id"] = eos
        path.write_text(json.dumps(config, indent=2))


def write_decoder(checkpoint, directory, dtype: str, device: str):
    """A copy of ``checkpoint`` whose EOS is the token its greedy decode of PROMPTS[0] reaches at step 4."""
    shutil.copytree(checkpoint, directory, dirs_exist_ok=True)
    continuation = HFRunner(directory, dtype=dtype, device=device).generate(
        PROMPTS[:1], max_new_tokens=8, top_logprobs=None, ignore_eos=True
    )
    tokens = continuation[0].output_ids
    _set_eos(directory, next((t for i, t in enumerate(tokens) if i >= 3 and t not in tokens[:i]), tokens[0]))
    return directory


@pytest.fixture(scope="session")
def decoder_device(runner_factory) -> str:
    return devices.resolve_device(runner_factory.default_spec.device)


@pytest.fixture(scope="session")
def decoder_dtype(runner_factory, decoder_device) -> str:
    """--sglang-dtype when given; else float32 on CPU and bfloat16 on CUDA."""
    chosen = runner_factory.default_spec.dtype
    if chosen != "auto":
        return chosen
    return "float32" if decoder_device == "cpu" else "bfloat16"


@pytest.fixture(scope="module", params=["embedded-llama", *ARCHITECTURES])
def decoder(request, tmp_path_factory, runner_factory, tiny_checkpoint, decoder_dtype, decoder_device) -> dict:
    """Runner overrides for one decoder: its model (name or directory) and the test dtype."""
    model = request.param
    if model in ARCHITECTURES:
        hf_device = (
            "cpu"
            if decoder_device == "cpu"
            else f"cuda:{devices.gpu_ids_for_worker(runner_factory.worker_index, 1)[0]}"
        )
        checkpoint = tiny_checkpoint(ARCHITECTURES[model])
        model = str(write_decoder(checkpoint, tmp_path_factory.mktemp(model), decoder_dtype, hf_device))
    half = {} if decoder_dtype == "float32" else dict(enable_fp32_lm_head=True)
    return dict(model=model, dtype=decoder_dtype, **half)


def exact(dtype: str) -> bool:
    return dtype == "float32"


def tolerances(dtype: str) -> dict:
    return BFLOAT16_TOLERANCES if dtype == "bfloat16" else {}


def test_prefill_logits_match_hf(runner_factory, decoder):
    live = runner_factory.get(**decoder)
    hf = runner_factory.hf_runner(runner_factory.spec_for(**decoder))
    ours = live.forward(PROMPTS).next_token_logits.float().cpu()
    theirs = hf.next_token_logits(PROMPTS).float().cpu()
    if exact(decoder["dtype"]):
        assert (ours - theirs).abs().max().item() <= 1e-4
    else:
        top = lambda logits: torch.log_softmax(logits, -1).topk(5).values  # noqa: E731
        assert (top(ours) - top(theirs)).abs().max().item() < tolerances(decoder["dtype"]).get(
            "prefill_tolerance", 5e-2
        )


def test_greedy_decode_matches_hf_and_returns_every_kv_slot(runner_factory, decoder, record_property):
    live = runner_factory.get(**decoder)
    hf = runner_factory.hf_runner(runner_factory.spec_for(**decoder))
    pools = live.model_runner.token_to_kv_pool_allocator, live.model_runner.req_to_token_pool
    free_before = [pool.available_size() for pool in pools]
    ours = live.forward.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS, top_logprobs=5)
    assert [pool.available_size() for pool in pools] == free_before
    theirs = hf.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS, top_logprobs=5)
    for phase, difference in max_logprob_differences(ours, theirs).items():
        record_property(f"max_{phase}_logprob_difference", f"{difference:.4f}")
    assert_logprobs_close(ours, theirs, **tolerances(decoder["dtype"]))
    if exact(decoder["dtype"]):
        assert_tokens_equal(ours, theirs)
    # HF's generate gives ids only, so neither text is independent (the two were equal whenever the
    # tokens were): each side's text must be transformers' decode of its own ids, special tokens skipped.
    decoded = lambda result: hf.tokenizer.decode(result.output_ids, skip_special_tokens=True)  # noqa: E731
    assert any(g.text for g in ours) and [g.text for g in ours] == [decoded(g) for g in ours]
    assert [g.text for g in theirs] == [decoded(g) for g in theirs]
    for result in ours:
        assert len(result.output_logprobs) == len(result.output_ids)
        assert len(result.prompt_logprobs) == len(result.prompt_ids) and result.prompt_logprobs[0] is None
        assert all(len(entry.top) == 5 for entry in result.output_logprobs + result.prompt_logprobs[1:])


def test_eos_stops_a_sequence_early(runner_factory, decoder):
    live = runner_factory.get(**decoder)
    hf = runner_factory.hf_runner(runner_factory.spec_for(**decoder))
    eos = hf.eos_token_ids
    ours = live.forward.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS, top_logprobs=5)
    stopped = [g for g in ours if g.finish_reason == "stop"]
    assert stopped and all(len(g.output_ids) < MAX_NEW_TOKENS and g.output_ids[-1] in eos for g in stopped)
    assert all(len(g.output_ids) == MAX_NEW_TOKENS for g in ours if g.finish_reason == "length")
    assert all(g.decode_steps == len(g.output_ids) - 1 for g in ours)
    first = PROMPTS[0]
    (ignoring,) = live.forward.generate(first, max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True)
    assert len(ignoring.output_ids) == MAX_NEW_TOKENS and ignoring.finish_reason == "length"
    stop_token = ignoring.output_ids[1]
    (stopping,) = live.forward.generate(
        first, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[stop_token], ignore_eos=False
    )
    assert stopping.output_ids[-1] in {stop_token} | eos and len(stopping.output_ids) <= 2
    if exact(decoder["dtype"]):
        assert_tokens_equal([ignoring], hf.generate(first, max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True))
        assert_tokens_equal([stopping], hf.generate(first, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[stop_token]))


@pytest.mark.sglang_gpu(1)
def test_cuda_graph_decode_replays_graphs_and_gives_the_eager_tokens(runner_factory, decoder, monkeypatch):
    graphs = dict(decoder, disable_cuda_graph=False)
    eager = runner_factory.get(**decoder).forward.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS)
    live = runner_factory.get(**graphs)
    replays = []
    real_replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda graph: (replays.append(graph), real_replay(graph))[1])
    replayed = live.forward.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS)
    assert [g.output_ids for g in replayed] == [g.output_ids for g in eager]
    assert all(g.decode_steps > 0 and g.graph_steps == g.decode_steps for g in replayed if len(g.output_ids) > 1)
    assert len(replays) >= max(g.decode_steps for g in replayed) > 0
    hf = runner_factory.hf_runner(runner_factory.spec_for(**decoder))
    assert_logprobs_close(replayed, hf.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS), **tolerances(decoder["dtype"]))


@pytest.mark.sglang_gpu(1)
def test_float32_on_cuda_runs_or_is_a_usage_error_naming_bfloat16(runner_factory, tiny_checkpoint, record_property):
    path = str(tiny_checkpoint("LlamaForCausalLM"))
    try:
        live = runner_factory.get(model=path, dtype="float32")
    except SpecError as exc:
        record_property("outcome", str(exc))
        assert "--sglang-dtype bfloat16" in str(exc)
        return
    record_property("outcome", "float32 runs")
    hf = HFRunner(path, dtype="float32", device=live.model_runner.device)
    assert (live.forward(PROMPTS).next_token_logits - hf.next_token_logits(PROMPTS)).abs().max().item() <= 1e-2


def test_generate_on_an_embedding_model_is_a_clear_error(sglang_forward):
    with pytest.raises(ValueError, match=r"generate\(\) needs a generative model"):
        sglang_forward.generate("the film was")


def test_bad_generate_arguments_and_a_batch_too_big_for_the_pool_are_clear_errors(runner_factory, decoder_dtype):
    live = runner_factory.get(model="embedded-llama", dtype=decoder_dtype, max_total_tokens=128)
    pools = live.model_runner.token_to_kv_pool_allocator, live.model_runner.req_to_token_pool
    free_before = [pool.available_size() for pool in pools]  # free KV token slots, free request slots
    with pytest.raises(ValueError, match="max_new_tokens=0: expected a whole number >= 1"):
        live.forward.generate("the film was", max_new_tokens=0)
    with pytest.raises(ValueError, match="top_logprobs=-1: expected a whole number >= 0, or None"):
        live.forward.generate("the film was", top_logprobs=-1)
    with pytest.raises(ValueError, match=r"needs up to \d+ KV slots .*--sglang-max-total-tokens \d+"):
        live.forward.generate(["the film was"] * 8, max_new_tokens=16)
    assert [pool.available_size() for pool in pools] == free_before  # nothing was left allocated
    assert live.forward.generate("the film was", max_new_tokens=4)[0].output_ids  # and the runner still decodes


USER_TEST = """
from pytest_sglang_runner import assert_logprobs_close


def test_decode_matches_hf(sglang_forward, hf_runner):
    prompts = ["the film was", "the music and the film were very"]
    ours = sglang_forward.generate(prompts, max_new_tokens=16, top_logprobs=5)
    theirs = hf_runner.generate(prompts, max_new_tokens=16, top_logprobs=5)
    assert_logprobs_close(ours, theirs, prefill_tolerance=%r, decode_tolerance=%r)
    print("TEXTS", [g.text for g in ours], [g.text for g in theirs])
"""


def test_a_user_test_needs_only_sglang_forward_and_hf_runner(pytester, runner_factory, decoder_dtype):
    checkpoint = runner_factory.model_path(runner_factory.spec_for(model="embedded-llama"))
    limits = dict(dict(prefill_tolerance=5e-2, decode_tolerance=6e-2), **tolerances(decoder_dtype))
    pytester.makepyfile(test_user=USER_TEST % (limits["prefill_tolerance"], limits["decode_tolerance"]))
    half = [] if decoder_dtype == "float32" else ["--sglang-arg=enable_fp32_lm_head=true"]  # hf_runner follows it
    result = pytester.runpytest_subprocess(
        "-s",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore",
        f"--sglang-model={checkpoint}",
        f"--sglang-dtype={decoder_dtype}",
        *half,
    )
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r".*TEXTS \['[^']+', '[^']+'\] \['[^']+', '[^']+'\]$"])


@pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="TP=2 on CUDA needs 2 GPUs")
def test_tensor_parallel_prefill_and_generate_give_the_tp1_results(runner_factory, decoder_dtype):
    """Rank 0 runs prefill and decodes; the peer ranks replay the same calls, so their collectives line up."""
    tp1 = runner_factory.get(model="embedded-llama", dtype=decoder_dtype).forward
    prefill_one, full_one, one = (
        tp1.logits(PROMPTS).float(),
        tp1.full_logits(PROMPTS),
        tp1.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True),
    )
    tp2 = runner_factory.get(model="embedded-llama", dtype=decoder_dtype, tp=2).forward
    prefill_two, full_two, two = (
        tp2.logits(PROMPTS).float(),
        tp2.full_logits(PROMPTS),  # the peers gather their halves of the LM head too
        tp2.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True),
    )
    # Next-token logits after the prompt: TP=2 sums each row in two halves, so equal to float rounding.
    tolerance = 1e-4 if decoder_dtype == "float32" else 5e-2
    assert (prefill_two - prefill_one).abs().max().item() <= tolerance * prefill_one.abs().max().item()
    for a, b in zip(full_two, full_one):
        assert a.shape == b.shape and (a - b).abs().max().item() <= tolerance * b.abs().max().item()
    assert [g.output_ids for g in two] == [g.output_ids for g in one] and all(
        len(g.output_ids) == MAX_NEW_TOKENS for g in one
    )
    assert_logprobs_close(two, one, names=("tp2", "tp1"), **tolerances(decoder_dtype))
    hf = runner_factory.hf_runner(runner_factory.spec_for(model="embedded-llama", dtype=decoder_dtype))
    assert_logprobs_close(
        two,
        hf.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True),
        names=("tp2", "hf"),
        **tolerances(decoder_dtype),
    )
