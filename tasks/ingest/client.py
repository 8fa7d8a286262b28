"""What an agent imports to send its logs and feedback to the flywheel's HTTP intake.

Use it::

    from tasks.ingest.client import FlywheelClient

    flywheel = FlywheelClient("http://127.0.0.1:8080/flywheel", token="...")
    record_id = flywheel.log_interaction(request, response, workload_id="router",
                                         client_id="hr-portal", model="teacher-70b",
                                         latency_ms=1830.2)
    flywheel.log_feedback(record_id, -1, comment="wrong expert")

or, with ``$FLYWHEEL_INTAKE_URL`` and ``$FLYWHEEL_INTAKE_TOKEN`` set, the module-level
:func:`log_interaction` and :func:`log_feedback`. Records follow :mod:`tasks.core.records`.

Connection errors and 5xx answers are retried with exponential backoff (safe: ingestion
de-duplicates by id); a 4xx answer raises :class:`IntakeError` with the server's message at once.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from tasks.core.clock import utc_now
from tasks.core.records import SCHEMA_VERSION

URL_ENV = "FLYWHEEL_INTAKE_URL"
TOKEN_ENV = "FLYWHEEL_INTAKE_TOKEN"


class IntakeError(RuntimeError):
    """The intake refused a request or could not be reached.

    Attributes:
        status_code: the HTTP status, or None when no answer came back.
        detail: the server's error message (or the connection error).
    """

    def __init__(self, message: str, status_code: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail or message


def _iso_utc(value: datetime | str | None) -> str:
    if isinstance(value, str):
        return value
    moment = value or utc_now()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)
    return str(body)[:500]


class FlywheelClient:
    """A small, synchronous client of the intake (``/v1/records``, ``/v1/feedback``).

    Args:
        base_url: where the intake is mounted, e.g. ``http://host:8080/flywheel``.
        token: bearer token (default ``$FLYWHEEL_INTAKE_TOKEN``).
        timeout: seconds per HTTP attempt.
        retries: extra attempts after the first on connection errors and 5xx answers.
        backoff: seconds before the first retry; doubled for each further one.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10,
                 retries: int = 3, backoff: float = 0.5) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        token = token or os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries, self.backoff = retries, backoff
        self._http = httpx.Client(base_url=base_url.rstrip("/") + "/", timeout=timeout,
                                  headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FlywheelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(self, path: str, payload: Any) -> dict[str, Any]:
        """POST ``payload`` as JSON to ``path``; the server's JSON answer.

        Raises:
            IntakeError: a 4xx answer (at once), or 5xx/connection errors once retries run out.
        """
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.post(path.lstrip("/"), json=payload)
            except httpx.TransportError as exc:
                if last:
                    raise IntakeError(f"intake unreachable at {self._http.base_url}: {exc}",
                                      detail=str(exc)) from exc
            else:
                if response.status_code < 400:
                    return response.json()
                message = _server_message(response)
                if response.status_code < 500 or last:
                    raise IntakeError(f"intake refused {path} ({response.status_code}): "
                                      f"{message}", response.status_code, message)
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def log_interaction(self, request: dict[str, Any], response: dict[str, Any], *,
                        workload_id: str, client_id: str, model: str, latency_ms: float,
                        ttft_ms: float | None = None, usage: dict[str, Any] | None = None,
                        id: str | None = None, timestamp: datetime | str | None = None,
                        feedback: dict[str, Any] | None = None) -> str:
        """Send one interaction as a contract record; returns its id (made here if not given).

        Args:
            request: the OpenAI chat request the agent sent.
            response: the OpenAI chat response it got (the router's tool call).
            workload_id: which agent node (e.g. ``router``).
            client_id: which application or tenant.
            model: the model that answered.
            latency_ms: total latency; ``ttft_ms``: time to first token.
            usage: token counts as the model server reported them.
            id: the record id (default: a new uuid4 hex).
            timestamp: when it happened (default: now, UTC).
            feedback: ``{"rating": 1|-1, "comment"?, "source"?}`` known at once, if any.
        """
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "id": id or uuid.uuid4().hex,
            "timestamp": _iso_utc(timestamp),
            "workload_id": workload_id,
            "client_id": client_id,
            "model": model,
            "request": request,
            "response": response,
            "latency_ms": latency_ms,
        }
        optional = {"ttft_ms": ttft_ms, "usage": usage, "feedback": feedback}
        record.update({k: v for k, v in optional.items() if v is not None})
        self.post("v1/records", record)
        return record["id"]

    def log_feedback(self, id: str, rating: int, *, comment: str | None = None,
                     source: str = "user") -> None:
        """Send a late feedback event (``rating`` +1 or -1) for the record ``id``."""
        if rating not in (1, -1):
            raise ValueError(f"rating must be 1 or -1, got {rating!r}")
        event: dict[str, Any] = {"kind": "feedback", "id": id, "rating": rating,
                                 "timestamp": _iso_utc(None), "source": source}
        if comment is not None:
            event["comment"] = comment
        self.post("v1/feedback", event)


def _env_client() -> FlywheelClient:
    url = os.environ.get(URL_ENV)
    if not url:
        raise IntakeError(f"set ${URL_ENV} to the intake's base URL (e.g. "
                          "http://127.0.0.1:8080/flywheel)")
    return FlywheelClient(url)


def log_interaction(request: dict[str, Any], response: dict[str, Any], **fields: Any) -> str:
    """:meth:`FlywheelClient.log_interaction` against ``$FLYWHEEL_INTAKE_URL``."""
    with _env_client() as client:
        return client.log_interaction(request, response, **fields)


def log_feedback(id: str, rating: int, **fields: Any) -> None:
    """:meth:`FlywheelClient.log_feedback` against ``$FLYWHEEL_INTAKE_URL``."""
    with _env_client() as client:
        client.log_feedback(id, rating, **fields)
