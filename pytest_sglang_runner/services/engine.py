"""`EngineService`: an ``sglang.Engine`` in a host process of its own, driven from the test.

The Engine gets the runner's settings (same model, dtype, device, attention backend, KV budget)
and answers in the kit's types: `encode` gives one embedding per prompt like
``Forward.embeddings``, `generate` gives `Generation` objects that the comparison helpers take
against the runner's or HF's. Each request is bounded by the run's time limit, and a host that
dies mid-request fails it at once with the end of the Engine's log, never a hang.
"""

from __future__ import annotations

import socket
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from ..errors import ServiceError
from ..results import Generation, check_arguments
from ..sglang_compat.serving import generation_from_engine
from ..tokens import Tokenized
from .process import HostedProcess

HOST_MODULE = "pytest_sglang_runner.services.engine_host"


class EngineService(Tokenized):
    """The test's handle on a hosted ``sglang.Engine`` (see the module docstring)."""

    def __init__(
        self, engine_kwargs: dict, *, device: str, timeout_s: float, progress: Callable[[str], None] | None = None
    ):
        self.model_path = engine_kwargs["model_path"]
        self.engine_kwargs = engine_kwargs
        self.device = device
        self.timeout_s = timeout_s
        self.progress = progress  # what the start waits for, as it goes (the terminal's)
        self._conn: Connection | None = None
        self.process: HostedProcess | None = None

    def start(self) -> EngineService:
        ours, theirs = socket.socketpair()
        try:
            self.process = HostedProcess(
                "Engine",
                HOST_MODULE,
                [str(theirs.fileno())],
                device=self.device,
                pass_fds=[theirs.fileno()],
                progress=self.progress,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        try:
            self._conn.send(self.engine_kwargs)
            status, detail = self._receive("ready")
        except BaseException:
            self.stop()
            raise
        if status != "ready":
            self.stop()
            raise ServiceError(f"sglang.Engine failed to start:\n{detail}")
        self.process.ready()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive and self._conn is not None

    def _receive(self, what: str) -> tuple[str, Any]:
        assert self.process is not None and self._conn is not None
        conn = self._conn
        self.process.wait_until(lambda: conn.poll(), self.timeout_s, what)
        try:
            return conn.recv()
        except (EOFError, OSError):
            raise self._lost(what) from None

    def _lost(self, what: str) -> ServiceError:
        """The connection broke: the host is ending (or ended) without a word."""
        self.process.wait_briefly()
        return self.process.failure(f"ended before it was {what}")

    def request(self, command: str, **payload: Any) -> Any:
        """One request to the host: its answer, or `ServiceError` (the Engine's own traceback when it raised)."""
        if not self.alive:
            raise ServiceError(
                "the Engine is not running" + (f": it {self.process.exit_text()}" if self.process else "")
            )
        what = f"done with {command}"
        try:
            try:
                self._conn.send((command, payload))
            except OSError:
                raise self._lost(what) from None
            status, detail = self._receive(what)
        except ServiceError:
            self.stop()  # dead or past the limit: the next test gets a fresh Engine
            raise
        if status == "error":
            raise ServiceError(f"sglang.Engine {command} failed:\n{detail}")
        return detail

    def encode(self, prompts) -> Any:
        """Embeddings, one row per prompt (texts or token lists), as a float32 tensor ``[batch, dim]``."""
        import torch

        return torch.tensor(self.request("encode", token_lists=self.token_lists(prompts)), dtype=torch.float32)

    def generate(
        self,
        prompts,
        max_new_tokens: int = 16,
        top_logprobs: int | None = 5,
        stop_token_ids: Sequence[int] = (),
        ignore_eos: bool = False,
    ) -> list[Generation]:
        """Greedy continuations (temperature 0) with prompt and output top-k logprobs, as `Forward.generate` gives."""
        check_arguments(max_new_tokens, top_logprobs)
        token_lists = self.token_lists(prompts)
        answers = self.request(
            "generate",
            token_lists=token_lists,
            max_new_tokens=max_new_tokens,
            top_logprobs=top_logprobs,
            stop_token_ids=tuple(stop_token_ids),
            ignore_eos=ignore_eos,
        )
        return [generation_from_engine(ids, answer) for ids, answer in zip(token_lists, answers)]

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Any other ``sglang.Engine`` method by name (arguments and result must pickle), e.g. ``call("get_server_info")``."""
        return self.request("call", method=method, args=args, kwargs=kwargs)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def ask_to_stop(self) -> None:
        """Ask the host to shut the Engine down (`stop` waits for it): stopping several at once
        overlaps their shutdowns."""
        if self._conn is not None and self.process is not None and self.process.alive:
            try:
                self._conn.send(("close", None))
            except OSError:
                pass

    def stop(self) -> float | None:
        """Ask the host to shut the Engine down, then make sure its whole process group is gone;
        the seconds that took (None when there was nothing to stop, or it failed)."""
        if self.process is None:
            return None
        self.ask_to_stop()
        conn, self._conn = self._conn, None
        try:
            return self.process.stop()
        except Exception:  # noqa: BLE001 - stopping must not fail a teardown
            traceback.print_exc()
            return None
        finally:
            if conn is not None:
                conn.close()
