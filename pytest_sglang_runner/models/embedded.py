"""The embedded models: written by the kit itself, offline, once per test run.

``embedded-roberta`` (the default) is a small RoBERTa masked LM; ``embedded-llama`` is a tiny
Llama decoder (`embedded_llama`). This module writes the RoBERTa and keeps both in the cache
(`ensure_embedded_model`); their vocabulary is in `words`.

Same bytes every time for a given torch/transformers/tokenizers: the tokenizer is a byte-level
BPE trained on a fixed word list, the weights come from one seeded generator. The checkpoint is
what transformers' ``save_pretrained`` writes for a ``RobertaForMaskedLM``, so it loads both in
HF and (through the kit's model class) in SGLang. `ensure_embedded_model` writes it under a file
lock into a directory keyed by everything that decides its bytes (`bytes_key`): the plugin keeps
that in the kit's persistent cache, so only the first run on a machine pays for it, and xdist
workers and concurrent sessions share one copy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..paths import models_cache_dir  # noqa: F401  (its old home; conftests import it here)
from .words import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, train_bpe  # noqa: F401  (names tests import here)

EMBEDDED_SEED = 20230617

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

EMBEDDED_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=130,  # 128 tokens + RoBERTa's padding_idx offset
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    position_embedding_type="absolute",  # transformers 5 dropped it; SGLang's roberta.py reads it
)


# HF roberta-large's shape (355M parameters), for cost measurements with random weights.
ROBERTA_LARGE_SHAPE = dict(
    EMBEDDED_CONFIG,
    vocab_size=50265,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=514,
)


def build_tokenizer(directory: Path):
    """Train the byte-level BPE tokenizer and save it as a RoBERTa tokenizer in ``directory``.

    Wrapped as a tokenizer object rather than rebuilt from vocab/merges files, which
    transformers 5.12 and 5.19 read differently; the saved tokenizer.json is the same in both.
    """
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    bpe = train_bpe(SPECIAL_TOKENS)
    bpe._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    directory.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(directory))  # vocab.json and merges.txt, for RoBERTa's slow tokenizer
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, model_max_length=128)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def build_model(
    vocab_size: int,
    seed: int = EMBEDDED_SEED,
    shape: dict = EMBEDDED_CONFIG,
    std: float = 0.05,
    layer_norm_noise: float = 0.1,
    zero_biases: bool = False,
):
    """A RobertaForMaskedLM with weights drawn from one seeded generator (independent of torch's global RNG).

    Every tensor draws its noise in name order, whatever the options, so a given seed always
    means the same draws: weights ~ N(0, std²), layer-norm weights 1 + layer_norm_noise·N(0, 1).
    """
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(**dict(shape, vocab_size=vocab_size, architectures=["RobertaForMaskedLM"]))
    model = RobertaForMaskedLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                tensor.copy_(1.0 + layer_norm_noise * noise)
            elif zero_biases and name.endswith("bias"):
                tensor.zero_()
            else:
                tensor.copy_(std * noise)
    model.tie_weights()
    return model


def _save(model, directory: Path, dtype: str) -> Path:
    model.save_pretrained(str(directory), safe_serialization=True)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config.update(
        position_embedding_type="absolute", architectures=["RobertaForMaskedLM"], torch_dtype=dtype, dtype=dtype
    )
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def write_embedded_model(directory: Path) -> Path:
    """Write tokenizer, config and safetensors weights into ``directory`` (created)."""
    directory = Path(directory)
    tokenizer = build_tokenizer(directory)
    return _save(build_model(len(tokenizer)), directory, "float32")


def write_random_roberta(directory: Path, shape: dict = ROBERTA_LARGE_SHAPE, dtype: str = "bfloat16", **init) -> Path:
    """A RoBERTa masked LM of ``shape`` with random weights and the embedded tokenizer.

    ``shape`` without ``vocab_size`` takes the tokenizer's; ``init`` goes to `build_model`.
    """
    directory = Path(directory)
    tokenizer = build_tokenizer(directory)
    return _save(build_model(shape.get("vocab_size") or len(tokenizer), shape=shape, **init), directory, dtype)


def _writers() -> dict:
    from .embedded_llama import write_embedded_llama

    return {"embedded-roberta": write_embedded_model, "embedded-llama": write_embedded_llama}


KEYED_BY = ("pytest-sglang-runner", "torch", "transformers", "tokenizers", "safetensors")


def bytes_key() -> str:
    """The versions the embedded models' bytes depend on, as a directory name (read from package
    metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "none"

    return "-".join(f"{package.split('-')[0]}{installed(package)}" for package in KEYED_BY).replace("+", "_")


def embedded_model_written(root: Path, name: str) -> bool:
    """Whether ``name`` is already in the cache under ``root`` (another process may be writing it)."""
    return (Path(root) / bytes_key() / name / "model.safetensors").is_file()


def write_once(target: Path, write: Callable[[Path], object], done: str = "model.safetensors", announce=None) -> Path:
    """``write(staging)`` into ``target`` unless a complete copy is there (``target/done``):
    file-locked across processes (xdist workers, concurrent runs), written into ``target.partial``
    (one a killed writer left is removed first) and renamed into place, so no reader sees half a
    model. ``announce()`` is called when this call writes it."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_suffix(".lock"))):
        if not (target / done).is_file():
            staging = target.with_suffix(".partial")
            if staging.exists():
                import shutil

                shutil.rmtree(staging)
            if announce is not None:
                announce()
            write(staging)
            staging.rename(target)
    return target


def ensure_embedded_model(root: Path, name: str = "embedded-roberta", announce=None) -> Path:
    """The embedded model ``name`` under ``root/bytes_key()``, written by the first process to get
    there (`write_once`) and reused after. ``announce(text)`` is told when this call writes it
    (seconds, embedded-llama's training up to a minute on a loaded machine)."""
    root = Path(root) / bytes_key()
    tell = (
        None
        if announce is None
        else lambda: announce(f"writing the embedded model {name} (once per machine, under {root})")
    )
    return write_once(root / name, _writers()[name], announce=tell)


def fingerprint(directory: Path) -> str:
    """sha256 over the checkpoint's files, for 'same model' checks."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
