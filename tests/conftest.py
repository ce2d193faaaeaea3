"""The kit's own suite: import the heavy stack once, before any test.

pytester restores ``sys.modules`` after each test that uses it, dropping whatever that test
imported first; importing those torch/transformers modules again later fails ("Only a single
TORCH_LIBRARY can be used to register the namespace ..."). Importing them here, at collection,
keeps them out of every snapshot's reach, whatever order the tests run in.
"""

import functools
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
import torch  # noqa: E402
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


# The environment the zygote of tests/forked.py starts with: the run's own, before any test changes it.
ZYGOTE_ENV = dict(os.environ)
ON_CPU_ONLY = not torch.cuda.is_available()


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    """Forks inner pytest sessions with SGLang imported already (tests/forked.py); CPU runs only."""
    from forked import Zygote

    started = Zygote(ZYGOTE_ENV, tmp_path_factory.mktemp("zygote") / "zygote.log")
    yield started
    started.close()


@pytest.fixture
def runpytest_forked(pytester, request):
    """``pytester.runpytest_subprocess`` for sessions whose test is not SGLang's import: forked from
    the zygote on CPU (no 15-20 s import each), a fresh process on a GPU box."""
    if not ON_CPU_ONLY:
        return pytester.runpytest_subprocess
    import forked

    return functools.partial(forked.runpytest, pytester, request.getfixturevalue("zygote"))


@pytest.fixture
def start_pytest(request):
    """``start_pytest(args, cwd=, env=, stdout=, stderr=None, new_session=False)``: a pytest
    session running beside the test, forked from the zygote on CPU, a fresh process on a GPU box;
    it has ``pid``, ``poll()``, ``wait(timeout)``, ``returncode``, ``kill()`` and ``output()``."""
    import forked

    if not ON_CPU_ONLY:
        return forked.Fresh
    return request.getfixturevalue("zygote").start
