"""MeZO on the runner learns a synthetic SST-2 task from chance, on CPU, in well under two minutes.

Full-parameter MeZO-SGD, on the SGLang runner, on a RoBERTa masked LM this test writes itself.

Why not the kit's embedded model: zeroth-order SGD needs roughly (effective number of trained
parameters) times more steps than first-order SGD, and the embedded model (hidden 64, 2 layers,
small 0.05 init, noisy layer norms) is slow even for first-order SGD from random weights, so
MeZO on it stalls near chance (all parameters) or just under 0.8 (word embeddings only) in the
time a CPU test can spend. The model here is the same kind of checkpoint (same tokenizer,
``RobertaForMaskedLM``, written by ``save_pretrained``) with one layer, hidden 32, 2 heads, unit
layer norms, zero biases and N(0, 0.18^2) ~ 1/sqrt(hidden) weights; sentences are 2-3
sentiment words, so the prompt is ~10 tokens. The accuracies, steps and seconds of a run are
recorded as junit properties (docs/mezo.md quotes them from a committed run).
"""

from __future__ import annotations

import time
from pathlib import Path

from pytest_sglang_runner import mezo, sst2

SMALL_CONFIG = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=34
)
INIT_STD, MODEL_SEED = 0.18, 0
HPARAMS = dict(lr=1e-3, eps=1e-3, weight_decay=0.0, seed=0)
# A step cap, not a time budget: one torch thread and fixed seeds make the run the same on a
# loaded machine, only slower.
BATCH, MAX_STEPS, EVAL_EVERY = 32, 4000, 250
SHAPE = dict(sentiment_words=(2, 3), filler_words=(0, 0))


def write_small_mlm(directory: Path, seed: int = MODEL_SEED) -> Path:
    """A 1-layer, hidden-32 RoBERTa MLM on the embedded tokenizer: unit layer norms, zero biases."""
    from pytest_sglang_runner.models.embedded import EMBEDDED_CONFIG, write_random_roberta

    return write_random_roberta(
        directory,
        shape=dict(EMBEDDED_CONFIG, **SMALL_CONFIG),
        dtype="float32",
        seed=seed,
        std=INIT_STD,
        layer_norm_noise=0.0,
        zero_biases=True,
    )


def test_mezo_learns_synthetic_sst2_on_the_runner(runner_factory, tmp_path, record_property):
    from transformers import AutoTokenizer

    path = write_small_mlm(tmp_path / "small-roberta-mlm")
    live = runner_factory.get(model=str(path), dtype="float32")
    live.forward.release()
    lm = mezo.SGLangMaskedLM(live.model_runner)
    prompt = sst2.SST2Prompt(AutoTokenizer.from_pretrained(str(path)))

    pos, neg, neu = sst2.embedded_word_lists()
    train_rows = sst2.synthetic_examples(512, pos, neg, neu, seed=1, **SHAPE)
    seen = {e.sentence for e in train_rows}
    dev_rows = [e for e in sst2.synthetic_examples(240, pos, neg, neu, seed=2, **SHAPE) if e.sentence not in seen]
    train = prompt.encode_all(sst2.read_tsv(sst2.write_tsv(tmp_path / "train.tsv", train_rows)))
    dev = prompt.encode_all(sst2.read_tsv(sst2.write_tsv(tmp_path / "dev.tsv", dev_rows)))
    assert len(dev) >= 200 and not {e.input_ids for e in dev} & {e.input_ids for e in train}  # held out

    opt = mezo.MeZO(
        lm.views, mezo.PromptObjective(lm, prompt.label_word_ids), on_weights_changed=lm.weights_changed, **HPARAMS
    )
    assert len(opt.views) == len(lm.views)  # every parameter is trained
    _, chance = opt.evaluate(dev)
    assert 0.35 <= chance <= 0.65, chance

    started = time.monotonic()
    opt.train(
        train,
        MAX_STEPS,
        batch_size=BATCH,
        eval_examples=dev,
        eval_every=EVAL_EVERY,
        until=lambda o: o.history.eval_accuracy[-1] >= 0.8,
    )
    seconds = time.monotonic() - started
    lm.close()
    opt.history.save_plot(tmp_path / "learning.png", title="MeZO (all parameters) on the runner, synthetic SST-2")
    final = opt.history.eval_accuracy[-1]
    for name, value in dict(
        initial_accuracy=chance, final_accuracy=final, steps=opt.global_step, train_s=seconds
    ).items():
        record_property(name, round(value, 3))
    assert final >= 0.8, f"held-out accuracy {opt.history.eval_accuracy} after {opt.global_step} steps, {seconds:.1f} s"
