"""Every architecture SGLang and transformers share, as a tiny checkpoint on the runner against HF
(issue #22): each ends as recorded, a pass or a named reason, never as a silent skip.

The outcomes are recorded per device and SGLang version in ``docs/coverage/`` (written by
``python bench/arch_sweep.py --record``) and rendered into docs/coverage.md by
``docs/gen_coverage.py``. Here each architecture must end as recorded: a recorded failure reruns
and must fail the same way (then it is an xfail carrying its reason); a new pass or a new failure
fails the test, saying how to re-record. On CPU: float32, prefill within 1e-4, equal greedy tokens;
on a GPU: bfloat16 under the logprob rules, CUDA graphs on and off.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pytest_sglang_runner import coverage
from pytest_sglang_runner.sglang_compat.process import installed_version

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "docs" / "coverage"
VERSION = installed_version()
# (record key, dtype, runner overrides) per mode this machine runs.
# Both sides compute the LM head in float32 on the GPU, as tests/test_decoder.py explains.
MODES = (
    [
        ("cuda-graphs", "bfloat16", dict(disable_cuda_graph=False, enable_fp32_lm_head=True)),
        ("cuda-eager", "bfloat16", dict(enable_fp32_lm_head=True)),
    ]
    if torch.cuda.is_available()
    else [("cpu", "float32", dict(device="cpu"))]
)
REFERENCE_RECORD = coverage.load_recorded(RECORDED, "cpu", "0.5.23")  # the architecture list, for any version
ARCHITECTURES = sorted((coverage.load_recorded(RECORDED, "cpu", VERSION) or REFERENCE_RECORD)["architectures"])


@pytest.mark.parametrize("mode", [m[0] for m in MODES])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_architecture_ends_as_recorded(architecture, mode, runner_factory, record_property):
    key, dtype, overrides = next(m for m in MODES if m[0] == mode)
    record = coverage.check_architecture(runner_factory, architecture, dtype=dtype, **overrides)
    record_property("coverage", json.dumps(record))
    recorded = coverage.load_recorded(RECORDED, key, VERSION)
    expected = (recorded or {}).get("architectures", {}).get(architecture)
    if expected is None:
        if record["status"] != "pass":
            pytest.xfail(
                f"{record['status']}: {coverage.reason_of(record)} (nothing recorded for {key}, SGLang {VERSION})"
            )
        return
    actual = coverage.signature(record)
    if actual != expected["signature"]:
        pytest.fail(
            f"{architecture} ({key}, SGLang {VERSION}) was recorded as {expected['signature']!r}, now ends as "
            f"{actual!r}{': ' + record.get('reason', '') if record['status'] != 'pass' else ''}. If that is the "
            "change you meant: python bench/arch_sweep.py --record && python docs/gen_coverage.py > docs/coverage.md",
            pytrace=False,
        )
    if record["status"] != "pass":
        pytest.xfail(f"{record['status']}: {expected['reason']}")


def test_the_record_lists_every_shared_architecture():
    """A new SGLang or transformers that shares another architecture needs a new record."""
    from pytest_sglang_runner.models.tiny import shared_architectures

    key = MODES[0][0]  # this machine's first mode: cpu, or cuda-graphs on a GPU
    recorded = coverage.load_recorded(RECORDED, key, VERSION)
    assert recorded is not None, f"no {key} record for SGLang {VERSION}: python bench/arch_sweep.py --record"
    assert sorted(recorded["architectures"]) == shared_architectures()


def test_tiny_checkpoints_are_cached_and_a_bad_name_is_named(tiny_checkpoint):
    from transformers import AutoConfig

    from pytest_sglang_runner.errors import SpecError

    first = tiny_checkpoint("Qwen3MoeForCausalLM", num_experts=8)
    assert tiny_checkpoint("Qwen3MoeForCausalLM", num_experts=8) == first
    assert AutoConfig.from_pretrained(first).num_experts == 8  # an override wins over TINY's 4
    assert tiny_checkpoint("Qwen3MoeForCausalLM") != first  # another recipe, another directory
    with pytest.raises(SpecError, match="tiny:MixtralForCausalLm: transformers .* did you mean MixtralForCausalLM"):
        tiny_checkpoint("MixtralForCausalLm")


def test_the_bfloat16_rule_passes_bfloat16s_own_error_and_fails_a_tenth_more_logit_scale(runner_factory):
    """bfloat16 is judged against HF in float32 with twice HF's own bfloat16 error as tolerance:
    the tiny checkpoints' scaled logits put that error above the fixed tolerances (which would
    judge bfloat16, not SGLang), and the rule still catches SGLang's logits scaled by 1.1. On CPU;
    the GPU sweep runs the same rule."""
    architecture = "LlamaForCausalLM"
    record = coverage.check_architecture(runner_factory, architecture, dtype="bfloat16", device="cpu")
    assert record["status"] == "pass", record
    assert record["hf_bfloat16_error"]["output"] > coverage.BFLOAT16_TOLERANCES["decode_tolerance"], record
    live = runner_factory.get(
        **dict(coverage.RUNNER_SETTINGS, model=f"tiny:{architecture}", dtype="bfloat16", device="cpu")
    )
    live.model_runner.model.model.norm.weight.data.mul_(1.1)  # SGLang's side only: HF's model is its own
    try:
        damaged = coverage.check_architecture(runner_factory, architecture, dtype="bfloat16", device="cpu")
    finally:
        runner_factory.close()  # the damaged runner goes; the next test builds its own
    assert damaged["status"] == "fail decode", damaged
    assert "twice HF's own bfloat16 error" in coverage.reason_of(damaged)
