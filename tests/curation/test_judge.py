"""The judge: the offline knn-vote over Qdrant, and an OpenAI-compatible endpoint served live on
127.0.0.1 by the test (retries, timeouts, strict parsing, errors recorded, not raised)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.curation.judge import JudgeConfig, OpenAIJudge, attribute, parse_answer
from tasks.curation.review import ReviewStore
from tests.curation.test_curate import clinc_query, load, positives, record

EXPERTS5 = ("banking", "travel", "home", "utility", "work")
ODD = "purple elephants dance on quantum saxophones"


def seed_store(home: Path) -> None:
    """Labelled neighbours for five experts, and badly rated records to judge."""
    items = positives(20, 6, EXPERTS5)  # intents 0-5 of each expert, labelled by thumbs-up
    # a few more rated paraphrases of the intents asked about below
    items += [record(f"more-{expert}-{v}", clinc_query(expert, k, v), expert, 1, minute=v)
              for expert, k in (("travel", 0), ("banking", 1), ("home", 2))
              for v in (30, 31, 32)]
    items += [
        record("wrong-1", clinc_query("travel", 0, 21), "banking", -1, minute=40),
        record("wrong-2", clinc_query("banking", 1, 21), "home", -1, minute=41),
        record("right-1", clinc_query("home", 2, 21), "home", -1, minute=42),
        record("odd", ODD, "work", -1, minute=43),
        record("unrated-odd", "the mitochondria is the powerhouse of the cell", "meta", None,
               minute=44),
    ]
    load(home, "b1", items)


def test_knn_vote_flags_wrong_routes_and_queues_them(tmp_path: Path) -> None:
    seed_store(tmp_path)
    config = JudgeConfig(home=str(tmp_path), k=5, audit_fraction=0.0, min_similarity=0.3)
    result = attribute(config)
    assert result.judge == "knn-vote(k=5)" and result.negative == 4 and result.judged_now == 4
    assert result.indexed == 44 and result.records_in_window == 44

    store = ReviewStore(str(tmp_path), "router")
    verdicts = store.judgements()
    # the query's own intent is labelled: its paraphrase's neighbours outvote the wrong route
    assert verdicts["wrong-1"]["routing_error"] is True
    assert verdicts["wrong-1"]["expert"] == "travel"
    assert verdicts["wrong-2"]["routing_error"] is True
    assert verdicts["wrong-2"]["expert"] == "banking"
    assert verdicts["right-1"]["routing_error"] is False
    assert verdicts["odd"]["routing_error"] is None  # nothing labelled near it: abstain
    assert "no labelled neighbour" in verdicts["odd"]["rationale"]
    assert 0 < verdicts["wrong-1"]["confidence"] <= 1

    queue = store.queue()
    assert {r for r, i in queue.items() if i["reason"] == "judge_flagged"} == {"wrong-1",
                                                                             "wrong-2"}
    assert {r for r, i in queue.items() if i["reason"] == "novel"} == {"odd", "unrated-odd"}
    assert result.flagged == 2 and result.abstained == 1 and result.novel == 2
    assert result.queued == {"judge_flagged": 2, "audit": 0, "novel": 2}
    assert {p["record_id"] for p in result.preview} == set(queue)

    again = attribute(config)  # idempotent: nothing re-indexed, re-judged or re-queued
    assert again.indexed == 0 and again.judged_now == 0 and sum(again.queued.values()) == 0
    assert len(store.read("queue")) == 4

    audited = attribute(config.model_copy(update={"rejudge": True, "audit_fraction": 1.0}))
    assert audited.queued["audit"] == 1  # right-1, cleared by the judge, goes to the experts


# ------------------------------------------------------------ the OpenAI-compatible judge


class FakeLLM(BaseHTTPRequestHandler):
    """Answers like a chat-completions endpoint, misbehaving on purpose for some questions."""

    calls: Counter[str] = Counter()
    auth: list[str | None] = []

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": "not found"})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.auth.append(self.headers.get("Authorization"))
        user = body["messages"][1]["content"]
        query = user.split("Question: ", 1)[1].split("\n", 1)[0]
        route = user.split("Expert chosen by the router: ", 1)[1].split("\n", 1)[0]
        FakeLLM.calls[query] += 1
        assert "out_of_scope" in body["messages"][0]["content"]
        if "flaky" in query and FakeLLM.calls[query] < 3:
            self._send(503, {"error": "overloaded"})
            return
        if "slow" in query or ("sluggish" in query and FakeLLM.calls[query] == 1):
            time.sleep(1.0)
        if "garbage" in query:
            content = "I think the route was wrong, probably travel."
        elif "contradict" in query:
            content = json.dumps({"routing_error": True, "correct_expert": route,
                                  "confidence": 0.9, "rationale": "x"})
        elif "extra" in query:
            content = json.dumps({"routing_error": False, "correct_expert": route,
                                  "confidence": 0.9, "rationale": "x", "mood": "happy"})
        elif "flight" in query:
            content = "```json\n" + json.dumps({
                "routing_error": True, "correct_expert": "travel", "confidence": 0.92,
                "rationale": "Booking a flight is travel."}) + "\n```"
        else:
            content = json.dumps({"routing_error": False, "correct_expert": route,
                                  "confidence": 0.8, "rationale": "The route fits."})
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                               "content": content}}]})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def llm_server() -> Iterator[str]:
    FakeLLM.calls = Counter()
    FakeLLM.auth = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_openai_judge_against_a_live_endpoint(llm_server: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_JUDGE_KEY", "sekret")
    config = JudgeConfig(backend="openai", endpoint_url=llm_server, model="judge-70b",
                         api_key_env="TEST_JUDGE_KEY", timeout_s=0.5, max_retries=2,
                         backoff_s=0.01, concurrency=3)
    queries = {"a": ("book a flight to oslo", "banking"),
               "b": ("what is my balance", "banking"),
               "c": ("flaky what is my balance", "banking"),
               "d": ("garbage answer please", "home"),
               "e": ("contradict me", "home"),
               "f": ("slow question", "work"),
               "g": ("extra keys", "work")}
    frame = pd.DataFrame({"id": list(queries), "query": [q for q, _ in queries.values()],
                          "route": [r for _, r in queries.values()],
                          "feedback_comment": ["Wrong department."] + [None] * 6})
    judge = OpenAIJudge(config)
    try:
        verdicts = {v.record_id: v for v in judge.judge(frame)}
    finally:
        judge.close()

    assert verdicts["a"].routing_error is True and verdicts["a"].expert == "travel"
    assert verdicts["a"].confidence == 0.92 and verdicts["a"].judge == "openai:judge-70b"
    assert verdicts["b"].routing_error is False and verdicts["b"].expert == "banking"
    assert verdicts["c"].routing_error is False and FakeLLM.calls["flaky what is my balance"] == 3
    assert verdicts["d"].routing_error is None and "not JSON" in verdicts["d"].error
    assert "contradicts" in verdicts["e"].error
    assert "Timeout" in verdicts["f"].error and FakeLLM.calls["slow question"] == 3
    assert "Extra inputs are not permitted" in verdicts["g"].error
    assert set(FakeLLM.auth) == {"Bearer sekret"}

    gone = OpenAIJudge(config.model_copy(update={"endpoint_url": llm_server + "/missing",
                                                 "max_retries": 3}))
    try:
        lost = gone.judge_one("x", "book a flight", "banking", None)
    finally:
        gone.close()
    assert lost.error.startswith("HTTP 404") and FakeLLM.calls["book a flight"] == 0


def test_judge_errors_are_retried_by_the_next_run_up_to_max_attempts(
        tmp_path: Path, llm_server: str) -> None:
    items = positives(20, 2, EXPERTS5)  # something labelled in the window
    items += [record("late", "sluggish: book a flight to oslo", "banking", -1, minute=40),
              record("junk", "garbage answer please", "home", -1, minute=41),
              record("fine", "book a flight to rome", "banking", -1, minute=42)]
    load(tmp_path, "b1", items)
    config = JudgeConfig(home=str(tmp_path), backend="openai", endpoint_url=llm_server,
                         model="judge-70b", timeout_s=0.5, max_retries=0, backoff_s=0.0,
                         audit_fraction=0.0, max_attempts=2)
    store = ReviewStore(str(tmp_path), "router")

    first = attribute(config)  # "late" times out, "junk" does not parse
    assert (first.judged_now, first.retried, first.errors) == (3, 0, 2)
    verdicts = store.judgements()
    assert "Timeout" in verdicts["late"]["error"] and verdicts["late"]["attempt"] == 1
    assert verdicts["fine"]["routing_error"] is True and verdicts["fine"]["attempt"] == 1

    second = attribute(config)  # both errors tried again; the endpoint answers "late" now
    assert (second.judged_now, second.retried, second.errors) == (2, 2, 1)
    verdicts = store.judgements()
    assert verdicts["late"]["routing_error"] is True and verdicts["late"]["expert"] == "travel"
    assert verdicts["late"]["attempt"] == 2 and verdicts["late"]["error"] is None
    assert verdicts["junk"]["attempt"] == 2 and "not JSON" in verdicts["junk"]["error"]
    assert FakeLLM.calls["book a flight to rome"] == 1  # an answered record is not asked again

    third = attribute(config)  # "junk" has had its max_attempts: left as an error, counted
    assert (third.judged_now, third.retried, third.errors) == (0, 0, 1)
    assert FakeLLM.calls["garbage answer please"] == 2
    assert len(store.read("judgements")) == 5  # every attempt kept


def test_strict_answer_parsing_and_config_errors() -> None:
    experts = ["banking", "travel"]
    ok = parse_answer('{"routing_error": true, "correct_expert": "travel", "confidence": 1,'
                      ' "rationale": "r"}', "banking", experts)
    assert ok.correct_expert == "travel"
    for text, message in [
        ("[1, 2]", "not a JSON object"),
        ('{"routing_error": "yes", "correct_expert": "travel", "confidence": 1,'
         ' "rationale": "r"}', "routing_error"),
        ('{"routing_error": true, "correct_expert": "hr", "confidence": 1, "rationale": "r"}',
         "not an expert"),
        ('{"routing_error": true, "correct_expert": "travel", "confidence": 3,'
         ' "rationale": "r"}', "confidence"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_answer(text, "banking", experts)
    with pytest.raises(ValueError, match="needs endpoint_url and model"):
        JudgeConfig(backend="openai")
    with pytest.raises(ValueError, match="end must be after start"):
        JudgeConfig(start="2026-11-21", end="2026-11-20")
