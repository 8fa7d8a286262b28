"""Attribute: which unsatisfactory answers were routing errors, and where should they have gone?

Run it::

    flywheel attribute --workload-id router --start 2026-11-20 --end 2026-11-24
    flywheel attribute --backend openai --endpoint-url http://127.0.0.1:8000/v1 --model judge-70b

A thumbs-down says the user was unhappy, not why: in the talk's case only about 5% of failures were
routing errors. This stage indexes the window's queries in Qdrant (:mod:`tasks.curation.vectors`),
labels the index with what is known (thumbs-up: the teacher's route; an expert's decision: theirs),
asks a judge about every badly rated record not judged yet, and queues for subject-matter experts
(:mod:`tasks.curation.review`) what the judge flagged, an audit sample of what it cleared, and the
most novel unlabelled queries. The judge only proposes; nothing becomes ground truth until an expert
confirms it.

Judges (``--backend``):

* ``knn-vote`` (default, offline): the labelled neighbours of the query in Qdrant vote, weighted by
  cosine similarity. It flags a routing error when the winning expert is not the teacher's route
  and holds at least ``min_confidence`` of the vote; it abstains when no labelled neighbour is
  within ``min_similarity`` or the vote is split. It needs no LLM, and it knows only what was
  labelled before.
* ``openai``: an LLM behind any OpenAI-compatible ``/chat/completions`` endpoint, prompted with
  ``tasks/curation/judge_prompts/``; the key comes from the environment variable named by
  ``api_key_env``. Calls are concurrent up to ``concurrency``, time out after ``timeout_s``, and
  retry with exponential backoff on connection errors, timeouts, 429 and 5xx. An answer that is not
  the JSON object asked for is recorded as that record's error; it never stops the stage.

A record the judge gave no usable answer about (its calls timed out, the endpoint kept failing,
the answer did not parse) is judged again by the next run, up to ``max_attempts`` runs in all;
each verdict keeps its ``attempt`` number, and the run counts what it retried.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.clock import now_iso
from tasks.core.errors import validation_problems
from tasks.core.workload import WorkloadSettings
from tasks.curation.review import NoveltySettings, ReviewStore, confirmed_labels

if TYPE_CHECKING:
    import pandas as pd

    from tasks.curation.vectors import QueryIndex

PROMPTS = Path(__file__).resolve().parent / "judge_prompts"
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class JudgeConfig(WorkloadSettings, NoveltySettings):
    """Settings of ``flywheel attribute``."""

    home: str | None = Field(None, description="Flywheel home folder (default $FLYWHEEL_HOME "
                                               "or ~/.flywheel)")
    start: datetime | None = Field(None, description="Window start, inclusive (UTC if naive)")
    end: datetime | None = Field(None, description="Window end, exclusive (UTC if naive)")
    backend: Literal["knn-vote", "openai"] = Field(
        "knn-vote", description="'knn-vote' (offline: labelled neighbours in Qdrant vote) or "
                                "'openai' (an LLM behind an OpenAI-compatible endpoint)")
    k: int = Field(10, ge=1, le=1000, description="knn-vote: labelled neighbours consulted")
    min_similarity: float = Field(0.5, ge=-1.0, le=1.0,
                                  description="knn-vote: neighbours less similar (cosine) than "
                                              "this do not vote")
    min_confidence: float = Field(0.6, gt=0.0, le=1.0,
                                  description="knn-vote: vote share the winning expert needs; "
                                              "below it the judge abstains")
    endpoint_url: str | None = Field(None, description="openai: base URL, e.g. "
                                                       "https://host/v1 (POSTs /chat/completions)")
    model: str | None = Field(None, description="openai: model name sent to the endpoint")
    api_key_env: str = Field("FLYWHEEL_JUDGE_API_KEY",
                             description="openai: environment variable holding the API key "
                                         "(unset: no Authorization header)")
    timeout_s: float = Field(30.0, gt=0, le=600, description="openai: per-request timeout")
    max_retries: int = Field(4, ge=0, le=20, description="openai: retries of a failed call")
    backoff_s: float = Field(1.0, ge=0, le=60, description="openai: first retry delay, doubled "
                                                          "each retry (with jitter)")
    concurrency: int = Field(4, ge=1, le=256, description="openai: requests in flight at once")
    audit_fraction: float = Field(0.1, ge=0.0, le=1.0,
                                  description="Share of the records the judge clears (or "
                                              "abstains on) also sent to experts, to measure it")
    max_novel: int = Field(25, ge=0, le=100_000,
                           description="Novel queries queued for experts per run, most novel "
                                       "first")
    index_scope: Literal["all", "rated"] = Field(
        "all", description="Index every record of the window ('all', needed to find novel "
                           "unrated queries) or only rated and reviewed ones ('rated')")
    rejudge: bool = Field(False, description="Judge again records this judge already judged")
    max_attempts: int = Field(3, ge=1, le=100, description=(
        "Runs that judge a record while the judge gives no usable answer about it (a timeout, "
        "an endpoint error, an answer that does not parse); the next run retries it"))
    qdrant_url: str | None = Field(None, description="Qdrant server (default "
                                                     "$FLYWHEEL_QDRANT_URL; none: local mode)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the audit sample")
    preview_items: int = Field(25, ge=0, le=500,
                               description="Pending items listed in the result (for the "
                                           "Airflow UI review task)")

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        from tasks.core.config import utc_window

        self.start, self.end = utc_window(self.start, self.end)
        if self.backend == "openai" and not (self.endpoint_url and self.model):
            raise ValueError("backend 'openai' needs endpoint_url and model")
        return self


class Verdict(BaseModel):
    """The judge's answer about one record (``routing_error`` None: it abstained or failed)."""

    record_id: str
    judge: str
    route: str
    routing_error: bool | None = None
    expert: str | None = Field(None, description="The expert that should have answered")
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    rationale: str | None = None
    error: str | None = Field(None, description="Why the judge gave no usable answer")
    attempt: int = Field(1, ge=1, description="Which run of this judge on the record this is")


class JudgeAnswer(BaseModel):
    """The JSON object an LLM judge must answer with, checked strictly."""

    model_config = ConfigDict(extra="forbid", strict=True)

    routing_error: bool
    correct_expert: str
    confidence: float = Field(ge=0.0, le=1.0)
    rationale: str = Field(min_length=1, max_length=2000)


class AttributeResult(BaseModel):
    """What one attribution run did (a small XCom value)."""

    workload_id: str
    judge: str
    records_in_window: int = Field(ge=0)
    indexed: int = Field(ge=0, description="Points added to Qdrant by this run")
    labels_updated: int = Field(ge=0, description="Points whose label changed")
    negative: int = Field(ge=0, description="Badly rated records in the window")
    judged_now: int = Field(ge=0, description="Judged by this run")
    retried: int = Field(0, ge=0, description="Of those, records an earlier run of this judge "
                                              "gave no usable answer about")
    flagged: int = Field(ge=0, description="Of the window's negatives, flagged as routing "
                                           "errors by their latest judgement")
    abstained: int = Field(ge=0)
    errors: int = Field(ge=0, description="Judge calls that gave no usable answer")
    queued: dict[str, int] = Field(description="Items added to the review queue, by reason")
    novel: int = Field(ge=0, description="Unlabelled queries in the window far from every "
                                         "labelled one")
    pending: int = Field(ge=0, description="Queue items waiting for an expert")
    preview: list[dict[str, Any]] = Field(description="The oldest pending items (for the UI)")
    experts: list[str] = Field([], description="The labels a reviewer may give: the workload's "
                                               "experts (for the UI)")


# ------------------------------------------------------------------------------------ judges


def knn_vote(index: QueryIndex, records: pd.DataFrame, config: JudgeConfig) -> list[Verdict]:
    """Weighted vote of each record's labelled neighbours (itself excluded)."""
    name = f"knn-vote(k={config.k})"
    ids = records["id"].tolist()
    if not ids:
        return []
    hits = index.search(index.vectors(ids), config.k, labelled=True, exclude=ids)
    verdicts = []
    for row, neighbours in zip(records.itertuples(index=False), hits, strict=True):
        votes: dict[str, float] = defaultdict(float)
        for hit in neighbours:
            if hit.score >= config.min_similarity and hit.payload.get("label"):
                votes[hit.payload["label"]] += hit.score
        if not votes:
            verdicts.append(Verdict(record_id=row.id, judge=name, route=row.route,
                                    rationale=f"no labelled neighbour within cosine "
                                              f"{config.min_similarity}"))
            continue
        total = sum(votes.values())
        expert, weight = max(sorted(votes.items()), key=lambda kv: kv[1])
        share = weight / total
        voters = sum(1 for h in neighbours if h.payload.get("label") == expert
                     and h.score >= config.min_similarity)
        rationale = (f"{voters} of {len(neighbours)} nearest labelled queries say {expert} "
                     f"({share:.0%} of the similarity-weighted vote)")
        if share < config.min_confidence:
            verdicts.append(Verdict(record_id=row.id, judge=name, route=row.route,
                                    expert=expert, confidence=round(share, 4),
                                    rationale="split vote: " + rationale))
            continue
        verdicts.append(Verdict(record_id=row.id, judge=name, route=row.route,
                                routing_error=expert != row.route, expert=expert,
                                confidence=round(share, 4), rationale=rationale))
    return verdicts


def parse_answer(text: str, route: str, experts: list[str]) -> JudgeAnswer:
    """The judge's JSON answer, or ValueError saying what is wrong with it."""
    body = text.strip()
    if (fenced := _FENCE.match(body)) is not None:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"answer is not JSON ({exc.msg}): {text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"answer is not a JSON object: {text[:200]!r}")
    try:
        answer = JudgeAnswer.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"answer does not match the schema "
                         f"({validation_problems(exc, 'answer')})") from exc
    if answer.correct_expert not in experts:
        raise ValueError(f"correct_expert {answer.correct_expert!r} is not an expert")
    if answer.routing_error == (answer.correct_expert == route):
        raise ValueError(f"routing_error={answer.routing_error} contradicts "
                         f"correct_expert={answer.correct_expert!r} for route {route!r}")
    return answer


class OpenAIJudge:
    """An LLM judge behind an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, config: JudgeConfig) -> None:
        import os

        import httpx

        self.config = config
        self.name = f"openai:{config.model}"
        from tasks.core.workload import describe_experts

        fallback = config.fallback_expert
        self.system = (PROMPTS / "judge_system.txt").read_text().format(
            expert_list=describe_experts(config.experts, config.workload()),
            fallback_line=f'"{fallback}" is for requests that no other expert covers.\n'
            if fallback else "")
        self.user = (PROMPTS / "judge_user.txt").read_text()
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get(config.api_key_env):
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=config.endpoint_url.rstrip("/") + "/",
                                   headers=headers, timeout=httpx.Timeout(config.timeout_s),
                                   limits=httpx.Limits(max_connections=config.concurrency))

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx
        from tenacity import (
            retry,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, httpx.HTTPStatusError):
                return exc.response.status_code == 429 or exc.response.status_code >= 500
            return isinstance(exc, httpx.TransportError)  # timeouts, refused connections

        @retry(retry=retry_if_exception(transient), reraise=True,
               stop=stop_after_attempt(self.config.max_retries + 1),
               wait=wait_exponential_jitter(initial=self.config.backoff_s,
                                            max=max(self.config.backoff_s * 16, 0.001),
                                            jitter=self.config.backoff_s / 2))
        def call() -> dict[str, Any]:
            response = self.client.post("chat/completions", json=payload)
            response.raise_for_status()
            return response.json()

        return call()

    def judge_one(self, record_id: str, query: str, route: str, comment: str | None) -> Verdict:
        import httpx

        payload = {
            "model": self.config.model, "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [{"role": "system", "content": self.system},
                         {"role": "user", "content": self.user.format(
                             query=query, route=route, comment=comment or "(none)")}],
        }
        base = {"record_id": record_id, "judge": self.name, "route": route}
        try:
            body = self._post(payload)
        except httpx.HTTPStatusError as exc:
            return Verdict(**base, error=f"HTTP {exc.response.status_code}: "
                                         f"{exc.response.text[:200]}")
        except (httpx.HTTPError, ValueError) as exc:  # transport errors, a non-JSON body
            return Verdict(**base, error=f"{type(exc).__name__}: {exc}"[:300])
        try:
            text = body["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("message content is not a string")
        except (KeyError, IndexError, TypeError) as exc:
            return Verdict(**base, error=f"not a chat completion ({exc!r}): "
                                         f"{json.dumps(body)[:200]}")
        try:
            answer = parse_answer(text, route, self.config.experts)
        except ValueError as exc:
            return Verdict(**base, error=str(exc)[:500])
        return Verdict(**base, routing_error=answer.routing_error, expert=answer.correct_expert,
                       confidence=answer.confidence, rationale=answer.rationale)

    def judge(self, records: pd.DataFrame) -> list[Verdict]:
        rows = list(records.itertuples(index=False))
        comments = [None if _missing(getattr(r, "feedback_comment", None))
                    else str(r.feedback_comment) for r in rows]
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            return list(pool.map(lambda rc: self.judge_one(rc[0].id, rc[0].query, rc[0].route,
                                                           rc[1]),
                                 zip(rows, comments, strict=True)))

    def close(self) -> None:
        self.client.close()


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def judge_name(config: JudgeConfig) -> str:
    return f"knn-vote(k={config.k})" if config.backend == "knn-vote" else f"openai:{config.model}"


# ------------------------------------------------------------------------------------ the stage


def attribute(config: JudgeConfig) -> AttributeResult:
    """Index the window, judge its new negatives and fill the review queue.

    Args:
        config: the window, the judge and the queue settings.

    Returns:
        Counts of the run, and the oldest pending items for the UI.
    """
    import numpy as np

    from tasks.curation.vectors import open_index
    from tasks.ingest.store import load_store

    name = judge_name(config)
    window = load_store(config.home, workload_id=config.workload_id, start=config.start,
                        end=config.end)
    store = ReviewStore(config.home, config.workload_id)
    with store.lock():
        decisions = store.decisions()
        labels = confirmed_labels(window, decisions, config.experts)
        rated = window["rating"].notna() | window["id"].isin(decisions)
        scope = window if config.index_scope == "all" else window[rated]
        with open_index(config.workload_id, home=config.home, url=config.qdrant_url) as index:
            added = index.index_records(scope)
            label_of = dict(zip(labels["id"], zip(labels["label"], labels["label_source"],
                                                  strict=True), strict=True))
            changed = index.update_payloads({
                rid: {"label": label_of.get(rid, (None, None))[0],
                      "label_source": label_of.get(rid, (None, None))[1]}
                for rid in scope["id"]})

            negatives = window[(window["rating"] == -1).fillna(False)]
            previous = store.judgements()

            def tries(rid: str) -> int:  # this judge's runs on the record that gave no answer
                last = previous.get(rid) or {}
                return int(last.get("attempt") or 1) if (
                    last.get("judge") == name and last.get("error")) else 0

            def due(rid: str) -> bool:
                last = previous.get(rid) or {}
                return last.get("judge") != name or 0 < tries(rid) < config.max_attempts

            # astype(bool): an empty window's map is an object Series, which pandas would
            # read as a list of column names
            todo = negatives if config.rejudge else negatives[
                negatives["id"].map(due).astype(bool)]
            retried = int(todo["id"].map(tries).astype(bool).sum())
            if config.backend == "knn-vote":
                verdicts = knn_vote(index, todo, config)
            else:
                judge = OpenAIJudge(config)
                try:
                    verdicts = judge.judge(todo)
                finally:
                    judge.close()
            for verdict in verdicts:
                verdict.attempt = tries(verdict.record_id) + 1
            at = now_iso()
            store.append("judgements", [{**v.model_dump(), "judged_at": at} for v in verdicts])

            queue = store.queue()
            by_id = window.set_index("id")
            rng = np.random.default_rng([config.seed, len(queue)])
            items: list[dict[str, Any]] = []

            def enqueue(rid: str, reason: str, **extra: Any) -> None:
                if rid in queue or rid in decisions:
                    return
                row = by_id.loc[rid]
                queue[rid] = item = {
                    "record_id": rid, "reason": reason, "query": row["query"],
                    "route": row["route"], "timestamp": row["timestamp"].isoformat(),
                    "rating": None if _missing(row["rating"]) else int(row["rating"]),
                    "comment": None if _missing(row["feedback_comment"])
                    else str(row["feedback_comment"]),
                    "judge": name, "enqueued_at": at, **extra}
                items.append(item)

            for verdict in verdicts:
                if verdict.routing_error:
                    enqueue(verdict.record_id, "judge_flagged")
                elif config.audit_fraction and rng.random() < config.audit_fraction:
                    enqueue(verdict.record_id, "audit")

            unlabelled = [rid for rid in scope["id"] if rid not in label_of]
            novel: list[tuple[float, str]] = []
            if unlabelled:
                best = index.search(index.vectors(unlabelled), 1, labelled=True)
                for rid, hits in zip(unlabelled, best, strict=True):
                    score = hits[0].score if hits else -1.0
                    if score < config.novelty_threshold:
                        novel.append((score, rid))
            for score, rid in sorted(novel)[:config.max_novel]:
                enqueue(rid, "novel", nearest_labelled_similarity=round(score, 4))
        store.append("queue", items)

        judged = store.judgements()
        window_verdicts = [judged[rid] for rid in negatives["id"] if rid in judged]
        pending = store.pending()
    verdict_of = judged
    preview = [{"record_id": i["record_id"], "reason": i["reason"], "query": i["query"],
                "route": i["route"],
                "judge_expert": (verdict_of.get(i["record_id"]) or {}).get("expert"),
                "judge_confidence": (verdict_of.get(i["record_id"]) or {}).get("confidence")}
               for i in pending[:config.preview_items]]
    queued = {reason: sum(i["reason"] == reason for i in items)
              for reason in ("judge_flagged", "audit", "novel")}
    return AttributeResult(
        workload_id=config.workload_id, judge=name, records_in_window=len(window),
        experts=list(config.experts),
        indexed=added, labels_updated=changed, negative=len(negatives),
        judged_now=len(verdicts), retried=retried,
        flagged=sum(v.get("routing_error") is True for v in window_verdicts),
        abstained=sum(v.get("routing_error") is None and not v.get("error")
                      for v in window_verdicts),
        errors=sum(bool(v.get("error")) for v in window_verdicts),
        queued=queued, novel=len(novel), pending=len(pending), preview=preview)


def main(argv: list[str] | None = None) -> int:
    from tasks.core.settings import parse_config

    config = parse_config(JudgeConfig, argv, prog="flywheel attribute",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    result = attribute(config)
    print(f"attribute {result.workload_id} with {result.judge}: "
          f"{result.records_in_window} records in window, {result.indexed} newly indexed")
    print(f"  negative {result.negative:>6}  judged now {result.judged_now}, "
          f"flagged {result.flagged}, abstained {result.abstained}, errors {result.errors} "
          f"(retried now {result.retried}; the next run retries errors up to "
          f"{config.max_attempts} runs in all)")
    print(f"  queued   {sum(result.queued.values()):>6}  {result.queued}; "
          f"novel {result.novel}; pending {result.pending}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
