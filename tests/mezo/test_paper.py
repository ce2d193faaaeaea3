"""The paper's setting (MeZO Table 18): RoBERTa-large on SST-2 k=16, five seeds, 100k steps each.

Runs only with ``-m mezo_full --sglang-model roberta-large --sst2-dir DIR``; the model must be a
local directory or already in the HF cache (nothing is downloaded). Everything it uses short of
those files is exercised on CPU by the other tests (template, k-shot loader, run_kshot, MeZO).
"""

from __future__ import annotations

import os
import statistics

import pytest

from pytest_sglang_runner import mezo, sst2
from pytest_sglang_runner.mezo import protocol

pytestmark = pytest.mark.mezo_full


def _local_model(name: str) -> str | None:
    if not name:
        return None
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:
        return None
    return os.path.dirname(cached) if isinstance(cached, str) else None


@pytest.fixture
def paper_inputs(request, sst2_dir):
    model = request.config.getoption("sglang_model", default=None) or ""
    local = _local_model(model)
    if "roberta-large" not in model or local is None:
        pytest.skip(
            f"needs --sglang-model roberta-large as a local directory or in the HF cache (got {model or 'the embedded model'})"
        )
    if sst2_dir is None:
        pytest.skip("needs --sst2-dir DIR with MeZO's k-shot SST-2 data (data/k-shot/SST-2/16-{13,21,42,87,100})")
    try:
        for seed in sst2.KSHOT_SEEDS:
            sst2.kshot_dir(sst2_dir, 16, seed)
    except sst2.SST2Missing as exc:
        pytest.skip(str(exc))
    return local, sst2_dir


@pytest.mark.sglang(dtype="float32")
def test_mezo_k16_matches_table_18(paper_inputs, runner, record_property):
    """Zero-shot ~79.0; MeZO k=16 90.5 +- 1.2 (mean over seeds 13, 21, 42, 87, 100)."""
    from transformers import AutoTokenizer

    model_dir, data = paper_inputs
    prompt = sst2.SST2Prompt(AutoTokenizer.from_pretrained(model_dir), max_length=512)
    lm = mezo.SGLangMaskedLM(runner)
    initial = mezo.canonical_state(lm.views)
    hp = sst2.PAPER_HPARAMS

    def make():
        mezo.load_canonical(lm.views, initial)
        return mezo.MeZO(
            lm.views,
            mezo.PromptObjective(lm, prompt.label_word_ids),
            lr=hp["lr"],
            eps=hp["eps"],
            weight_decay=hp["weight_decay"],
            on_weights_changed=lm.weights_changed,
        )

    try:
        results = [
            protocol.run_kshot(
                make,
                prompt,
                data,
                16,
                seed,
                steps=hp["steps"],
                eval_every=hp["eval_every"],
                batch_size=hp["batch_size"],
                progress=True,
            )
            for seed in sst2.KSHOT_SEEDS
        ]
    finally:
        lm.close()
        mezo.load_canonical(lm.views, initial)
    zero_shot = 100 * results[0]["zero_shot_test"]
    accs = [100 * r["test"] for r in results]
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    record_property("zero_shot", zero_shot)
    record_property("mezo_k16", f"{mean:.1f} +- {std:.1f}")
    paper_zero, _ = sst2.PAPER_TABLE18["zero_shot"]
    paper_mean, paper_std = sst2.PAPER_TABLE18["mezo_k16"]
    assert abs(zero_shot - paper_zero) <= 2.0, zero_shot
    assert abs(mean - paper_mean) <= 2 * paper_std + 1.0, (accs, mean, std)
