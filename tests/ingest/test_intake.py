"""HTTP intake: auth, limits, payload checks, atomic landing files, ingestion of what it wrote,
and the agent client against a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import tasks.ingest.intake as intake
from tasks.core.records import SCHEMA_VERSION, make_request, make_response
from tasks.ingest.client import FlywheelClient, IntakeError
from tasks.ingest.landing import IngestConfig, ingest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def record(i: int, expert: str = "banking") -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "id": f"rec-{i}",
            "timestamp": "2026-11-20T09:14:03.120Z", "workload_id": "router",
            "client_id": "hr-portal", "model": "teacher-70b",
            "request": make_request(f"question number {i}"),
            "response": make_response(expert, f"call-{i}"), "latency_ms": 1830.2 + i}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(intake.create_app(home=str(tmp_path), token=TOKEN, max_body_bytes=20_000))


def landing_files(home: Path) -> list[Path]:
    return sorted((home / "landing").glob("http-*.jsonl"))


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def no_temp_files(home: Path) -> bool:
    return not list((home / "landing").glob("*.tmp")) if (home / "landing").exists() else True


# --------------------------------------------------------------------------------------------
# auth


def test_missing_and_wrong_token_are_401(client: TestClient, tmp_path: Path) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        answer = client.post("/v1/records", json=record(1), headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["error"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"
    assert landing_files(tmp_path) == []


def test_no_token_configured_refuses_everything(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(intake.TOKEN_ENV, raising=False)
    monkeypatch.setattr(intake, "_connection_token", lambda: None)
    client = TestClient(intake.create_app(home=str(tmp_path)))
    for answer in (client.post("/v1/records", json=record(1), headers=AUTH),
                   client.post("/v1/feedback", json={"id": "x", "rating": 1}, headers=AUTH),
                   client.get("/v1/health")):
        assert answer.status_code == 503
        assert "no token configured" in answer.json()["detail"]
    assert landing_files(tmp_path) == []


def test_token_from_env_then_connection(tmp_path: Path, monkeypatch) -> None:
    client = TestClient(intake.create_app(home=str(tmp_path)))
    monkeypatch.setenv(intake.TOKEN_ENV, "from-env")
    monkeypatch.setattr(intake, "_connection_token", lambda: "from-connection")
    ok = {"Authorization": "Bearer from-env"}
    assert client.post("/v1/records", json=record(1), headers=ok).status_code == 202
    monkeypatch.delenv(intake.TOKEN_ENV)
    assert client.post("/v1/records", json=record(2), headers=ok).status_code == 401
    ok = {"Authorization": "Bearer from-connection"}
    assert client.post("/v1/records", json=record(3), headers=ok).status_code == 202
    assert client.get("/v1/health").json() == {"status": "ok"}


# --------------------------------------------------------------------------------------------
# limits and payload checks


def test_body_over_limit_is_413(client: TestClient, tmp_path: Path) -> None:
    big = [record(i) for i in range(40)]  # well over 20 kB
    answer = client.post("/v1/records", json=big, headers=AUTH)
    assert answer.status_code == 413
    assert "20000" in answer.json()["detail"]

    def chunks():  # no Content-Length: the actual body is measured
        for i in range(40):
            yield (json.dumps(record(i)) + ",").encode()

    answer = client.post("/v1/records", content=chunks(), headers=AUTH)
    assert answer.status_code == 413
    assert landing_files(tmp_path) == [] and no_temp_files(tmp_path)


@pytest.mark.parametrize(("body", "error", "item", "words"), [
    (b'{"id": "a", "request": {"messages": [', "invalid_json", None, "malformed JSON"),
    (b"", "invalid_json", None, "empty body"),
    (b'{"id": NaN}', "invalid_json", None, "NaN"),
    (b'"just a string"', "invalid_payload", None, "got str"),
    (b"[]", "invalid_payload", None, "empty array"),
    (b'{"records": {"id": "a"}}', "invalid_payload", None, "must be an array"),
    (b'[{"id": "a"}, 7]', "invalid_item", 1, "item 1: not a JSON object"),
    (b'[{"id": "a"}, {"id": "b"}, {"model": "m"}]', "invalid_item", 2, "item 2: 'id'"),
    (b'{"records": [{"id": 5}]}', "invalid_item", 0, "item 0: 'id'"),
    # nested past the record contract's limit (900 levels parse, 1,000 used to be a 500)...
    (b'[{"id": "a"}, {"id": "b", "x": ' + b"[" * 900 + b"]" * 900 + b"}]", "too_deep", 1,
     "item 1: nested more than 64 levels"),
    # ...or past what the parser itself can recurse into
    (b'{"id": "a", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}", "too_deep", None,
     "nested too deeply to parse"),
])
def test_malformed_records_are_422(client: TestClient, tmp_path: Path, body: bytes, error: str,
                                   item: int | None, words: str) -> None:
    answer = client.post("/v1/records", content=body, headers=AUTH)
    assert answer.status_code == 422
    payload = answer.json()
    assert payload["error"] == error
    assert payload.get("item") == item
    assert words in payload["detail"]
    assert landing_files(tmp_path) == []


_GOOD_LINE = json.dumps(record(7))
#: The same bad record, as a file line and as a request body: one contract refuses it both ways.
ONE_RULE = {
    "empty_id": (_GOOD_LINE.replace('"rec-7"', '""'), "'id' is empty or blank"),
    "blank_id": (_GOOD_LINE.replace('"rec-7"', '"  \\t "'), "'id' is empty or blank"),
    "nan_latency": (_GOOD_LINE.replace("1837.2", "NaN"), "non-standard JSON constant NaN"),
    "infinite_latency": (_GOOD_LINE.replace("1837.2", "Infinity"),
                         "non-standard JSON constant Infinity"),
    "nan_rating": (_GOOD_LINE[:-1] + ', "feedback": {"rating": NaN}}',
                   "non-standard JSON constant NaN"),
}


@pytest.mark.parametrize("case", sorted(ONE_RULE))
def test_files_and_http_refuse_the_same_records(client: TestClient, tmp_path: Path,
                                                case: str) -> None:
    body, words = ONE_RULE[case]
    answer = client.post("/v1/records", content=body.encode(), headers=AUTH)
    assert answer.status_code == 422 and words in answer.json()["detail"], answer.json()
    assert landing_files(tmp_path) == []
    (tmp_path / "landing").mkdir(exist_ok=True)
    (tmp_path / "landing" / "agent.jsonl").write_text(_GOOD_LINE + "\n" + body + "\n")
    staged = ingest(IngestConfig(home=str(tmp_path), run_id="b1"))
    assert (staged.records_parsed, staged.quarantined) == (1, 1)
    import pandas as pd

    reasons = pd.read_parquet(staged.quarantine_path)["reason"].tolist()
    assert len(reasons) == 1 and words in reasons[0]


def test_bad_feedback_is_422(client: TestClient) -> None:
    for event, words in (({"id": "a", "rating": 0}, "'rating' must be 1 or -1"),
                         ({"id": "a", "rating": True}, "'rating' must be 1 or -1"),
                         ({"rating": 1}, "'id'"),
                         ({"id": "a", "rating": 1, "kind": "record"}, "'kind'")):
        answer = client.post("/v1/feedback", json=[event], headers=AUTH)
        assert answer.status_code == 422, event
        assert words in answer.json()["detail"] and answer.json()["item"] == 0


# --------------------------------------------------------------------------------------------
# accepted requests


@pytest.mark.parametrize("shape", ["object", "array", "wrapped"])
def test_accepted_batch_writes_one_landing_file(client: TestClient, tmp_path: Path,
                                                shape: str) -> None:
    records = [record(i) for i in range(3)]
    payload = {"object": records[0], "array": records, "wrapped": {"records": records}}[shape]
    expected = records[:1] if shape == "object" else records
    answer = client.post("/v1/records", json=payload, headers=AUTH)
    assert answer.status_code == 202
    files = landing_files(tmp_path)
    assert len(files) == 1
    assert answer.json() == {"accepted": len(expected), "file": files[0].name}
    assert lines_of(files[0]) == expected
    assert no_temp_files(tmp_path)


def test_each_request_gets_its_own_file(client: TestClient, tmp_path: Path) -> None:
    names = {client.post("/v1/records", json=record(1), headers=AUTH).json()["file"]
             for _ in range(3)}
    assert len(names) == 3 and {p.name for p in landing_files(tmp_path)} == names
    for name in names:
        assert name.startswith("http-") and name.endswith(".jsonl")


def test_feedback_gets_kind_and_timestamp(client: TestClient, tmp_path: Path) -> None:
    events = [{"id": "rec-1", "rating": -1, "comment": "wrong expert"},
              {"id": "rec-2", "rating": 1, "timestamp": "2026-11-21T10:00:00Z", "source": "sme"}]
    answer = client.post("/v1/feedback", json=events, headers=AUTH)
    assert answer.status_code == 202 and answer.json()["accepted"] == 2
    written = lines_of(landing_files(tmp_path)[0])
    assert [e["kind"] for e in written] == ["feedback", "feedback"]
    assert written[0]["timestamp"].endswith("Z")
    assert written[1]["timestamp"] == "2026-11-21T10:00:00Z"
    assert written[0]["comment"] == "wrong expert" and written[1]["source"] == "sme"
    assert no_temp_files(tmp_path)


def test_posted_records_and_feedback_are_ingested(client: TestClient, tmp_path: Path) -> None:
    records = [record(i, expert) for i, expert in enumerate(["banking", "travel", "home", "work"])]
    assert client.post("/v1/records", json=records[:2], headers=AUTH).status_code == 202
    assert client.post("/v1/records", json={"records": records[2:]}, headers=AUTH
                       ).status_code == 202
    assert client.post("/v1/records", json=records[0], headers=AUTH).status_code == 202  # again
    assert client.post("/v1/feedback", json={"id": "rec-1", "rating": -1},
                       headers=AUTH).status_code == 202
    # a temp file left by a crashed writer must not be read
    (tmp_path / "landing" / ".http-crashed.jsonl.tmp").write_text('{"id": "half')

    result = ingest(IngestConfig(home=str(tmp_path), run_id="t1"))
    assert len(result.files) == 4 and ".http-crashed.jsonl.tmp" not in result.files
    assert result.records_parsed == 5  # the re-delivered record too; validate de-duplicates ids
    assert result.feedback_events == 1 and result.quarantined == 0

    import pyarrow.parquet as pq

    staged = pq.read_table(Path(result.staging_dir) / "records.parquet").to_pylist()
    assert {r["id"] for r in staged} == {r["id"] for r in records}
    assert {r["id"]: r["route"] for r in staged} == {
        "rec-0": "banking", "rec-1": "travel", "rec-2": "home", "rec-3": "work"}


# --------------------------------------------------------------------------------------------
# the agent client


def test_client_retries_5xx_then_raises_4xx_with_server_message() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(503, json={"detail": "busy"})
        if request.url.path.endswith("/feedback"):
            return httpx.Response(422, json={"error": "invalid_item", "detail": "item 0: no"})
        return httpx.Response(202, json={"accepted": 1, "file": "f"})

    flywheel = FlywheelClient("http://intake.test/flywheel", token="t", retries=3, backoff=0)
    flywheel._http = httpx.Client(base_url="http://intake.test/flywheel/",
                                  transport=httpx.MockTransport(handler))
    record_id = flywheel.log_interaction(make_request("q"), make_response("banking", "c"),
                                         workload_id="router", client_id="c", model="m",
                                         latency_ms=1.0)
    assert len(calls) == 3 and len(record_id) == 32
    with pytest.raises(IntakeError, match="item 0: no") as caught:
        flywheel.log_feedback(record_id, 1)
    assert caught.value.status_code == 422 and len(calls) == 4  # a 4xx is not retried


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_client_against_real_server(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FLYWHEEL_HOME": str(tmp_path), intake.TOKEN_ENV: TOKEN}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "tasks.ingest.intake:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "intake server did not start"
            time.sleep(0.1)

        with FlywheelClient(base, token=TOKEN, retries=1, backoff=0.1) as flywheel:
            record_id = flywheel.log_interaction(
                make_request("how do I reset my card pin"), make_response("banking", "c1"),
                workload_id="router", client_id="hr-portal", model="teacher-70b",
                latency_ms=812.5, ttft_ms=300.0, usage={"total_tokens": 42})
            flywheel.log_feedback(record_id, -1, comment="wrong expert")
        with FlywheelClient(base, token="wrong", retries=3) as stranger, \
                pytest.raises(IntakeError) as caught:
            stranger.log_feedback(record_id, 1)
        assert caught.value.status_code == 401 and "invalid token" in str(caught.value)

        written = [line for path in landing_files(tmp_path) for line in lines_of(path)]
        assert len(landing_files(tmp_path)) == 2
        (sent,) = [r for r in written if r.get("kind") != "feedback"]
        (event,) = [r for r in written if r.get("kind") == "feedback"]
        assert sent["id"] == record_id and sent["schema_version"] == SCHEMA_VERSION
        assert sent["timestamp"].endswith("Z") and sent["usage"] == {"total_tokens": 42}
        assert event["id"] == record_id and event["rating"] == -1 and event["source"] == "user"
        result = ingest(IngestConfig(home=str(tmp_path), run_id="real"))
        assert (result.records_parsed, result.feedback_events, result.quarantined) == (1, 1, 0)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
