"""The SGLang <-> HF parameter mapping that lets one MeZO drive both backends."""

from __future__ import annotations

import pytest
import torch

from pytest_sglang_runner import mezo

# fp32 and torch_native on every device: triton computes in TF32 on the GPU, so the exact
# comparisons with HF below would not hold there.
pytestmark = pytest.mark.sglang(dtype="float32", attention_backend="torch_native")


def test_runner_views_are_hf_parameters_in_hf_order(runner_lm, fresh_hf):
    """Same names, order, shapes and (from the same checkpoint) bitwise the same values as HF."""
    hf_views = mezo.hf_parameter_views(fresh_hf())
    assert [v.name for v in runner_lm.views] == [v.name for v in hf_views]
    for ours, theirs in zip(runner_lm.views, hf_views):
        assert ours.tensor.shape == theirs.tensor.shape, ours.name
        assert torch.equal(ours.tensor.float().cpu(), theirs.tensor.float().cpu()), ours.name


def test_views_write_through_to_the_fused_and_padded_tensors(runner, runner_lm):
    """A view is the model's storage: q/k/v land in qkv_proj rows, the vocab in the unpadded rows."""
    config = runner.model_config.hf_config
    hidden, vocab = config.hidden_size, config.vocab_size
    params = dict(runner.model.named_parameters())
    by_name = {v.name: v.tensor for v in runner_lm.views}
    key = by_name["roberta.encoder.layer.1.attention.self.key.weight"]
    key.fill_(7.0)
    fused = params["roberta.encoder.layer.1.attention.self_attn.qkv_proj.weight"]
    assert bool((fused[hidden : 2 * hidden] == 7.0).all()) and not bool((fused[:hidden] == 7.0).any())
    word = params["roberta.embeddings.word_embeddings.weight"]
    assert word.shape[0] % 64 == 0 and word.shape[0] >= vocab
    assert by_name["roberta.embeddings.word_embeddings.weight"].data_ptr() == word.data_ptr()
    assert by_name["roberta.embeddings.word_embeddings.weight"].shape[0] == vocab


def test_unused_and_tied_parameters_are_left_out(runner_lm):
    """position_ids (uninitialised, never read) and the tied decoder are not perturbed."""
    names = [v.name for v in runner_lm.views]
    assert not any("position_ids" in n for n in names)
    assert not any(n.startswith("lm_head.decoder") for n in names)
    assert len(names) == len(set(names))


def test_mapping_names():
    """The naming rule, written out for one layer."""
    assert mezo.roberta_hf_to_sglang("roberta.encoder.layer.3.attention.self.value.bias", 8, 50) == (
        "roberta.encoder.layer.3.attention.self_attn.qkv_proj.bias",
        slice(16, 24),
    )
    assert mezo.roberta_hf_to_sglang("roberta.embeddings.word_embeddings.weight", 8, 50)[1] == slice(0, 50)
    assert mezo.roberta_hf_to_sglang("lm_head.dense.weight", 8, 50) == ("lm_head.dense.weight", None)


def test_runner_mask_logits_match_hf(runner_lm, fresh_hf, prompt, synthetic_glue):
    """The embedded HF RobertaForMaskedLM checkpoint through the runner gives HF's <mask> logits."""
    from pytest_sglang_runner.mezo import sst2

    examples = prompt.encode_all(sst2.read_tsv(synthetic_glue / "dev.tsv")[:16])
    hf_lm = mezo.HFMaskedLM(fresh_hf())
    ids, pos = [e.input_ids for e in examples], [e.mask_pos for e in examples]
    ours = _mask_logits(runner_lm, ids, pos)
    theirs = _mask_logits(hf_lm, ids, pos)
    assert ours.shape == theirs.shape == (16, runner_lm.views[0].tensor.shape[0])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def _mask_logits(lm, ids, positions):
    prepared = lm.prepare(ids, positions)
    try:
        return lm.mask_logits(prepared).float().cpu()
    finally:
        lm.release(prepared)
