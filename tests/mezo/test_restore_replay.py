"""Exactness: a step leaves the weights where they were; a checkpoint replays to the same bits."""

from __future__ import annotations

import pytest
import torch

from pytest_sglang_runner import mezo, sst2


def _objective(lm, prompt):
    return mezo.PromptObjective(lm, prompt.label_word_ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_perturb_and_restore_is_exact_on_hf(fresh_hf, prompt, dtype):
    """+eps, -2eps, +eps gives back the starting weights bitwise, bf16 included (fp32 masters)."""
    lm = mezo.HFMaskedLM(fresh_hf(dtype=dtype))
    start = [v.tensor.clone() for v in lm.views]
    opt = mezo.MeZO(lm.views, _objective(lm, prompt), lr=1e-6, eps=1e-3)
    opt.zo_random_seed = 7
    opt.zo_perturb_parameters(1)
    assert any(not torch.equal(v.tensor, s) for v, s in zip(lm.views, start))
    opt.zo_perturb_parameters(-2)
    opt.zo_perturb_parameters(1)
    for view, before in zip(lm.views, start):
        assert torch.equal(view.tensor, before), view.name


def test_step_restores_runner_weights_exactly(runner_lm, prompt, synthetic_glue):
    """A whole zo_step (two forwards in between) leaves the runner's tensors bitwise unchanged."""
    train = prompt.encode_all(sst2.read_tsv(synthetic_glue / "train.tsv"))[:16]
    start = mezo.canonical_state(runner_lm.views)
    opt = mezo.MeZO(runner_lm.views, _objective(runner_lm, prompt), lr=1e-3, eps=1e-3)
    loss = opt.zo_step(train)
    assert opt.projected_grad != 0.0 and loss > 0
    assert mezo.max_abs_difference(mezo.canonical_state(runner_lm.views), start) == 0.0


def test_checkpoint_replay_is_bitwise(runner_lm, prompt, synthetic_glue, tmp_path):
    """Initial fingerprint + (seed, g) pairs, replayed on the initial weights, give the trained bits."""
    train = prompt.encode_all(sst2.read_tsv(synthetic_glue / "train.tsv"))
    initial = mezo.canonical_state(runner_lm.views)
    opt = mezo.MeZO(runner_lm.views, _objective(runner_lm, prompt), lr=1e-3, eps=1e-3, weight_decay=0.01, seed=5)
    opt.train(train, 10, batch_size=16)
    trained = mezo.canonical_state(runner_lm.views)
    assert mezo.max_abs_difference(trained, initial) > 0
    opt.checkpoint.save(tmp_path / "run.json")

    mezo.load_canonical(runner_lm.views, initial)
    fresh = mezo.MeZO(runner_lm.views, _objective(runner_lm, prompt), lr=0.0, eps=0.0)
    fresh.replay(mezo.Checkpoint.load(tmp_path / "run.json"))
    replayed = mezo.canonical_state(runner_lm.views)
    assert all(torch.equal(a, b) for a, b in zip(replayed, trained))
    assert fresh.fingerprint() == opt.fingerprint()


def test_replay_refuses_other_initial_weights(fresh_hf, prompt):
    """The fingerprint stops a checkpoint from being replayed onto the wrong starting point."""
    lm = mezo.HFMaskedLM(fresh_hf())
    opt = mezo.MeZO(lm.views, _objective(lm, prompt), lr=1e-3, eps=1e-3)
    opt.zo_update(random_seed=1, projected_grad=1.0)  # weights now differ from the checkpoint's start
    with pytest.raises(ValueError, match="fingerprint"):
        mezo.MeZO(lm.views, _objective(lm, prompt), lr=0, eps=0).replay(opt.checkpoint)
