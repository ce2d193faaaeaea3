"""One test cannot poison the next (`plugin.guard`): real tests in an inner session change the
shared runner's weights and torch's globals, leave slots taken, and the tests after them see the
runner as it was built."""

from __future__ import annotations

import re

import pytest
import torch

from pytest_sglang_runner.runner.guard import RunnerState, weight_checksums

INNER_TESTS = """
import pytest
import torch

PROMPT = [[0, 5, 6, 2]]
SEEN = {}


def halve(runner):
    with torch.no_grad():
        for parameter in runner.model.parameters():
            parameter.mul_(0.5)


def test_first_records_the_logits(sglang_forward):
    SEEN["logits"] = sglang_forward.logits(PROMPT)[0].clone()


def test_halves_the_weights_and_fails(runner):
    halve(runner)
    assert False, "a buggy in-place update"


def test_sees_the_weights_as_built(sglang_forward):
    assert torch.equal(sglang_forward.logits(PROMPT)[0], SEEN["logits"])


@pytest.mark.sglang(mutates_weights=True)
def test_changes_them_on_purpose(runner):
    halve(runner)


def test_sees_them_as_built_again(sglang_forward):
    assert torch.equal(sglang_forward.logits(PROMPT)[0], SEEN["logits"])


def test_flips_torch_globals(runner):
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)


def test_sees_torch_as_it_was(runner):
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()


def test_leaves_slots_taken(runner):
    runner.token_to_kv_pool_allocator.alloc(8)


def test_gets_every_slot(runner, sglang_forward):
    assert sglang_forward.logits(PROMPT)[0].isfinite().all()
"""


@pytest.fixture(params=["rebuild", "pristine"])
def guarded_session(request, pytester, runpytest_forked):
    pytester.makepyfile(test_inner=INNER_TESTS)
    extra = ["--sglang-pristine-weights"] if request.param == "pristine" else []
    result = runpytest_forked("-p", "no:cacheprovider", "-rA", "--sglang-device=cpu", *extra, timeout=600)
    return request.param, result


def test_changes_are_errors_at_teardown_and_the_next_test_sees_the_runner_as_built(guarded_session):
    mode, result = guarded_session
    output = result.stdout.str()
    # 8 passed: the halving test fails (its assert) and errors at teardown, the globals test errors.
    result.assert_outcomes(passed=8, failed=1, errors=2, warnings=1)
    assert "ERROR at teardown of test_halves_the_weights_and_fails" in output
    assert "test_inner.py::test_halves_the_weights_and_fails left the shared runner changed:" in output
    assert re.search(r"weights changed: \d+ of \d+ tensors \(roberta\.embeddings\.word_embeddings\.weight, ", output)
    assert "ERROR at teardown of test_flips_torch_globals" in output
    assert "torch's default dtype: torch.float32 before the test, torch.float64 after" in output
    assert "torch's grad mode: True before the test, False after" in output
    assert "@pytest.mark.sglang(mutates_weights=True)" in output
    assert "ERROR at teardown of test_changes_them_on_purpose" not in output
    assert "test_leaves_slots_taken left KV cache slots: " in output and "SlotsLeftTaken" in output
    if mode == "pristine":
        assert "put back from the pristine copy" in output
        assert "embedded-roberta on cpu, float32, torch_native attention, tp 1: 1 build" in output
    else:
        assert "the runner was torn down: the next test of its config builds a fresh one" in output
        assert "tp 1: 3 builds" in output  # the first, then after each change of the weights


def test_the_fingerprint_sees_one_changed_bit_of_any_dtype():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2).to(torch.bfloat16))
    before = weight_checksums(model)
    with torch.no_grad():
        weight = model[1].weight.view(torch.int16)
        weight[0, 0] ^= 1  # the lowest mantissa bit of one bfloat16 element
    after = weight_checksums(model)
    assert [name for name in before if before[name] != after[name]] == ["1.weight"]


def test_the_differences_name_the_tensors_and_count_the_rest():
    weights = {f"layer{i}.weight": i for i in range(8)}
    globals_ = {"default dtype": torch.float32, "grad mode": True, "deterministic algorithms": False}
    before = RunnerState(weights, 10, 2, globals_)
    after = RunnerState({**weights, **{f"layer{i}.weight": -1 for i in range(1, 8)}}, 10, 2, dict(globals_))
    (line,) = before.differences(after)
    assert line.startswith("weights changed: 7 of 8 tensors (layer1.weight, ") and line.endswith("and 2 more)")
