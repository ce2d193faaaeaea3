"""A user's conftest needs nothing for the kit: `pip install pytest-sglang-runner` registers it.

Fixtures of your own can build on the kit's, e.g. a session-wide tokenizer:
"""

import pytest


@pytest.fixture
def tokenizer(sglang_forward):
    return sglang_forward.tokenizer
