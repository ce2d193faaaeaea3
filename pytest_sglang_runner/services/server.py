"""`ServerService`: SGLang's HTTP server on a kit-reserved port on 127.0.0.1, ready when its
``/health`` answers 200, with an ``httpx`` client on its base URL.

Started with the runner's settings (same model, dtype, device, attention backend, KV budget) in a
process session of its own, so stopping it takes the whole tree (scheduler, detokenizer).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from ..errors import ServiceError
from ..ports import PortReservation
from ..results import Generation, check_arguments
from ..sglang_compat.serving import completion_request, generations_from_completion
from ..tokens import Tokenized
from .process import HostedProcess

HOST_MODULE = "pytest_sglang_runner.services.server_host"
HEALTH_TIMEOUT_S = 2.0  # one /health request while waiting for the server


class ServerService(Tokenized):
    """The test's handle on a hosted SGLang server (see the module docstring)."""

    def __init__(
        self,
        server_kwargs: dict,
        *,
        device: str,
        timeout_s: float,
        reservation: PortReservation,
        progress: Callable[[str], None] | None = None,
    ):
        self.model_path = server_kwargs["model_path"]
        self.reservation = reservation
        self.server_kwargs = {**server_kwargs, "host": "127.0.0.1", "port": reservation.port}
        self.device = device
        self.timeout_s = timeout_s
        self.progress = progress  # what the start waits for, as it goes (the terminal's)
        self.process: HostedProcess | None = None
        self._client = None

    @property
    def port(self) -> int:
        return self.reservation.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self):
        """An ``httpx.Client`` on `base_url`, each request bounded by the run's time limit."""
        if self._client is None:
            import httpx

            self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout_s or None)
        return self._client

    def _status(self, path: str) -> int | None:
        """The status of a GET on ``path``; None when nothing answered."""
        import httpx

        try:
            return httpx.get(f"{self.base_url}{path}", timeout=HEALTH_TIMEOUT_S).status_code
        except httpx.HTTPError:
            return None

    def _answers(self, path: str) -> bool:
        return self._status(path) == 200

    def healthy(self) -> bool:
        """``/health`` answers 200: SGLang is up and (by default) ran a one-token request."""
        return self._answers("/health")

    def _started(self) -> bool:
        status = self._status("/health")
        if status is not None and status != 200:  # listening, not ready: the warm-up request runs
            self.process.announce(f"warming up: {self.base_url}/health answers {status} until a first request has run")
        return status == 200

    def start(self) -> ServerService:
        self.process = HostedProcess(
            "server", HOST_MODULE, [json.dumps(self.server_kwargs)], device=self.device, progress=self.progress
        )
        try:
            self.process.wait_until(self._started, self.timeout_s, f"healthy at {self.base_url}/health")
        except BaseException:
            self.stop()
            raise
        self.process.ready()
        return self

    @property
    def alive(self) -> bool:
        """Running and answering HTTP (``/v1/models``: no forward); checked before each test."""
        return self.process is not None and self.process.alive and self._answers("/v1/models")

    def post(self, path: str, body: dict) -> dict:
        """POST JSON, return JSON; an HTTP error status or a dead server is a `ServiceError` naming it."""
        import httpx

        if self.process is None:
            raise ServiceError(f"the server at {self.base_url} was stopped")
        try:
            response = self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            self.process.wait_briefly()  # a server that is dying: say how it ended
            raise self.process.failure(f"did not answer POST {path} ({exc})") from None
        if response.status_code != 200:
            raise ServiceError(f"POST {self.base_url}{path} answered {response.status_code}: {response.text[:2000]}")
        return response.json()

    def embeddings(self, prompts) -> Any:
        """``/v1/embeddings`` for prompts (texts or token lists): a float32 tensor ``[batch, dim]``."""
        import torch

        answer = self.post("/v1/embeddings", {"model": self.model_path, "input": self.token_lists(prompts)})
        rows = sorted(answer["data"], key=lambda item: item["index"])
        return torch.tensor([row["embedding"] for row in rows], dtype=torch.float32)

    def completions(
        self,
        prompts,
        max_new_tokens: int = 16,
        top_logprobs: int = 5,
        stop_token_ids: Sequence[int] = (),
        ignore_eos: bool = False,
    ) -> list[Generation]:
        """``/v1/completions``, greedy, with prompt (echo) and output top-k logprobs: one `Generation`
        per prompt, as `Forward.generate` gives, for the comparison helpers."""
        check_arguments(max_new_tokens, top_logprobs)
        token_lists = self.token_lists(prompts)
        body = completion_request(
            self.model_path, token_lists, max_new_tokens, top_logprobs, stop_token_ids, ignore_eos
        )
        return generations_from_completion(token_lists, self.post("/v1/completions", body), self.tokenizer)

    def ask_to_stop(self) -> None:
        """SIGTERM to the server (it drains and exits; `stop` waits for it): stopping several at
        once overlaps their shutdowns."""
        if self.process is not None:
            self.process.terminate()

    def stop(self) -> float | None:
        """SIGTERM to the server (it drains and exits), then SIGKILL to its whole process group;
        the seconds that took (None when there was nothing to stop)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is None:
            return None
        process, self.process = self.process, None
        process.terminate()
        return process.stop(then_terminate=False)
