"""Default-config tests spread over the workers; the `small_pool` tests stay on one."""

import os

import pytest


@pytest.mark.parametrize("text", ["the film was good .", "It was <mask> .", "a long , long story"])
def test_default_config(sglang_forward, text):
    assert sglang_forward(text).logits[0].isfinite().all()


@pytest.mark.parametrize("text", ["the film was good .", "It was <mask> ."])
def test_second_config(small_pool, text):
    assert small_pool.spec.max_total_tokens == 2048
    assert small_pool.forward(text).logits[0].isfinite().all()
    print("worker", os.environ.get("PYTEST_XDIST_WORKER"))
