"""The kit's own suite: import the heavy stack once, before any test.

pytester restores ``sys.modules`` after each test that uses it, dropping whatever that test
imported first; importing those torch/transformers modules again later fails ("Only a single
TORCH_LIBRARY can be used to register the namespace ..."). Importing them here, at collection,
keeps them out of every snapshot's reach, whatever order the tests run in.
"""

import importlib

for _name in ("torch", "torchvision", "transformers", "transformers.generation"):
    try:
        importlib.import_module(_name)
    except ImportError:
        pass

import pytest  # noqa: E402
from transformers import (  # noqa: E402,F401  (the model classes the tests build)
    BertModel,
    Gemma2ForCausalLM,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
    RobertaForMaskedLM,
)


@pytest.fixture(scope="session")
def embedded_llama(runner_factory) -> str:
    """embedded-llama's directory, written once per run (it trains for seconds); inner sessions read it by path."""
    return runner_factory.model_path(runner_factory.spec_for(model="embedded-llama"))
