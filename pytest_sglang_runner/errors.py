"""Every error the kit raises, under one base class (a leaf: imports nothing of the kit).

`SGLangRunnerError` is the base; ``except SGLangRunnerError`` catches any of them. It derives
from ``BaseException`` only so that `SGLangTimeout` can be one too (a timeout must not be
swallowed by an ``except Exception`` on its way up, in SGLang's code or a test's); every other
error here also derives from the built-in type it has always been (``ValueError``,
``RuntimeError``, ...), so ``except Exception`` and ``except ValueError`` catch them as before.

Each message names the setting and the fix: SGLang's errors are translated into these at one
place each (`runner.build_errors` for a build, `runner.limits` for a batch, `services` for a
hosted Engine or server).
"""

from __future__ import annotations

HOW_TO_RAISE_TIMEOUT = "--sglang-timeout / @pytest.mark.sglang(timeout=...)"


class SGLangRunnerError(BaseException):
    """The base of every error the kit raises."""


class SpecError(SGLangRunnerError, ValueError):
    """A setting has a bad value; the message names the option and the fix."""


class UnsupportedSGLang(SGLangRunnerError, RuntimeError):
    """SGLang is missing, or its API is not one the kit knows how to bootstrap."""


class RunnerBuildError(SGLangRunnerError, RuntimeError):
    """Building the runner failed; everything it had set up was torn down again."""


class PortsExhausted(SGLangRunnerError, RuntimeError):
    """No free TCP port could be reserved on 127.0.0.1."""


class BatchLimitError(SGLangRunnerError, ValueError):
    """A batch this runner cannot take; the message says which limit and what to change."""


class RankFailure(SGLangRunnerError, RuntimeError):
    """A rank failed, exited, was killed or did not finish; the message names each such rank."""


class ServiceError(SGLangRunnerError, RuntimeError):
    """An Engine or server the kit hosts failed to start, died, or did not answer in time."""


class SST2Missing(SGLangRunnerError, FileNotFoundError):
    """The SST-2 data the MeZO paper test needs is not where the options say."""


class SGLangTimeout(SGLangRunnerError):
    """A build, forward or teardown ran past the limit. Not an ``Exception``, like
    KeyboardInterrupt and pytest's own outcomes, so that no ``except Exception`` on the way up
    (SGLang's, a test's) swallows it and goes on with a runner in an unknown state."""

    def __init__(self, phase: str, seconds: float):
        super().__init__(
            f"the runner's {phase} ran past the {seconds:g} s limit (every thread's stack is on stderr); "
            f"raise the limit with {HOW_TO_RAISE_TIMEOUT}, or 0 for none"
        )
        self.phase = phase
        self.seconds = seconds

    def __reduce__(self):
        return type(self), (self.phase, self.seconds)


class ServiceRestarted(UserWarning):
    """An Engine or server died during an earlier test and was started again for this one."""


class SlotsLeftTaken(UserWarning):
    """A test left KV or request slots taken outside the kit's own batch; the kit freed them."""
