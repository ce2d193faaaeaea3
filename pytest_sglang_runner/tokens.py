"""Texts or token ids in, token lists out (a leaf: imports nothing of the kit).

Shared by the runner's `Forward`, the HF reference and the Engine and server handles, so each
takes the same inputs and tokenizes them with the checkpoint's own tokenizer.
"""

from __future__ import annotations

from typing import Any


class Tokenized:
    """Texts or token ids in, token lists out, through the checkpoint's own tokenizer (loaded on first use)."""

    model_path: str
    _tokenizer: Any = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"the model at {self.model_path} has no usable tokenizer ({exc}); pass token ids"
                ) from None
        return self._tokenizer

    def token_lists(self, inputs) -> list[list[int]]:
        """A text, texts, one token list or token lists, as token lists."""
        if isinstance(inputs, str):
            inputs = [inputs]
        inputs = list(inputs)
        if not inputs:
            raise ValueError("empty batch: pass at least one text or token list")
        if all(isinstance(item, int) for item in inputs):
            inputs = [inputs]
        lists = []
        for item in inputs:
            ids = self.tokenizer(item)["input_ids"] if isinstance(item, str) else [int(t) for t in item]
            if not ids:
                raise ValueError("empty sequence in batch: every sequence needs at least one token")
            lists.append(ids)
        return lists

    def decode(self, ids) -> str | None:
        """The text of ``ids`` (special tokens skipped), or None for a checkpoint without a tokenizer."""
        try:
            tokenizer = self.tokenizer
        except ValueError:
            return None
        return tokenizer.decode(list(ids), skip_special_tokens=True)
