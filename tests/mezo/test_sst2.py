"""The SST-2 prompt task: template, loaders, the k-shot layout and the paper protocol, on local files."""

from __future__ import annotations

import pytest

from pytest_sglang_runner import mezo, sst2
from pytest_sglang_runner.mezo import protocol


def test_template_layout(prompt, tokenizer):
    """<s> {sentence} It was <mask> . </s>, label words one token each."""
    encoded = prompt.encode(sst2.Example("a great film", 1))
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    expected = [
        tokenizer.bos_token_id,
        *enc("a great film"),
        *enc(" It was"),
        tokenizer.mask_token_id,
        *enc("."),
        tokenizer.eos_token_id,
    ]
    assert list(encoded.input_ids) == expected
    assert encoded.input_ids[encoded.mask_pos] == tokenizer.mask_token_id
    assert prompt.label_word_ids == [enc(" terrible")[0], enc(" great")[0]]


def test_long_sentences_keep_the_template(tokenizer):
    prompt = sst2.SST2Prompt(tokenizer, max_length=16)
    encoded = prompt.encode(sst2.Example(" ".join(["good"] * 40), 1))
    assert len(encoded.input_ids) == 16 and encoded.input_ids[encoded.mask_pos] == tokenizer.mask_token_id
    assert encoded.input_ids[-1] == tokenizer.eos_token_id


def test_glue_tsv_round_trip(synthetic_glue):
    data = sst2.load_glue_sst2(synthetic_glue)
    assert len(data["train"]) == 512 and len(data["dev"]) == 200
    assert (synthetic_glue / "train.tsv").read_text().splitlines()[0] == "sentence\tlabel"
    assert {e.label for e in data["dev"]} == {0, 1}


def test_kshot_layout(tmp_path):
    """MeZO's data/k-shot/SST-2/{k}-{seed}/ with train/dev k per class and the shared test split."""
    root = sst2.write_synthetic_kshot(tmp_path, ks=(16,), seeds=sst2.KSHOT_SEEDS)
    for seed in sst2.KSHOT_SEEDS:
        for given in (root, root / "k-shot", root / "k-shot" / "SST-2"):
            data = sst2.load_kshot(given, 16, seed)
            assert [sum(e.label == c for e in data["train"]) for c in (0, 1)] == [16, 16]
            assert len(data["dev"]) == 32 and len(data["test"]) == 128


def test_missing_data_names_the_option(tmp_path):
    with pytest.raises(sst2.SST2Missing, match="--sst2-dir"):
        sst2.load_kshot(None, 16, 13)
    with pytest.raises(sst2.SST2Missing, match="--sst2-dir"):
        sst2.load_kshot(tmp_path / "nowhere", 16, 13)
    with pytest.raises(sst2.SST2Missing, match="--sst2-dir"):
        sst2.load_kshot(tmp_path, 512, 13)
    with pytest.raises(sst2.SST2Missing, match="--sst2-dir"):
        sst2.load_glue_sst2(tmp_path)


def test_paper_protocol_runs_on_synthetic_kshot(fresh_hf, prompt, tmp_path):
    """run_kshot (zero-shot, MeZO, test accuracy at best dev) end to end, with a few steps."""
    root = sst2.write_synthetic_kshot(tmp_path, ks=(16,), seeds=(13,))
    lm = mezo.HFMaskedLM(fresh_hf())
    initial = mezo.canonical_state(lm.views)

    def make():
        mezo.load_canonical(lm.views, initial)
        return mezo.MeZO(lm.views, mezo.PromptObjective(lm, prompt.label_word_ids), lr=1e-3, eps=1e-3)

    result = protocol.run_kshot(make, prompt, root, 16, 13, steps=20, eval_every=10, batch_size=64, progress=True)
    assert 0.0 <= result["zero_shot_test"] <= 1.0 and result["best_step"] in (0, 10, 20)
    assert len(result["checkpoint"].steps) == 20 and result["history"].eval_step == [10, 20]
    png = result["history"].save_plot(tmp_path / "kshot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mezo.max_abs_difference(mezo.canonical_state(lm.views), initial) > 0
