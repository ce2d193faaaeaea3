"""Every position's logits from a decoder, which SGLang's logits processor never returns.

SGLang computes a generative model's logits only where it samples (each sequence's last
position) and turns the rest into logprobs. `capture_full_logits` wraps the model's
``LogitsProcessor.forward`` for one call: before SGLang's own work it runs the processor's own
``_get_logits`` on every position's hidden state, so the LM head, the logit scale, the soft-cap and
the TP gather are SGLang's, not a copy of them. The logits buffer is left alone: a sampled step's
logits live there.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


def _logits_processors(model) -> list:
    from sglang.srt.layers.logits_processor import LogitsProcessor

    return [module for module in model.modules() if isinstance(module, LogitsProcessor)]


@contextlib.contextmanager
def capture_full_logits(runner) -> Iterator[list]:
    """A list that holds, after one forward inside the block, ``[total_tokens, vocab]`` logits."""
    from sglang.srt.layers.logits_processor import LogitsMetadata
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

    captured: list = []
    processors = _logits_processors(runner.model)
    if not processors:
        raise ValueError(
            f"{type(runner.model).__name__} has no SGLang LogitsProcessor: it gives no per-position logits"
        )

    def wrap(processor):
        original = processor.forward

        def forward(input_ids, hidden_states, lm_head, logits_metadata, *args, **kwargs):
            metadata = logits_metadata
            if isinstance(metadata, ForwardBatch):
                metadata = LogitsMetadata.from_forward_batch(metadata)
            captured.append(processor._get_logits(hidden_states, lm_head, metadata, use_logits_buffer=False))
            return original(input_ids, hidden_states, lm_head, logits_metadata, *args, **kwargs)

        return forward

    for processor in processors:
        processor.forward = wrap(processor)
    try:
        yield captured
    finally:
        for processor in processors:
            del processor.forward  # the class's method again
