"""Moved to `pytest_sglang_runner.mezo.sst2` (0.2.0); this module is that one."""

import sys

from .mezo import sst2

sys.modules[__name__] = sst2
