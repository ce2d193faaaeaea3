"""pytest-sglang-runner: test against a real SGLang ModelRunner, no server needed.

The plugin (`plugin`) registers itself through the ``pytest11`` entry point. What a test imports:
the comparison helpers and the result types of `Forward.generate` / `HFRunner.generate`.
"""

from .compare import assert_logprobs_close, assert_tokens_equal, logprob_mismatches, max_logprob_differences
from .reference import HFRunner
from .results import Generation, TokenLogprob

__all__ = [
    "Generation",
    "HFRunner",
    "TokenLogprob",
    "assert_logprobs_close",
    "assert_tokens_equal",
    "logprob_mismatches",
    "max_logprob_differences",
]
