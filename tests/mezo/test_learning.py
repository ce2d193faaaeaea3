"""MeZO on the runner learns a synthetic SST-2 task from chance, on CPU, in well under two minutes.

DRAFT (tuning)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from pytest_sglang_runner import mezo, sst2

K = json.loads(os.environ.get("MZ", "{}"))
H = K.get("H", 16)
TRAINABLE = K.get("trainable")
HPARAMS = dict(lr=K.get("lr", 3e-3), eps=K.get("eps", 1e-3), weight_decay=0.0, seed=K.get("seed", 0))
BATCH, MAX_STEPS, EVAL_EVERY, TIME_BUDGET_S = K.get("B", 32), K.get("steps", 8000), K.get("ee", 500), K.get("T", 70.0)
INIT = K.get("init", 0.25)


def write_small_mlm(directory: Path, seed: int = 0) -> Path:
    from transformers import RobertaConfig, RobertaForMaskedLM

    from pytest_sglang_runner.models.embedded import EMBEDDED_CONFIG, build_tokenizer

    tokenizer = build_tokenizer(directory)
    cfg = dict(EMBEDDED_CONFIG)
    cfg.update(hidden_size=H, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * H, max_position_embeddings=34)
    model = RobertaForMaskedLM(RobertaConfig(vocab_size=len(tokenizer), architectures=["RobertaForMaskedLM"], **cfg)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                tensor.fill_(1.0)
            elif name.endswith("bias"):
                tensor.zero_()
            else:
                tensor.copy_(INIT * noise)
    model.tie_weights()
    model.save_pretrained(str(directory), safe_serialization=True)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config.update(position_embedding_type="absolute", architectures=["RobertaForMaskedLM"], torch_dtype="float32")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def test_mezo_learns_synthetic_sst2_on_the_runner(runner_factory, tmp_path):
    from transformers import AutoTokenizer

    path = write_small_mlm(tmp_path / "small-mlm", seed=K.get("mseed", 0))
    live = runner_factory.get(model=str(path), dtype="float32", device="cpu")
    live.forward.release()
    lm = mezo.SGLangMaskedLM(live.model_runner, live.forward)
    prompt = sst2.SST2Prompt(AutoTokenizer.from_pretrained(str(path)))
    pos, neg, neu = sst2.embedded_word_lists()
    shape = dict(sentiment_words=tuple(K.get("sw", (2, 3))), filler_words=tuple(K.get("fw", (0, 0))))
    train = prompt.encode_all(sst2.synthetic_examples(512, pos, neg, neu, seed=1, **shape))
    dev = prompt.encode_all(sst2.synthetic_examples(200, pos, neg, neu, seed=2, **shape))

    views = mezo.select_views(lm.views, TRAINABLE)
    opt = mezo.MeZO(views, mezo.PromptObjective(lm, prompt.label_word_ids), on_weights_changed=lm.weights_changed, **HPARAMS)
    _, chance = opt.evaluate(dev)
    started = time.monotonic()
    opt.train(train, MAX_STEPS, batch_size=BATCH, eval_examples=dev, eval_every=EVAL_EVERY,
              until=lambda o: time.monotonic() - started > TIME_BUDGET_S)
    print("\nchance %.3f steps %d sec %.1f" % (chance, opt.global_step, time.monotonic() - started))
    print(" ".join("%d:%.3f" % (s, a) for s, a in zip(opt.history.eval_step, opt.history.eval_accuracy)))
