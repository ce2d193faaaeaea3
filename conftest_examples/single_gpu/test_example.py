"""What a user's own tests look like: nothing but fixtures (run: pytest conftest_examples/single_gpu)."""

import pytest
import torch


def test_runner_is_ready(runner):
    assert runner.model is not None


def test_masked_lm_logits(sglang_forward):
    result = sglang_forward("the film was wonderful . It was <mask> .")
    assert result.logits[0].isfinite().all()


def test_against_hf(sglang_forward, hf_model):
    ids = [0, 570, 577, 417, 2]
    with torch.no_grad():
        reference = hf_model(torch.tensor([ids])).logits[0]
    assert torch.allclose(sglang_forward([ids]).logits[0].float().cpu(), reference, atol=5e-3)


@pytest.mark.sglang(dtype="bfloat16")
def test_in_bfloat16(runner):
    assert next(runner.model.parameters()).dtype == torch.bfloat16
