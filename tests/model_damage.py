"""Damage a saved checkpoint the way a bad conversion would, past the kit's cheap file checks."""

from pathlib import Path


def shorten_tensor(directory: Path, name: str, rows: int = 8) -> None:
    """Rewrite ``model.safetensors`` with tensor ``name`` missing its last ``rows`` rows: a valid
    file whose shapes no longer match the config, so only SGLang's weight loader can tell."""
    from safetensors.torch import load_file, save_file

    weights = Path(directory) / "model.safetensors"
    tensors = load_file(weights)
    tensors[name] = tensors[name][:-rows].clone()
    save_file(tensors, weights, metadata={"format": "pt"})
