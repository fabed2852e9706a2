"""A small Open Inference Protocol client with retries and backoff: what `rayfleet predict` uses.

Inference is idempotent, so a request that may not have been answered is sent again:

- connection errors and timeouts (a proxy restarting, a port not open yet);
- 503 / 502 / 504 / 429 (unavailable, overloaded; `Retry-After` is honoured, capped);
- 500 whose body is not this server's JSON error: that is Ray Serve's proxy reporting a
  replica that died with the request in flight (Serve does not retry those itself). The app
  answers every error of its own as JSON `{"error": ...}`, so its 500s (bugs) are not retried.

Other 4xx are the caller's mistake and raise InferenceError at once (a 401 too: a server
with `spec.auth` wants the bearer token, which the client sends from `token`, else
$RAYFLEET_SERVE_TOKEN). Backoff doubles from `backoff_s` up to `max_backoff_s`, with jitter,
for at most `retries` retries.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import tenacity

from rayfleet.errors import BadInputError, WorkFailedError
from rayfleet.lazy import lazy
from rayfleet.retry import doubling, jittered, retrying
from rayfleet.serve.auth import client_token

httpx = lazy("httpx")

RETRY_STATUS = {429, 502, 503, 504}


class InferenceError(BadInputError):
    """The server refused the request (4xx): its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class UnavailableError(WorkFailedError):
    """No answer after every retry."""


class _Retryable(Exception):
    """An attempt that may not have been answered: worth sending again."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class ClientStats:
    requests: int = 0
    attempts: int = 0
    retried: int = 0  # requests that needed at least one retry


def _error_message(response: httpx.Response) -> str | None:
    """This app's error text, or None when the body is not its `{"error": ...}` JSON."""
    try:
        doc = response.json()
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"]
    return None


class PredictClient:
    """OIP calls against one server: `metadata`, `infer`, each with retries.

    `token`: the bearer token to send; None reads $RAYFLEET_SERVE_TOKEN, "" sends none."""

    def __init__(
        self,
        url: str,
        *,
        retries: int = 5,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        timeout_s: float = 30.0,
        token: str | None = None,
    ):
        token = client_token() if token is None else token.strip()
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._backoff = doubling(backoff_s, max_backoff_s)
        self.stats = ClientStats()
        self._lock = threading.Lock()
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(max_keepalive_connections=64, max_connections=256),
            headers={"Authorization": f"Bearer {token}"} if token else None,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PredictClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Doubling backoff, at least the server's `Retry-After` (both capped)."""
        delay = self._backoff(state)
        if (after := getattr(state.outcome.exception(), "retry_after", None)) is not None:
            delay = max(delay, min(after, self.max_backoff_s))
        return delay

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        if state.attempt_number == 1:
            with self._lock:
                self.stats.retried += 1

    def _attempt(self, method: str, url: str, json_body: Any) -> dict[str, Any]:
        """One request: the JSON of a 2xx; _Retryable for what is worth sending again."""
        with self._lock:
            self.stats.attempts += 1
        try:
            response = self._http.request(method, url, json=json_body)
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise _Retryable(reason) from None
        if response.is_success:
            return response.json()
        message = _error_message(response)
        if response.status_code in RETRY_STATUS or (
            response.status_code == 500 and message is None
        ):
            after = response.headers.get("retry-after", "")
            raise _Retryable(
                f"HTTP {response.status_code}: {(message or response.text)[:200]}",
                retry_after=float(after) if after.isdigit() else None,
            )
        detail = message or response.text[:300] or response.reason_phrase
        if response.status_code < 500:
            raise InferenceError(response.status_code, detail)
        raise WorkFailedError(f"{url}: HTTP {response.status_code}: {detail}")

    def request(self, method: str, path: str, json_body: Any = None) -> dict[str, Any]:
        """One call with retries; the decoded JSON answer of a 2xx."""
        url = f"{self.url}{path}"
        with self._lock:
            self.stats.requests += 1
        try:
            return retrying(
                on=_Retryable,
                wait=jittered(self._wait),
                attempts=self.retries + 1,
                before_sleep=self._count_retry,
            )(self._attempt, method, url, json_body)
        except _Retryable as exc:
            raise UnavailableError(
                f"{url}: no answer after {self.retries + 1} attempt(s) ({exc}); is the server "
                "running? (`rayfleet serve status`)"
            ) from None

    def metadata(self, model: str) -> dict[str, Any]:
        return self.request("GET", f"/v2/models/{model}")

    def infer(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/v2/models/{model}/infer", body)


def output(response: dict[str, Any], name: str) -> dict[str, Any]:
    """One named output tensor of an infer response."""
    for tensor in response.get("outputs", []):
        if tensor.get("name") == name:
            return tensor
    raise KeyError(f"response has no output {name!r}")
