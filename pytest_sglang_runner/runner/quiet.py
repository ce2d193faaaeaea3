"""SGLang's noise kept out of users' runs.

Warnings raised while SGLang is imported and a runner is built come from SGLang and its
dependencies (flashinfer, cutlass, quack ...): theirs to fix, not the user's, and dozens of them
would bury the user's own; only those whose code lies in the user's project are passed on.
SGLang's and torch's log lines and progress bars of a build would land in the captured output of
whichever test happened to build the runner; they go to the build's log instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ENVIRONMENT_FOLDERS = {"site-packages", "dist-packages"}


def in_project(filename: str, project_root: Path) -> bool:
    """True for a file under the project's root that is not part of an installed environment."""
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>: import machinery
        return False
    path = Path(filename).resolve()
    return path.is_relative_to(project_root) and ENVIRONMENT_FOLDERS.isdisjoint(path.parts)


@contextmanager
def project_warnings_only(project_root: Path | None) -> Iterator[None]:
    """Record every warning in the block (filters such as ``-W error`` included: SGLang's own must
    not fail the user's run), then re-raise the project's under the user's filters. The filters
    SGLang installs at import (to silence its dependencies) are kept, as without the block."""
    if project_root is None:
        yield
        return
    root = project_root.resolve()
    caught: list[warnings.WarningMessage] = []
    installed: list[tuple] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            before = list(warnings.filters)
            try:
                yield
            finally:
                installed = [f for f in warnings.filters if f not in before]
    finally:
        for action, message, category, module, lineno in reversed(installed):
            warnings.filterwarnings(
                action, message.pattern if message else "", category, module.pattern if module else "", lineno
            )
        for w in caught:
            if in_project(w.filename, root):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


# Whose log records a build keeps: SGLang's and those of torch, which SGLang drives.
BUILD_LOGGERS = ("sglang", "torch")


def _build_loggers() -> list[logging.Logger]:
    """The top loggers of `BUILD_LOGGERS` and their children that do not propagate (torch has
    several, each with its own handlers, and pytest attaches its log capture to every such logger)."""
    loggers = [logging.getLogger(name) for name in BUILD_LOGGERS]
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and not logger.propagate and name.split(".")[0] in BUILD_LOGGERS:
            if logger not in loggers:
                loggers.append(logger)
    return loggers


@contextmanager
def build_log() -> Iterator[io.StringIO]:
    """SGLang's and torch's log records and Python-level stdout/stderr during the block, into a
    buffer: their loggers' own handlers (and pytest's capture) set aside meanwhile."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = [(logger, logger.handlers, logger.propagate) for logger in _build_loggers()]
    for logger, _, _ in saved:
        logger.handlers = [handler]
        logger.propagate = False
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate


@contextmanager
def quiet_build(project_root: Path | None) -> Iterator[io.StringIO]:
    """Both of the above around a build; yields the build's log."""
    with project_warnings_only(project_root), build_log() as log:
        yield log
