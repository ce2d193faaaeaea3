"""The kit's own suite: import the heavy stack once, before any test.

pytester restores ``sys.modules`` after each test that uses it, dropping whatever that test
imported first; importing those torch/transformers modules again later fails ("Only a single
TORCH_LIBRARY can be used to register the namespace ..."). Importing them here, at collection,
keeps them out of every snapshot's reach, whatever order the tests run in.
"""

import importlib
import os
import sys
from pathlib import Path

# pytester points HOME at each inner run's own directory: without a cache named here, every inner
# run would write the embedded models (embedded-llama trains for seconds) and the ServerArgs schema
# again into its own ~/.cache. Tests that need an empty cache still set XDG_CACHE_HOME themselves.
os.environ.setdefault("XDG_CACHE_HOME", str(Path.home() / ".cache"))
# README's install skips pip's byte-compilation of SGLang's whole dependency tree (36k files, about
# 3.5 min on CI's 2 cores); the suite writes the bytecode of the ~7k modules it imports, once, as
# it first imports them (some images set PYTHONDONTWRITEBYTECODE, which would make every process
# compile them again).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

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
