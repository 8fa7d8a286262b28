"""HTTP intake: agents POST their logs and feedback instead of dropping files in landing.

Run it alone (for a test or a sidecar)::

    FLYWHEEL_INTAKE_TOKEN=secret python -m uvicorn --factory tasks.ingest.intake:create_app \\
        --host 127.0.0.1 --port 8090

or let the Airflow API server mount it at ``/flywheel`` (``plugins/flywheel_intake.py``).

Endpoints:

* ``POST /v1/records``: one record object, a JSON array of records, or ``{"records": [...]}``;
* ``POST /v1/feedback``: one feedback event or an array (``{"id", "rating": +1|-1, ...}``);
  the server adds ``"kind": "feedback"`` and a timestamp when missing;
* ``GET /v1/health``: no credentials needed; 503 while no token is configured.

Every accepted request becomes ONE new JSONL file in the landing folder, written atomically
(hidden temp file, fsync, rename), so :mod:`tasks.ingest.landing` reads it whole or not at all. The
endpoint guarantees well-formed JSON objects (no ``NaN`` or ``Infinity``, which ingestion refuses
from files too: :func:`tasks.core.records.loads_strict`) with non-blank string ids; checking
values is the validate stage's job, which quarantines with reasons. Re-delivery is harmless:
ingestion de-duplicates by id.

Authentication is a bearer token (``Authorization: Bearer <token>``): the ``token`` argument,
else ``$FLYWHEEL_INTAKE_TOKEN``, else the password of the Airflow connection ``flywheel_intake``.
With no token configured the intake refuses every request (503): it is never open by default.
"""

from __future__ import annotations

import hmac
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tasks.core.clock import now_iso
from tasks.core.clock import stamp as clock_stamp
from tasks.core.config import get_paths
from tasks.core.files import write_bytes_atomic
from tasks.core.records import id_problem, loads_strict, nesting_error

TOKEN_ENV = "FLYWHEEL_INTAKE_TOKEN"
CONNECTION_ID = "flywheel_intake"
#: How long a token read from the Airflow connection is reused before it is looked up again.
CONNECTION_TTL_S = 30.0

_connection_cache: dict[str, tuple[float, str | None]] = {}


class IntakeRejection(Exception):
    """A request the intake refuses; becomes a JSON error response."""

    def __init__(self, status: int, error: str, detail: str, item: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.item = status, error, detail, item
        self.headers = headers

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error, "detail": self.detail}
        if self.item is not None:
            body["item"] = self.item
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# --------------------------------------------------------------------------------------------
# the token


def _connection_token() -> str | None:
    """The password of the Airflow connection ``flywheel_intake``, if Airflow can tell us.

    Looked up only when needed (no token argument, no environment variable) and only if Airflow
    is importable, so the intake runs without Airflow; cached for ``CONNECTION_TTL_S`` so a busy
    intake does not query the secrets backend on every request.
    """
    now = time.monotonic()
    cached = _connection_cache.get(CONNECTION_ID)
    if cached and now - cached[0] < CONNECTION_TTL_S:
        return cached[1]
    password: str | None = None
    try:
        from airflow.models.connection import Connection

        password = Connection.get_connection_from_secrets(CONNECTION_ID).password or None
    except Exception:  # noqa: BLE001 - no Airflow, no database, no such connection: no token
        password = None
    _connection_cache[CONNECTION_ID] = (now, password)
    return password


def resolve_token(token: str | None = None) -> str | None:
    """The configured token: ``token``, else ``$FLYWHEEL_INTAKE_TOKEN``, else the connection."""
    return token or os.environ.get(TOKEN_ENV) or _connection_token()


async def _check_auth(request: Request, token: str | None) -> None:
    # The connection lookup may query a database: keep it off the event loop.
    expected = await run_in_threadpool(resolve_token, token)
    if not expected:
        raise IntakeRejection(
            503, "not_configured",
            f"the intake has no token configured: set ${TOKEN_ENV} or the password of the "
            f"Airflow connection {CONNECTION_ID!r}; it refuses every request until then")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise IntakeRejection(401, "unauthorized", "missing 'Authorization: Bearer <token>' header",
                              headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise IntakeRejection(401, "unauthorized", "invalid token",
                              headers={"WWW-Authenticate": "Bearer"})


# --------------------------------------------------------------------------------------------
# the body


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 past ``max_bytes`` (declared or actual)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise IntakeRejection(413, "too_large",
                              f"body of {int(declared)} bytes exceeds the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:  # a chunked or lying body: stop reading at the limit
            raise IntakeRejection(413, "too_large", f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> Any:
    if not body.strip():
        raise IntakeRejection(422, "invalid_json", "empty body")
    try:
        return loads_strict(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise IntakeRejection(422, "invalid_json", f"body is not UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise IntakeRejection(422, "invalid_json",
                              f"malformed JSON: {exc.msg} (line {exc.lineno}, column "
                              f"{exc.colno})") from exc
    except ValueError as exc:
        raise IntakeRejection(422, "invalid_json", f"malformed JSON: {exc}") from exc
    except RecursionError as exc:  # the parser recurses once per level of nesting
        raise IntakeRejection(422, "too_deep", "body nested too deeply to parse") from exc


def _items(payload: Any, wrapper: str | None) -> list[Any]:
    """The list of items of a payload: one object, an array, or ``{wrapper: [...]}``."""
    if wrapper and isinstance(payload, dict) and set(payload) == {wrapper}:
        payload = payload[wrapper]
        if not isinstance(payload, list):
            raise IntakeRejection(422, "invalid_payload", f"'{wrapper}' must be an array")
    if isinstance(payload, dict):
        return [payload]
    if isinstance(payload, list):
        if not payload:
            raise IntakeRejection(422, "invalid_payload", "empty array: nothing to accept")
        return payload
    raise IntakeRejection(422, "invalid_payload",
                          f"expected an object or an array of objects, got "
                          f"{type(payload).__name__}")


def _check_id(index: int, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise IntakeRejection(422, "invalid_item",
                              f"item {index}: not a JSON object (got {type(item).__name__})",
                              item=index)
    if problem := id_problem(item.get("id"), "'id'"):
        raise IntakeRejection(422, "invalid_item", f"item {index}: {problem}", item=index)
    too_deep = nesting_error(item)
    if too_deep:  # writing it to the landing file would recurse as deep
        raise IntakeRejection(422, "too_deep", f"item {index}: {too_deep}", item=index)
    return item


def check_records(payload: Any) -> list[dict[str, Any]]:
    """The records of a ``/v1/records`` payload, each an object with a string id."""
    return [_check_id(i, item) for i, item in enumerate(_items(payload, "records"))]


def check_feedback(payload: Any) -> list[dict[str, Any]]:
    """The feedback events of a ``/v1/feedback`` payload, completed with kind and timestamp."""
    events = []
    for i, item in enumerate(_items(payload, "feedback")):
        event = _check_id(i, item)
        rating = event.get("rating")
        if isinstance(rating, bool) or rating not in (1, -1):
            raise IntakeRejection(422, "invalid_item",
                                  f"item {i}: 'rating' must be 1 or -1, got {rating!r}", item=i)
        if event.get("kind", "feedback") != "feedback":
            raise IntakeRejection(422, "invalid_item",
                                  f"item {i}: 'kind' must be 'feedback', got {event['kind']!r}",
                                  item=i)
        events.append({**event, "kind": "feedback",
                       "timestamp": event.get("timestamp") or now_iso("milliseconds", z=True)})
    return events


# --------------------------------------------------------------------------------------------
# storage


def landing_file_name() -> str:
    """``http-<UTC timestamp>-<uuid4 hex>.jsonl``: unique, sortable by arrival."""
    stamp = clock_stamp()
    return f"http-{stamp}-{uuid.uuid4().hex}.jsonl"


def write_landing_file(landing: Path, items: list[dict[str, Any]]) -> Path:
    """Write ``items`` as one new JSONL file in ``landing``, atomically.

    The lines go to a hidden temporary file beside the target (ingestion never reads names that
    start with '.'), are fsynced, then renamed into place (the folder fsynced too), so a reader
    sees the whole file or none (:func:`tasks.core.files.atomic_path`).
    """
    target = landing / landing_file_name()
    write_bytes_atomic(target, "".join(
        json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n" for item in items
    ).encode("utf-8"), durable=True)
    return target


# --------------------------------------------------------------------------------------------


def create_app(home: str | None = None, token: str | None = None,
               max_body_bytes: int = 5_000_000) -> FastAPI:
    """The intake application.

    Args:
        home: flywheel home whose ``landing`` folder receives the files (default
            ``$FLYWHEEL_HOME``, resolved per request, so building the app reads no settings).
        token: the bearer token; default ``$FLYWHEEL_INTAKE_TOKEN``, else the Airflow
            connection ``flywheel_intake``'s password (both read per request).
        max_body_bytes: larger bodies are refused with 413.

    Returns:
        A FastAPI app with ``/v1/records``, ``/v1/feedback`` and ``/v1/health``.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    app = FastAPI(title="Flywheel intake", version="1",
                  description="Agents POST their logs and feedback; each accepted request "
                              "becomes one JSONL file in the flywheel's landing folder.")

    @app.exception_handler(IntakeRejection)
    async def _rejected(_: Request, exc: IntakeRejection) -> JSONResponse:
        return exc.response()

    async def accept(request: Request, check: Any) -> JSONResponse:
        await _check_auth(request, token)
        items = check(_parse(await _read_body(request, max_body_bytes)))
        landing = get_paths(home).landing
        path = await run_in_threadpool(write_landing_file, landing, items)
        return JSONResponse({"accepted": len(items), "file": path.name}, status_code=202)

    @app.post("/v1/records", status_code=202)
    async def post_records(request: Request) -> JSONResponse:
        """One record, an array of records, or ``{"records": [...]}``."""
        return await accept(request, check_records)

    @app.post("/v1/feedback", status_code=202)
    async def post_feedback(request: Request) -> JSONResponse:
        """One feedback event or an array: ``{"id", "rating": 1|-1, "comment"?, "source"?}``."""
        return await accept(request, check_feedback)

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        """Liveness without credentials; 503 while no token is configured."""
        if not await run_in_threadpool(resolve_token, token):
            return IntakeRejection(503, "not_configured",
                                   "the intake has no token configured").response()
        return JSONResponse({"status": "ok"})

    return app
