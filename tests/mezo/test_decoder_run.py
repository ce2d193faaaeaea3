"""The decoder real run's path: Rotten Tomatoes few-shot splits and MeZO's k-shot protocol on the
runner. On CPU (CI) the embedded decoder on a synthetic corpus of the same file format, a few
steps; the real corpus and SmolLM2 where their optional packages are installed."""

from __future__ import annotations

import bz2

import pytest

from pytest_sglang_runner import mezo
from pytest_sglang_runner.mezo import protocol, sst2
from pytest_sglang_runner.mezo import rotten_tomatoes as rt
from pytest_sglang_runner.mezo.causal_lm import DecoderPrompt, SGLangCausalLM


def test_kshot_splits_follow_the_protocol(tmp_path):
    compressed = rt.write_synthetic_corpus(tmp_path / "corpus.csv.bz2", n=300)
    corpus = rt.read_corpus(compressed)
    assert len(corpus) == 300 and {e.label for e in corpus} == {0, 1}  # the plot rows are dropped
    plain = tmp_path / "corpus.csv"
    plain.write_bytes(bz2.decompress(compressed.read_bytes()))
    assert rt.read_corpus(plain) == corpus  # a corpus of the same format, not compressed
    rt.write_kshot(corpus, tmp_path / "kshot", k=8, seeds=(13, 21), test_size=100)
    splits = {seed: sst2.load_kshot(tmp_path / "kshot", 8, seed) for seed in (13, 21)}
    for data in splits.values():
        assert [sum(e.label for e in data[s]) for s in ("train", "dev")] == [8, 8]
        assert len(data["train"]) == len(data["dev"]) == 16 and len(data["test"]) == 100
        held_out = {e.sentence for e in data["test"]}
        assert not held_out & {e.sentence for e in data["train"] + data["dev"]}
    assert splits[13]["test"] == splits[21]["test"] and splits[13]["train"] != splits[21]["train"]


def test_the_real_corpus_reads_where_it_is_installed():
    try:
        path = rt.corpus_path()
    except sst2.SST2Missing as exc:
        pytest.skip(str(exc))
    corpus = rt.read_corpus(path)
    assert (len(corpus), sum(e.label for e in corpus)) == (12808, 7403)


@pytest.mark.sglang(model="embedded-llama", dtype="float32", attention_backend="torch_native")
def test_kshot_protocol_on_the_embedded_decoder(float32_decoder, runner, tmp_path, record_property):
    """Zero-shot, then MeZO with dev-based selection (`protocol.run_kshot`), on the runner's decoder."""
    from transformers import AutoTokenizer

    corpus = rt.read_corpus(rt.write_synthetic_corpus(tmp_path / "corpus.csv.bz2", n=200))
    rt.write_kshot(corpus, tmp_path / "kshot", k=16, seeds=(13,), test_size=64)
    prompt = DecoderPrompt(AutoTokenizer.from_pretrained(runner.model_config.model_path))
    lm = SGLangCausalLM(runner)
    start = mezo.canonical_state(lm.views)
    objective = mezo.PromptObjective(lm, prompt.label_word_ids)
    try:
        result = protocol.run_kshot(
            lambda: mezo.MeZO(lm.views, objective, lr=1e-3, eps=1e-2, seed=13),
            prompt,
            tmp_path / "kshot",
            16,
            13,
            steps=6,
            eval_every=3,
            batch_size=16,
        )
    finally:
        lm.close()
        mezo.load_canonical(lm.views, start)
    assert len(result["history"].loss) == 6 and result["history"].eval_step == [3, 6]
    assert 0.0 <= result["zero_shot_test"] <= 1.0 and 0.0 <= result["test"] <= 1.0
    record_property("zero_shot_test", result["zero_shot_test"])
    record_property("test_at_best_dev", result["test"])
