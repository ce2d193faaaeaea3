"""z is one function of (seed, parameter, element): Philox as published, the same however it is cut up,
and the Triton kernel computes what the torch twin computes (run by Triton's interpreter on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from pytest_sglang_runner import mezo, sst2
from pytest_sglang_runner.mezo import noise

# Random123's known-answer vectors for Philox4x32-10: (counter, key) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_matches_random123(counter, key, expected):
    out = noise.philox4x32([torch.tensor([c]) for c in counter], key[0] | key[1] << 32)
    assert tuple(int(x) for x in out) == expected


def test_z_does_not_depend_on_how_it_is_cut():
    """Any slice of a parameter's z, any chunking of the flat pass: the same values."""
    whole = noise.standard_normal(seed=99, param_index=3, numel=10_000)
    assert torch.equal(whole[4000:7000], noise.standard_normal(99, 3, 3000, start=4000))
    assert not torch.equal(whole, noise.standard_normal(99, 4, 10_000))  # another parameter, another stream
    assert not torch.equal(whole, noise.standard_normal(98, 3, 10_000))  # another step, another stream
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1) < 0.05

    targets = [torch.zeros(37), torch.zeros(5, 9), torch.zeros(3000)]
    segments, total = noise.layout([t.numel() for t in targets], [True, False, True])
    flat = torch.zeros(total)
    big, small = noise.TorchPasses(flat, segments, targets), noise.TorchPasses(flat, segments, targets, chunk=7)
    assert torch.equal(big.z(5), small.z(5))
    big.perturb(5, 1.0)  # masters are 0: the model now holds z
    for index, (segment, target) in enumerate(zip(segments, targets)):
        assert torch.equal(target.view(-1), noise.standard_normal(5, index, segment.numel))


def test_step_is_zo_step_then_zo_update_bitwise(fresh_hf, prompt, synthetic_glue):
    """`MeZO.step` skips the restore pass; the weights it leaves are the four-pass ones, bit for bit."""
    train = prompt.encode_all(sst2.read_tsv(synthetic_glue / "train.tsv"))[:16]

    def three_steps(fused: bool):
        lm = mezo.HFMaskedLM(fresh_hf())
        opt = mezo.MeZO(
            lm.views, mezo.PromptObjective(lm, prompt.label_word_ids), lr=1e-2, eps=1e-3, weight_decay=0.1, seed=4
        )
        for _ in range(3):
            opt.step(train) if fused else (opt.zo_step(train), opt.zo_update())
        return mezo.canonical_state(lm.views), opt.checkpoint.steps

    (fused, fused_steps), (plain, plain_steps) = three_steps(True), three_steps(False)
    assert fused_steps == plain_steps and all(g != 0 for _, g in fused_steps)
    assert all(torch.equal(a, b) for a, b in zip(fused, plain))


INTERPRETED = textwrap.dedent(
    """
    import json, torch
    from pytest_sglang_runner.mezo import noise
    shapes, decays = [(37,), (5, 9), (4096,), (3000,)], [True, False, True, False]
    segments, total = noise.layout([torch.Size(s).numel() for s in shapes], decays)
    flat = torch.randn(total, generator=torch.Generator().manual_seed(1))
    result = {}
    for name, cls in (("triton", noise.TritonPasses), ("torch", noise.TorchPasses)):
        targets = [torch.zeros(s) for s in shapes]
        passes = cls(flat.clone(), segments, targets)
        passes.perturb(2**40 + 77, 1.0)
        perturbed = torch.cat([t.view(-1) for t in targets])
        passes.update(99, 0.1, 2.5, weight_decay=0.3)
        result[name] = dict(perturbed=perturbed.tolist(), flat=[float(passes.flat[s.offset:s.offset + s.numel].sum()) for s in segments],
                            model=torch.cat([t.view(-1) for t in targets]).tolist())
    # The folded pass against the two passes it replaces, both by the kernel.
    folded = noise.TritonPasses(flat.clone(), segments, [torch.zeros(s) for s in shapes])
    folded.update_and_perturb(99, 0.1, 2.5, 0.3, 2**35 + 3, -1.0)
    apart = noise.TritonPasses(flat.clone(), segments, [torch.zeros(s) for s in shapes])
    apart.update(99, 0.1, 2.5, weight_decay=0.3)
    apart.perturb(2**35 + 3, -1.0)
    result["folded_equal"] = torch.equal(folded.flat, apart.flat) and all(
        torch.equal(a, b) for a, b in zip(folded.targets, apart.targets))
    small = noise.TritonPasses(flat.clone(), segments, [torch.zeros(s) for s in shapes], block=128)
    small.perturb(2**40 + 77, 1.0)
    result["triton_block_128"] = torch.cat([t.view(-1) for t in small.targets]).tolist()
    print(json.dumps(result))
    """
)


def test_triton_kernel_computes_the_torch_definition(tmp_path):
    """The fused kernel, run by Triton's CPU interpreter in a subprocess, against the torch twin."""
    pytest.importorskip("triton")
    script = tmp_path / "interpreted.py"
    script.write_text(INTERPRETED)
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    triton_z, torch_z = torch.tensor(result["triton"]["perturbed"]), torch.tensor(result["torch"]["perturbed"])
    # Same integers, same Box-Muller; only numpy's and torch's log/sin/cos roundings differ.
    assert float((triton_z - torch_z).abs().max()) < 1e-5
    assert torch.equal(torch.tensor(result["triton_block_128"]), triton_z)  # launch shape does not matter
    assert result["triton"]["flat"] == pytest.approx(result["torch"]["flat"], rel=1e-5, abs=1e-4)
    assert float((torch.tensor(result["triton"]["model"]) - torch.tensor(result["torch"]["model"])).abs().max()) < 1e-5
    assert result["folded_equal"]  # update + next perturbation in one pass: bitwise the two passes


def test_deferred_updates_are_the_same_steps_bitwise(fresh_hf, prompt, synthetic_glue):
    """Each update folded into the next step's first pass: the same losses, steps and weights, bit for bit."""
    batches = [e for e in prompt.encode_all(sst2.read_tsv(synthetic_glue / "train.tsv"))[:48]]

    def three_steps(defer: bool):
        lm = mezo.HFMaskedLM(fresh_hf())
        opt = mezo.MeZO(
            lm.views, mezo.PromptObjective(lm, prompt.label_word_ids), lr=1e-2, eps=1e-3, weight_decay=0.1, seed=4
        )
        losses = [opt.step(batches[i * 16 : (i + 1) * 16], defer_update=defer) for i in range(3)]
        if defer:
            assert opt.offset == -1.0 and not torch.equal(
                lm.views[0].tensor, opt.masters[0].view_as(lm.views[0].tensor)
            )
            opt.flush_update()
        return losses, mezo.canonical_state(lm.views), [m.clone() for m in opt.masters], opt.checkpoint.steps

    deferred, plain = three_steps(True), three_steps(False)
    assert deferred[0] == plain[0] and deferred[3] == plain[3]
    assert all(torch.equal(a, b) for a, b in zip(deferred[1], plain[1]))
    assert all(torch.equal(a, b) for a, b in zip(deferred[2], plain[2]))
