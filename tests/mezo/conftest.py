"""Shared pieces for the MeZO tests: one thread, the prompt, fresh HF models, the runner's scorer.

The runner is the session's (core fixtures); every test that moves its weights gets them back
through `runner_lm`, so tests after it see the checkpoint's weights again.
"""

from __future__ import annotations

import pytest
import torch

from pytest_sglang_runner import mezo, sst2


@pytest.fixture(autouse=True)
def _one_thread():
    # The embedded model is tiny: with two threads on a 2-core box that is also running something
    # else, torch's thread pool spins and each op takes ~20x longer (0.1 ms -> 2.3 ms per linear).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tokenizer(sglang_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(sglang_model_path)


@pytest.fixture
def prompt(tokenizer) -> sst2.SST2Prompt:
    return sst2.SST2Prompt(tokenizer)


@pytest.fixture
def fresh_hf(sglang_model_path):
    """A private fp32 HF copy of the checkpoint: MeZO writes into it, so never the shared `hf_model`."""

    def load(dtype=torch.float32, device="cpu"):
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM.from_pretrained(sglang_model_path, dtype=dtype).to(device).eval()

    return load


@pytest.fixture
def runner_lm(runner):
    """The runner as a MeZO masked LM; its weights and KV slots are given back after the test."""
    lm = mezo.SGLangMaskedLM(runner)
    start = mezo.canonical_state(lm.views)
    yield lm
    lm.close()
    mezo.load_canonical(lm.views, start)


@pytest.fixture(scope="session")
def synthetic_glue(tmp_path_factory):
    """GLUE-format SST-2 TSVs of synthetic sentences, written once per session."""
    return sst2.write_synthetic_glue(tmp_path_factory.mktemp("sst2-synthetic"), n_train=512, n_dev=200, seed=1)


@pytest.fixture
def float32_decoder(request):
    """The decoder MeZO tests hold the runner to HF within 1e-4, in float32. Where this SGLang's
    CUDA kernels have no float32 path for a Llama (0.5.17's RMSNorm), the build is a usage error
    naming bfloat16: the test skips, quoting it (CPU CI runs it)."""
    try:
        return request.getfixturevalue("sglang_live")
    except pytest.fail.Exception as exc:
        if "--sglang-dtype bfloat16" not in str(exc):
            raise
        pytest.skip(f"decoder MeZO's equivalence needs float32 here: {str(exc).splitlines()[0]}")
