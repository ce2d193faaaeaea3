"""Where the kit keeps what outlives a run (a leaf: imports nothing of the kit)."""

from __future__ import annotations

import os
from pathlib import Path


def kit_cache_dir() -> Path:
    """Embedded models and ServerArgs schemas: ``$XDG_CACHE_HOME/pytest-sglang-runner``, by default
    ``~/.cache/pytest-sglang-runner``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "pytest-sglang-runner"


def models_cache_dir() -> Path:
    """The persistent home of the embedded models (``--sglang-clear-cache`` empties it)."""
    return kit_cache_dir() / "models"
