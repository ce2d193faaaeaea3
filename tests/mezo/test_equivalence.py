"""MeZO on the runner and on HF, from the same weights and seeds, is the same optimisation."""

from __future__ import annotations

import pytest

from pytest_sglang_runner import mezo, sst2

# fp32 and torch_native on every device: triton computes in TF32 on the GPU, so the exact
# comparisons with HF below would not hold there.
pytestmark = pytest.mark.sglang(dtype="float32", attention_backend="torch_native")

STEPS = 20


def _optimizer(lm, prompt, **hp):
    return mezo.MeZO(
        lm.views, mezo.PromptObjective(lm, prompt.label_word_ids), on_weights_changed=lm.weights_changed, **hp
    )


def test_projected_gradients_and_losses_match_hf(runner_lm, fresh_hf, prompt, synthetic_glue):
    """20 steps: projected gradients within 1e-4 relative, the loss trajectories alike.

    Relative to max(|g|, the run's RMS g): the two backends' fp32 losses differ by ~1e-7, which at
    eps=1e-3 is ~5e-5 in g, so a step whose g happens to be near 0 cannot be compared on its own.
    """
    train = prompt.encode_all(sst2.read_tsv(synthetic_glue / "train.tsv"))
    hp = dict(lr=1e-3, eps=1e-3, weight_decay=0.0, seed=1234)
    device = runner_lm.views[0].tensor.device  # z comes from this device's generator: HF must share it
    # On CUDA both backends run fp32 matmuls in TF32 (SGLang turns it on), ~1e-3 relative per op.
    g_tol, loss_tol, weight_tol = (1e-4, 1e-5, 1e-5) if device.type == "cpu" else (1e-3, 1e-4, 1e-4)
    on_runner = _optimizer(runner_lm, prompt, **hp)
    on_hf = _optimizer(mezo.HFMaskedLM(fresh_hf(device=device)), prompt, **hp)
    assert on_runner.fingerprint() == on_hf.fingerprint()  # same starting weights, same canonical layout
    on_runner.train(train, STEPS, batch_size=16)
    on_hf.train(train, STEPS, batch_size=16)

    seeds_runner = [s for s, _ in on_runner.checkpoint.steps]
    assert seeds_runner == [s for s, _ in on_hf.checkpoint.steps]
    grads = list(zip(on_runner.history.projected_grad, on_hf.history.projected_grad))
    rms = (sum(g * g for g, _ in grads) / len(grads)) ** 0.5
    for step, (g_runner, g_hf) in enumerate(grads):
        assert abs(g_runner - g_hf) <= g_tol * max(abs(g_runner), abs(g_hf), rms), (step, g_runner, g_hf, rms)
    assert on_runner.history.loss == pytest.approx(on_hf.history.loss, rel=loss_tol)
    # lr * (g difference ~5e-5) * |z| per step, over 20 steps: ~1e-6; the weights stay together.
    assert mezo.max_abs_difference(on_runner.masters, on_hf.masters) < weight_tol
    assert on_runner.masters[0].sub(mezo.canonical_state(runner_lm.views)[0]).abs().max() == 0  # model = masters


def test_weights_changed_hook_runs_on_every_write(runner_lm, prompt, synthetic_glue):
    """Every write tells the runner: `train` writes twice a step (the last update with +eps, then -2eps),
    then the last update alone; `step` writes +eps, -2eps and the update (which is also the restore)."""
    train = prompt.encode_all(sst2.read_tsv(synthetic_glue / "train.tsv"))[:16]
    calls = []

    def hook():
        runner_lm.weights_changed()  # asserts the runner keeps no prefix cache
        calls.append(1)

    opt = mezo.MeZO(
        runner_lm.views,
        mezo.PromptObjective(runner_lm, prompt.label_word_ids),
        lr=1e-3,
        eps=1e-3,
        on_weights_changed=hook,
    )
    opt.train(train, 3, batch_size=16)
    assert len(calls) == 2 * 3 + 1
    opt.step(train)
    assert len(calls) == 2 * 3 + 1 + 3
    assert runner_lm.runner.server_args.disable_radix_cache is True
