"""Decoder MeZO on the runner (embedded-llama, CPU in CI): HF's parameters on SGLang's fused
tensors, the same projected gradients as the HF twin, bitwise restore and replay."""

from __future__ import annotations

import pytest
import torch

from pytest_sglang_runner import mezo
from pytest_sglang_runner.mezo import sst2
from pytest_sglang_runner.mezo.causal_lm import DecoderPrompt, HFCausalLM, SGLangCausalLM

# torch_native: on CUDA the triton kernels compute in TF32, coarser than the 1e-4 these tests hold to HF.
# Float32 itself: `float32_decoder` skips where this SGLang's CUDA kernels lack it.
pytestmark = [
    pytest.mark.sglang(model="embedded-llama", dtype="float32", attention_backend="torch_native"),
    pytest.mark.usefixtures("float32_decoder"),
]


@pytest.fixture
def decoder_prompt(sglang_model_path):
    from transformers import AutoTokenizer

    return DecoderPrompt(AutoTokenizer.from_pretrained(sglang_model_path))


@pytest.fixture
def decoder_lm(runner):
    """The runner as a MeZO decoder; its weights and KV slots are given back after the test."""
    lm = SGLangCausalLM(runner)
    start = mezo.canonical_state(lm.views)
    yield lm
    lm.close()
    mezo.load_canonical(lm.views, start)


@pytest.fixture
def fresh_hf_decoder(sglang_model_path):
    from transformers import AutoModelForCausalLM

    return lambda: AutoModelForCausalLM.from_pretrained(sglang_model_path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def sentiment():
    return sst2.synthetic_examples(96, *sst2.embedded_word_lists(), seed=2)


def test_views_are_hf_parameters_on_the_fused_tensors(decoder_lm, fresh_hf_decoder, runner):
    hf = HFCausalLM(fresh_hf_decoder())
    assert [v.name for v in decoder_lm.views] == [v.name for v in hf.views]
    for ours, theirs in zip(decoder_lm.views, hf.views):
        assert torch.equal(ours.tensor, theirs.tensor), ours.name
    layer, config = runner.model.model.layers[0], hf.model.config
    by_name = {v.name: v.tensor for v in decoder_lm.views}
    by_name["model.layers.0.self_attn.k_proj.weight"].add_(1.0)  # writes through to SGLang's fused tensors
    by_name["model.layers.0.mlp.up_proj.weight"].add_(1.0)
    q_rows, kv_rows = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    k_rows = layer.self_attn.qkv_proj.weight[q_rows : q_rows + kv_rows]
    assert torch.equal(k_rows, theirs_k := hf.model.model.layers[0].self_attn.k_proj.weight + 1.0), theirs_k
    up_rows = layer.mlp.gate_up_proj.weight[config.intermediate_size :]
    assert torch.equal(up_rows, hf.model.model.layers[0].mlp.up_proj.weight + 1.0)


def test_scores_match_hf(decoder_lm, fresh_hf_decoder, decoder_prompt, sentiment):
    examples = decoder_prompt.encode_all(sentiment[:16])
    ours = mezo.PromptObjective(decoder_lm, decoder_prompt.label_word_ids)
    theirs = mezo.PromptObjective(HFCausalLM(fresh_hf_decoder()), decoder_prompt.label_word_ids)
    a, b = ours.prepare(examples), theirs.prepare(examples)
    try:
        assert torch.allclose(ours.scores(a), theirs.scores(b), atol=1e-4)
    finally:
        ours.release(a)


def test_projected_gradients_match_hf(decoder_lm, fresh_hf_decoder, decoder_prompt, sentiment, record_property):
    """20 steps on the runner and on HF from the same weights and seeds: the same g within 1e-4."""
    train = decoder_prompt.encode_all(sentiment)
    hp = dict(lr=1e-3, eps=1e-2, weight_decay=0.1, seed=5)
    hf = HFCausalLM(fresh_hf_decoder())
    a = mezo.MeZO(decoder_lm.views, mezo.PromptObjective(decoder_lm, decoder_prompt.label_word_ids), **hp)
    b = mezo.MeZO(hf.views, mezo.PromptObjective(hf, decoder_prompt.label_word_ids), **hp)
    a.train(train, 20, batch_size=16)
    b.train(train, 20, batch_size=16)
    grads = list(zip(a.history.projected_grad, b.history.projected_grad))
    rms = (sum(g * g for g, _ in grads) / len(grads)) ** 0.5
    worst = max(abs(x - y) / max(abs(x), abs(y), rms) for x, y in grads)
    record_property("worst_relative_g_difference", worst)
    assert worst <= 1e-4, grads
    assert mezo.max_abs_difference(a.masters, b.masters) < 1e-5


def test_step_restores_and_replays_bitwise(decoder_lm, decoder_prompt, sentiment):
    train = decoder_prompt.encode_all(sentiment[:32])
    objective = mezo.PromptObjective(decoder_lm, decoder_prompt.label_word_ids)
    opt = mezo.MeZO(decoder_lm.views, objective, lr=1e-3, eps=1e-2, seed=9)
    before = mezo.canonical_state(decoder_lm.views)
    opt.zo_step(train[:16])
    assert mezo.max_abs_difference(mezo.canonical_state(decoder_lm.views), before) == 0.0
    opt.train(train, 4, batch_size=16)
    trained = mezo.canonical_state(decoder_lm.views)
    mezo.load_canonical(decoder_lm.views, before)
    again = mezo.MeZO(decoder_lm.views, objective, lr=1e-3, eps=1e-2, seed=123)
    assert len(opt.checkpoint.steps) == 4  # zo_step alone records no update
    again.replay(opt.checkpoint)
    assert all(torch.equal(x, y) for x, y in zip(mezo.canonical_state(decoder_lm.views), trained))


def test_a_decoder_is_scored_at_the_last_position(decoder_lm):
    with pytest.raises(ValueError, match="last position"):
        decoder_lm.prepare([[0, 5, 6, 7]], [2])


def with_demonstrations(decoder_prompt, examples, demonstrations):
    """Each example's prompt after the same demonstrations ("<s> demo It was great ... query It was")."""
    tokenizer = decoder_prompt.tokenizer
    shots = [*tokenizer.encode(" " + demonstrations, add_special_tokens=False)]
    encoded = decoder_prompt.encode_all(examples)
    return [mezo.Encoded((e.input_ids[0], *shots, *e.input_ids[1:]), e.mask_pos + len(shots), e.label) for e in encoded]


def test_a_shared_prefix_runs_once_and_changes_no_loss(runner, decoder_prompt, sentiment, record_property):
    """Demonstrations + query: the prefix runs once per forward, each query on top of its KV; every
    example's loss and a MeZO step's g are the unshared batch's, within fp32 rounding."""
    from pytest_sglang_runner.sglang_compat.graphs import SharedPrefixCall

    demos = "the film was wonderful . It was great . the plot was dull . It was terrible ."
    batch = with_demonstrations(decoder_prompt, sentiment[:12], demos)
    shared_lm, plain_lm = SGLangCausalLM(runner, share_prefix=True), SGLangCausalLM(runner)
    shared = mezo.PromptObjective(shared_lm, decoder_prompt.label_word_ids)
    plain = mezo.PromptObjective(plain_lm, decoder_prompt.label_word_ids)
    prepared = shared.prepare(batch)
    assert isinstance(prepared[0], SharedPrefixCall), type(prepared[0])
    assert len(prepared[0].prefix_call.layout) == 1
    record_property("shared_prefix_tokens", prepared[0].prefix_call.layout[0])
    shared_losses = shared.example_losses(prepared).tolist()
    shared.release(prepared)
    prepared = plain.prepare(batch)
    plain_losses = plain.example_losses(prepared).tolist()
    plain.release(prepared)
    assert shared_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)

    start = mezo.canonical_state(shared_lm.views)
    try:
        grads = []
        for objective in (shared, plain):
            opt = mezo.MeZO(shared_lm.views, objective, lr=1e-3, eps=1e-2, seed=4)
            opt.step(batch)
            grads.append(opt.projected_grad)
            mezo.load_canonical(shared_lm.views, start)
        assert grads[0] == pytest.approx(grads[1], rel=1e-4, abs=1e-5)
    finally:
        shared_lm.close()
        plain_lm.close()
        mezo.load_canonical(shared_lm.views, start)


def test_candidate_form_is_the_label_word_loss_for_one_token_and_matches_hf(
    decoder_lm, fresh_hf_decoder, decoder_prompt, sentiment
):
    """Labels of several tokens: the sum of each candidate's token logprobs, on the runner as on HF;
    one-token candidates give the label-word loss exactly (the log-normaliser cancels)."""
    from pytest_sglang_runner.mezo.causal_lm import CandidateObjective

    examples = decoder_prompt.encode_all(sentiment[:8])
    words = decoder_prompt.label_word_ids
    single = CandidateObjective(decoder_lm, [[w] for w in words])
    plain = mezo.PromptObjective(decoder_lm, words)

    def loss(objective):
        prepared = objective.prepare(examples)
        try:
            return objective.loss(prepared)[0]
        finally:
            objective.release(prepared)

    assert loss(single) == pytest.approx(loss(plain), rel=1e-6)
    tokenizer = decoder_prompt.tokenizer
    candidates = [tokenizer.encode(text, add_special_tokens=False) for text in (" dull and boring", " really great")]
    assert min(map(len, candidates)) > 1
    ours = CandidateObjective(decoder_lm, candidates)
    theirs = CandidateObjective(HFCausalLM(fresh_hf_decoder()), candidates)
    a, b = ours.prepare(examples), theirs.prepare(examples)
    assert torch.allclose(ours.scores(a), theirs.scores(b), atol=1e-4)
    ours.release(a)
