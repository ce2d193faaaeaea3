"""MeZO under tensor parallelism: each rank perturbs its part of a parameter with the z TP=1 draws there.

The pure tests cut synthetic parameters the way SGLang's TP layers do (rows of column-parallel
and q/k/v weights, columns of row-parallel weights, the padded vocab-parallel embedding, whole
replicated tensors) and check every rank's z, perturbation, restore and update against the
matching part of the TP=1 result, bitwise. The end-to-end test runs 10 MeZO steps on the
embedded RoBERTa at TP=1 and TP=2 (CPU, gloo) and compares the trajectories.
"""

from __future__ import annotations

import math

import pytest
import torch

from pytest_sglang_runner import mezo
from pytest_sglang_runner.mezo import noise
from pytest_sglang_runner.mezo.noise import Shard

SEED = 2**40 + 77
HIDDEN, FFN, VOCAB, VOCAB_PADDED = 12, 20, 40, 64  # odd splits: shards start off 4-element boundaries


# ---------------------------------------------------------------------------------------------
# z of a shard


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize(
    "shape, dim",
    [((VOCAB, HIDDEN), 0), ((FFN,), 0), ((HIDDEN, FFN), 1), ((37, 13), 0), ((4, 6, 8), 1), ((200, 16), 0)],
    ids=["rows", "bias", "columns", "rows-unaligned", "3d", "rows-long"],
)
def test_shard_z_is_the_part_of_the_full_z(shape, dim, world):
    """For every rank, any chunking: the shard's z is the full parameter's z at the shard's elements."""
    full = noise.standard_normal(SEED, 5, torch.Size(shape).numel()).view(shape)
    size = -(-shape[dim] // world)  # the last rank may hold fewer (as the vocab's last rank does)
    for rank in range(world):
        start = min(rank * size, shape[dim])
        shard = Shard(shape, dim, start, min(size, shape[dim] - start))
        for chunk in (1 << 18, 5, 1):  # one piece; pieces cutting runs; one counter a piece
            z = noise.shard_normal(SEED, 5, shard, chunk=chunk)
            assert z.shape == shard.local_shape
            assert torch.equal(z, shard.of(full)), (rank, chunk)


def test_padded_vocab_shards():
    """The word embedding's rows as SGLang splits its padded vocab: the real rows' z, nothing for padding."""
    full = noise.standard_normal(SEED, 0, VOCAB * HIDDEN).view(VOCAB, HIDDEN)
    for world in (2, 4):
        parts = [_vocab_shard(rank, world) for rank in range(world)]
        assert sum(p.length for p in parts) == VOCAB
        z = torch.cat([noise.shard_normal(SEED, 0, p) for p in parts])
        assert torch.equal(z, full)
    assert _vocab_shard(3, 4).length == 0  # rows [48, 64): padding only
    assert noise.shard_normal(SEED, 0, _vocab_shard(3, 4)).shape == (0, HIDDEN)


# ---------------------------------------------------------------------------------------------
# The passes through Masters, on a synthetic layout cut like SGLang's RoBERTa

# (HF name, full shape, how TP cuts it): "vocab", "q"/"k"/"v" (rows of a fused qkv), "rows",
# "columns", or None (whole on every rank).
LAYOUT = [
    ("embeddings.word_embeddings.weight", (VOCAB, HIDDEN), "vocab"),
    ("embeddings.LayerNorm.weight", (HIDDEN,), None),
    ("attention.self.query.weight", (HIDDEN, HIDDEN), "q"),
    ("attention.self.query.bias", (HIDDEN,), "q"),
    ("attention.self.key.weight", (HIDDEN, HIDDEN), "k"),
    ("attention.self.value.weight", (HIDDEN, HIDDEN), "v"),
    ("attention.output.dense.weight", (HIDDEN, HIDDEN), "columns"),
    ("attention.output.dense.bias", (HIDDEN,), None),
    ("intermediate.dense.weight", (FFN, HIDDEN), "rows"),
    ("intermediate.dense.bias", (FFN,), "rows"),
    ("output.dense.weight", (HIDDEN, FFN), "columns"),
    ("lm_head.bias", (VOCAB,), None),
]


def _vocab_shard(rank: int, world: int) -> Shard:
    per_rank = VOCAB_PADDED // world
    start, stop = min(rank * per_rank, VOCAB), min((rank + 1) * per_rank, VOCAB)
    return Shard((VOCAB, HIDDEN), 0, start, stop - start)


def _full_weights() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for _, shape, _ in LAYOUT]


def _rank_views(full: list[torch.Tensor], rank: int, world: int) -> tuple[list[mezo.ParamView], list[torch.Tensor]]:
    """Rank ``rank``'s views, as `roberta_sglang_views` makes them, and the storage they view
    (a padded vocab shard; one fused q/k/v tensor)."""
    fused = {}  # the rank's [q_r; k_r; v_r]
    views, storage = [], []
    for (name, shape, cut), weights in zip(LAYOUT, full):
        if cut == "vocab":
            shard = _vocab_shard(rank, world)
            padded = torch.full((VOCAB_PADDED // world, HIDDEN), -1.0)  # padding rows: never written
            padded[: shard.length] = shard.of(weights)
            views.append(mezo.ParamView(name, padded[: shard.length], shard))
            storage.append(padded)
        elif cut in ("q", "k", "v"):
            size = shape[0] // world
            shard = Shard(shape, 0, rank * size, size)
            key = name.rsplit(".", 1)[-1]
            qkv = fused.setdefault(key, torch.empty((3 * size, *shape[1:])))
            which = "qkv".index(cut)
            local = qkv[which * size : (which + 1) * size]
            local.copy_(shard.of(weights))
            views.append(mezo.ParamView(name, local, shard))
            storage.append(qkv)
        elif cut in ("rows", "columns"):
            dim = 0 if cut == "rows" else 1
            size = shape[dim] // world
            shard = Shard(shape, dim, rank * size, size)
            local = shard.of(weights).clone()
            views.append(mezo.ParamView(name, local, shard))
            storage.append(local)
        else:
            local = weights.clone()
            views.append(mezo.ParamView(name, local))
            storage.append(local)
    return views, storage


def _passes(views):
    """The model's tensors after perturb +1, -2 (eps 1e-3), then after the restore, then after two updates."""
    masters = mezo.Masters(views, kernel="auto")
    states = []
    masters.passes.perturb(SEED, 1e-3)
    states.append([v.tensor.clone() for v in views])
    masters.passes.perturb(SEED, -1e-3)
    states.append([v.tensor.clone() for v in views])
    masters.passes.restore()
    states.append([v.tensor.clone() for v in views])
    masters.passes.update(SEED, lr=1e-2, grad=2.5, weight_decay=0.1)
    masters.passes.update(SEED + 1, lr=1e-2, grad=-0.75, weight_decay=0.1)
    states.append([v.tensor.clone() for v in views])
    states.append([m.clone() for m in masters.tensors])
    return masters, states


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_passes_give_the_parts_of_the_tp1_results(world):
    """perturb, restore and update with sharded views: each rank's tensors are its part of TP=1's, bitwise."""
    full = _full_weights()
    tp1_views = [mezo.ParamView(name, weights.clone()) for (name, _, _), weights in zip(LAYOUT, full)]
    tp1_masters, tp1 = _passes(tp1_views)
    assert type(tp1_masters.passes) is noise.TorchPasses  # TP=1 keeps its passes
    for rank in range(world):
        views, storage = _rank_views(full, rank, world)
        masters, ours = _passes(views)
        assert type(masters.passes) is noise.ShardedTorchPasses and masters.passes.name == "torch"
        for state, (theirs, mine) in enumerate(zip(tp1, ours)):
            for view, whole, part in zip(views, theirs, mine):
                expected = whole if view.shard is None else view.shard.of(whole)
                assert torch.equal(part, expected), (rank, state, view.name)
        vocab = storage[0]
        assert bool((vocab[views[0].shard.length :] == -1.0).all())  # the padding rows were never written
        assert not torch.equal(ours[0][2], ours[0][0])  # the perturbation moved them; the restore put them back
        assert torch.equal(ours[2][2], views[2].shard.of(full[2]))


def test_triton_refuses_sharded_views():
    views, _ = _rank_views(_full_weights(), 0, 2)
    with pytest.raises(ValueError, match="whole parameters only"):
        mezo.Masters(views, kernel="triton")


# ---------------------------------------------------------------------------------------------
# End to end: 10 MeZO steps on the runner, TP=2 against TP=1

STEPS, MEZO_SEED, LR = 10, 0, 1e-3
TP_SPEC = dict(dtype="float32", attention_backend="torch_native")  # test_equivalence's runner: reused for TP=1
Z_MAX = math.sqrt(-2 * math.log(2.0**-24))  # the largest |z| Box-Muller makes from noise's 24-bit uniforms
# (eps, tolerance on |g2 - g1| / max(|g|, RMS g)). g = (loss+ - loss-) / (2 eps) resolves nothing
# finer than an fp32 ulp of the loss over 2 eps: 3e-5 at the paper's eps 1e-3 (loss ~0.7), more
# than 1e-5 of any |g| < 3. TP=2 sums the row-parallel products in another order, so its losses
# differ from TP=1's by an ulp or two: g to 1e-5 needs eps 1e-2 (a quantum of 3e-6); at 1e-3, g
# agrees to a few quanta.
EPS_TOLERANCES = ((1e-2, 1e-5), (1e-3, 1e-4))
LOSS_ULPS = 4  # how far apart TP=1 and TP=2 may put one forward's fp32 loss


def _fp32_ulp(x: float) -> float:
    """The spacing of float32 numbers at ``x``."""
    return 2.0 ** (math.frexp(x)[1] - 24)


def mezo_trajectory(ctx, steps: int, seed: int, eps: float, decoder: bool = False) -> dict:
    """Runs in every rank process at once (`LiveRunner.on_every_rank`): ``steps`` MeZO steps on this
    rank's runner (the masked LM, or with ``decoder`` the causal LM scored at the last position);
    gives back the projected gradients, the losses and this rank's final masters. Everything comes
    from ``ctx``; the runner's weights are put back afterwards."""
    from transformers import AutoTokenizer

    from pytest_sglang_runner.mezo import causal_lm, sst2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model, two ranks on two cores (see conftest's _one_thread)
    lm = causal_lm.SGLangCausalLM(ctx.runner) if decoder else mezo.SGLangMaskedLM(ctx.runner)
    start = mezo.canonical_state(lm.views)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ctx.forward.model_path)
        prompt = causal_lm.DecoderPrompt(tokenizer) if decoder else sst2.SST2Prompt(tokenizer)
        train = prompt.encode_all(sst2.synthetic_examples(64, *sst2.embedded_word_lists(), seed=1))
        objective = mezo.PromptObjective(lm, prompt.label_word_ids)
        opt = mezo.MeZO(
            lm.views, objective, lr=LR, eps=eps, weight_decay=0.1, seed=seed, on_weights_changed=lm.weights_changed
        )
        opt.train(train, steps, batch_size=16)
        return dict(
            rank=ctx.rank,
            kernel=opt.kernel,
            grads=list(opt.history.projected_grad),
            losses=list(opt.history.loss),
            seeds=[s for s, _ in opt.checkpoint.steps],
            names=[v.name for v in lm.views],
            shards=[v.shard for v in lm.views],
            masters=[m.clone() for m in opt.masters],
        )
    finally:
        lm.close()
        mezo.load_canonical(lm.views, start)
        torch.set_num_threads(threads)


def assert_tp2_follows_tp1(one: dict, tp2: list[dict], eps: float, tolerance: float, record_property) -> dict:
    """TP=2's trajectory against TP=1's (the bounds of `test_mezo_tp2_follows_tp1`'s docstring);
    gives back the dimension each parameter is split along (None: whole on every rank)."""
    two, *others = tp2
    assert [two["rank"]] + [r["rank"] for r in others] == [0, 1] and two["kernel"] == "torch"
    assert all(s is None for s in one["shards"])
    for other in others:  # every rank computes the same loss from the all-gathered logits
        assert (other["grads"], other["losses"], other["seeds"]) == (two["grads"], two["losses"], two["seeds"])
    assert two["seeds"] == one["seeds"] and two["names"] == one["names"]

    grads = list(zip(two["grads"], one["grads"]))
    rms = math.sqrt(sum(g * g for _, g in grads) / len(grads))
    relative = max(mezo.relative_difference(a, b) for a, b in grads)
    of_scale = max(abs(a - b) / max(abs(a), abs(b), rms) for a, b in grads)
    loss = max(mezo.relative_difference(a, b) for a, b in zip(two["losses"], one["losses"]))
    record_property(f"eps{eps:g}_max_relative_grad_difference", relative)
    record_property(f"eps{eps:g}_g_of_that_step", max(grads, key=lambda p: mezo.relative_difference(*p))[1])
    record_property(f"eps{eps:g}_max_grad_difference_of_max_g_rms", of_scale)
    record_property(f"eps{eps:g}_max_relative_loss_difference", loss)
    assert of_scale <= tolerance, (grads, rms)
    if eps == 1e-2:  # step by step, resolvable at this eps: TP=2 sums each logit in another order,
        # so a loss may differ in its last fp32 bits, and g = (L+ - L-) / 2eps carries that:
        # at most LOSS_ULPS ulps of the loss per forward, over eps. (A bound of 1e-5 relative held
        # for large g only: torch 2.14's CPU sums put one small g 4.8e-5 apart, 0.5 ulp of its loss.)
        ulp = _fp32_ulp(max(abs(x) for x in one["losses"] + two["losses"]))
        per_step = max(abs(a - b) for a, b in grads)
        record_property(f"eps{eps:g}_max_grad_difference_in_loss_ulps_over_eps", per_step * eps / ulp)
        assert per_step <= LOSS_ULPS * ulp / eps, grads
    assert loss <= 1e-5

    # Each update moves a weight by lr * g * z: apart by at most lr * sum |dg| * max |z|, plus
    # an ulp where the roundings of the two updates fall apart.
    atol, rtol = LR * sum(abs(a - b) for a, b in grads) * Z_MAX, len(grads) * 2.0**-23
    weights, dims = 0.0, {}
    for rank in tp2:
        for name, shard, part, whole in zip(rank["names"], rank["shards"], rank["masters"], one["masters"]):
            expected = whole if shard is None else shard.of(whole)
            assert part.shape == expected.shape, name
            torch.testing.assert_close(part, expected, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
            weights = max(weights, float((part - expected).abs().max()) if part.numel() else 0.0)
            dims[name] = None if shard is None else shard.dim
    record_property(f"eps{eps:g}_max_abs_weight_difference", weights)
    return dims


@pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="TP=2 on CUDA needs 2 GPUs")
def test_mezo_tp2_follows_tp1(runner_factory, record_property):
    """10 steps from the same seeds: projected gradients within 1e-5 of their scale, and each step's
    within a few fp32 ulps of the loss over eps (eps 1e-2; a few fp32 quanta at eps 1e-3), losses within 1e-5, the ranks identical to each other, each rank's masters
    the part of TP=1's (to lr * sum |dg| * max |z| and the updates' roundings)."""
    tp1 = {
        eps: runner_factory.get(tp=1, **TP_SPEC).on_every_rank(mezo_trajectory, STEPS, MEZO_SEED, eps)[0]
        for eps, _ in EPS_TOLERANCES
    }
    tp2 = {
        eps: runner_factory.get(tp=2, **TP_SPEC).on_every_rank(mezo_trajectory, STEPS, MEZO_SEED, eps)
        for eps, _ in EPS_TOLERANCES
    }
    for eps, tolerance in EPS_TOLERANCES:
        dims = assert_tp2_follows_tp1(tp1[eps], tp2[eps], eps, tolerance, record_property)
        assert dims["roberta.embeddings.word_embeddings.weight"] == 0
        assert dims["roberta.encoder.layer.0.attention.self.key.weight"] == 0
        assert dims["roberta.encoder.layer.0.intermediate.dense.bias"] == 0
        assert dims["roberta.encoder.layer.0.attention.output.dense.weight"] == 1
        assert dims["roberta.encoder.layer.0.output.dense.weight"] == 1
        assert dims["roberta.encoder.layer.0.attention.output.dense.bias"] is None  # whole on every rank
        assert dims["lm_head.dense.weight"] is None


@pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="TP=2 on CUDA needs 2 GPUs")
def test_decoder_mezo_tp2_follows_tp1(runner_factory, record_property):
    """The decoder (embedded-llama: grouped-query attention, untied LM head) under the same bounds,
    eps 1e-2, 6 steps: its fused q/k/v and gate/up and its vocabulary-parallel head split as TP=1's."""
    spec, eps, tolerance = dict(TP_SPEC, model="embedded-llama"), *EPS_TOLERANCES[0]
    one = runner_factory.get(tp=1, **spec).on_every_rank(mezo_trajectory, 6, MEZO_SEED, eps, True)[0]
    tp2 = runner_factory.get(tp=2, **spec).on_every_rank(mezo_trajectory, 6, MEZO_SEED, eps, True)
    dims = assert_tp2_follows_tp1(one, tp2, eps, tolerance, record_property)
    layer = "model.layers.0."
    assert [dims[layer + f"self_attn.{p}_proj.weight"] for p in "qkvo"] == [0, 0, 0, 1]
    assert [dims[layer + f"mlp.{p}_proj.weight"] for p in ("gate", "up", "down")] == [0, 0, 1]
    assert dims["model.embed_tokens.weight"] == dims["lm_head.weight"] == 0
    assert dims[layer + "input_layernorm.weight"] is None and dims["model.norm.weight"] is None
