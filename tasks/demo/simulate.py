"""Traffic simulator: turn CLINC150 queries into a router agent's logs and its users' feedback.

Run it::

    flywheel simulate --days 3 --records-per-day 2500 --seed 0 --home /tmp/flywheel
    python -m tasks.demo.simulate --file-format parquet --start-date 2026-12-01

It stands in for the agent in production (the "teacher", a 70B router) and writes, for each
simulated day ``D``, into the landing folder of the flywheel home:

* ``landing/<workload_id>-<D>.<ext>``: the log records of day ``D`` (the contract of
  :mod:`tasks.core.records`), in timestamp order, some with their feedback inside, a few duplicated
  (at-least-once delivery) and a few malformed (for validation to quarantine).
* ``landing/<workload_id>-feedback-<D>.<ext>``: feedback that arrived on day ``D`` as its own event
  (``{"kind": "feedback", "id": ..., "timestamp": ..., "rating": ..., "source": "user"}``), about
  records of day ``D`` or the day before; the last file can fall one day after the window.

``<ext>`` is ``jsonl``, ``jsonl.gz`` or ``parquet``. A Parquet file holds one row per line of the
JSONL equivalent, in a single string column ``record`` containing that line's JSON text verbatim
(malformed lines included), so every format carries exactly the same bytes per record.

What only the simulator knows (each record's true expert, the CLINC150 intent and split, which
lines it broke) goes to ``simulator/truth-<workload_id>.parquet``, outside the landing folder: the
pipeline never reads it; a report may, labelled "simulation oracle".

Everything is a function of the config: the same settings write byte-identical files, and day ``d``
does not depend on how many days are simulated after it.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.core.config import Paths, get_paths
from tasks.core.files import write_bytes_atomic, write_table_atomic
from tasks.core.records import SCHEMA_VERSION, make_request, make_response
from tasks.demo.clinc150 import DOMAIN_EXPERTS, EXPERTS, FALLBACK_EXPERT

if TYPE_CHECKING:
    import numpy as np

#: Experts the teacher mixes up, each with its likely wrong answers. Pairs come from overlapping
#: CLINC150 domains (a card payment is both banking and credit cards); out-of-scope queries are the
#: hardest, because a 70B model would rather pick a plausible expert than admit none fits.
CONFUSABLE: dict[str, tuple[str, ...]] = {
    "banking": ("credit_cards",),
    "credit_cards": ("banking",),
    "home": ("utility", "kitchen_and_dining"),
    "kitchen_and_dining": ("home",),
    "utility": ("home", "small_talk"),
    "travel": ("auto_and_commute",),
    "auto_and_commute": ("travel",),
    "work": ("meta",),
    "meta": ("work",),
    "small_talk": (FALLBACK_EXPERT, "utility"),
    FALLBACK_EXPERT: ("small_talk", "utility", "meta"),
}

#: Ways a line can be broken, in the order they are handed out (so every kind shows up).
MALFORMED_KINDS: tuple[str, ...] = (
    "truncated_json",
    "missing_id",
    "rating_zero",
    "rating_string",
    "no_tool_call",
    "latency_string",
    "bad_timestamp",
)

_COMMENTS_WRONG_ROUTE = (
    "Wrong department.",
    "That's not what I asked about.",
    "It sent me to the wrong team.",
    "The answer had nothing to do with my question.",
)
_COMMENTS_RIGHT_ROUTE = (
    "Too slow.",
    "The answer was incomplete.",
    "Didn't solve my problem.",
    "The information looks outdated.",
    "Too long, I just wanted a yes or no.",
)
_FIRST_NAMES = ("jane", "omar", "li", "maria", "kofi", "anna", "raj", "sven")
_LAST_NAMES = ("doe", "haddad", "wei", "garcia", "mensah", "novak", "patel", "berg")

_DAY_MS = 86_400_000


class SimulateConfig(BaseModel):
    """Settings of ``flywheel simulate``; every field is a ``--flag``."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0, description="Random seed; the same settings write the same bytes")
    days: int = Field(3, ge=1, le=365, description="Number of consecutive days to simulate")
    records_per_day: int = Field(2500, ge=1, le=1_000_000,
                                 description="Log records the agent serves per day")
    start_date: date = Field(date(2026, 11, 20),
                             description="First simulated day (UTC); day d is start_date + d")
    workload_id: str = Field("router", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.]+$",
                             description="Agent node that writes the logs (also the file prefix)")
    client_ids: list[str] = Field(["hr-portal", "it-helpdesk", "finance-app"], min_length=1,
                                  max_length=100,
                                  description="Applications (tenants) that call the agent")
    teacher_model: str = Field("teacher-70b", min_length=1,
                               description="Model name recorded in the logs")
    teacher_accuracy: float = Field(0.96, ge=0.0, le=1.0,
                                    description="Fraction of queries the teacher routes correctly")
    oos_fraction: float = Field(0.07, ge=0.0, le=0.5,
                                description="Share of traffic that is out-of-scope (CLINC150 oos)")
    oos_difficulty: float = Field(4.0, ge=1.0, le=20.0,
                                  description="How many times likelier the teacher errs on an "
                                              "out-of-scope query than on an in-scope one")
    confusable_share: float = Field(0.8, ge=0.0, le=1.0,
                                    description="Of teacher errors, the share that picks a "
                                                "confusable neighbour (else any other expert)")
    drift_per_day: float = Field(0.08, ge=0.0, le=1.0,
                                 description="Log-scale change per day of each domain's traffic "
                                             "share (0: a stationary mix)")
    feedback_rate: float = Field(0.15, ge=0.0, le=1.0,
                                 description="Fraction of records a user rates")
    p_negative_if_wrong: float = Field(0.85, ge=0.0, le=1.0,
                                       description="P(thumbs-down | the route was wrong)")
    p_negative_if_right: float = Field(0.38, ge=0.0, le=1.0,
                                       description="P(thumbs-down | the route was right): users "
                                                   "also dislike slow or unhelpful answers")
    comment_rate: float = Field(0.5, ge=0.0, le=1.0,
                                description="Fraction of thumbs-down ratings with a comment")
    late_feedback_fraction: float = Field(0.3, ge=0.0, le=1.0,
                                          description="Fraction of ratings that arrive later as "
                                                      "separate feedback events")
    late_feedback_median_s: float = Field(7200.0, gt=0, le=7 * 86400,
                                          description="Median delay of a late rating (seconds)")
    malformed_rate: float = Field(0.004, ge=0.0, le=0.5,
                                  description="Fraction of records written broken")
    duplicate_rate: float = Field(0.01, ge=0.0, le=0.5,
                                  description="Fraction of records delivered twice")
    pii_rate: float = Field(0.02, ge=0.0, le=1.0,
                            description="Fraction of queries carrying a (fake) e-mail, phone "
                                        "number or employee id, for redaction to remove")
    latency_median_ms: float = Field(1800.0, gt=0, le=600_000,
                                     description="Median teacher latency (lognormal), ms")
    latency_sigma: float = Field(0.35, ge=0.0, le=3.0,
                                 description="Sigma of log latency (spread of the lognormal)")
    ttft_fraction: float = Field(0.5, gt=0.0, lt=1.0,
                                 description="Median time to first token as a share of latency")
    file_format: Literal["jsonl", "jsonl.gz", "parquet"] = Field(
        "jsonl", description="Landing file format; parquet has one string column 'record'")
    home: Path | None = Field(None, description="Flywheel home folder (default $FLYWHEEL_HOME)")

    @field_validator("client_ids")
    @classmethod
    def _distinct_clients(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or not all(v.strip() for v in value):
            raise ValueError("client_ids must be distinct, non-empty names")
        return value


class SimulateResult(BaseModel):
    """What one simulation wrote; counts are over all days."""

    files: list[str] = Field(description="Landing files written (logs, then feedback events)")
    records: int = Field(description="Distinct well-formed records")
    duplicates: int = Field(description="Extra copies of well-formed records")
    malformed: int = Field(description="Broken lines (each replaces one record)")
    feedback_inline: int = Field(description="Well-formed records with feedback inside")
    feedback_late: int = Field(description="Separate feedback events")
    negatives: int = Field(description="Thumbs-down ratings, inline and late")
    with_pii: int = Field(description="Well-formed records whose query carries fake PII")
    teacher_accuracy_observed: float = Field(description="Teacher accuracy over well-formed "
                                                         "records (simulation oracle)")
    truth_path: str = Field(description="Gold labels; never read by the pipeline")


def gold_labels(paths: Paths, workload_id: str = "router") -> Path:
    """Where the simulator keeps every record's gold expert (Parquet: id, gold_expert, ...): what
    the demo hands the simulated reviewer and the teacher's oracle figure as ``gold_labels``;
    the pipeline never looks for it by itself."""
    return paths.simulator / f"truth-{workload_id}.parquet"


def _error_rates(config: SimulateConfig) -> tuple[float, float]:
    """Per-query error probability of the teacher: (in-scope, out-of-scope).

    Solves ``(1 - w) * e + w * min(1, k * e) = 1 - accuracy`` for ``e`` with ``w`` the oos share
    and ``k`` its difficulty, so the overall accuracy comes out as configured.
    """
    target, w, k = 1.0 - config.teacher_accuracy, config.oos_fraction, config.oos_difficulty
    e_in = target / ((1 - w) + w * k)
    if k * e_in <= 1:
        return e_in, k * e_in
    # Every oos query is already wrong; the rest of the errors fall on in-scope queries.
    return (target - w) / (1 - w), 1.0


def _teacher_routes(config: SimulateConfig, gold: np.ndarray) -> np.ndarray:
    """The teacher's route for every CLINC150 example (index into EXPERTS).

    Decided once per query, not per request: the teacher decodes greedily, so the same question
    asked twice gets the same answer and its errors stick to the hard queries.
    """
    import numpy as np

    rng = np.random.default_rng([config.seed, 1])
    e_in, e_oos = _error_rates(config)
    oos = EXPERTS.index(FALLBACK_EXPERT)
    errs = rng.random(len(gold)) < np.where(gold == oos, e_oos, e_in)
    to_neighbour = rng.random(len(gold)) < config.confusable_share
    pick = rng.random(len(gold))
    routes = gold.copy()
    n = len(EXPERTS)
    for i in np.flatnonzero(errs):
        g = int(gold[i])
        if to_neighbour[i]:
            options = [EXPERTS.index(e) for e in CONFUSABLE[EXPERTS[g]]]
        else:
            options = [j for j in range(n) if j != g]
        routes[i] = options[int(pick[i] * len(options))]
    return routes


def _domain_weights(config: SimulateConfig, day: int) -> np.ndarray:
    """Traffic share of each expert on ``day``: oos fixed, domains drifting along a random walk
    direction (seeded once) so the mix moves a little every day."""
    import numpy as np

    direction = np.random.default_rng([config.seed, 2]).normal(size=len(DOMAIN_EXPERTS))
    base = np.exp(config.drift_per_day * day * direction)
    domains = (1.0 - config.oos_fraction) * base / base.sum()
    return np.append(domains, config.oos_fraction)  # EXPERTS order: domains, then fallback


def _iso(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with a ``Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _pii_suffix(rng: np.random.Generator) -> str:
    """A fake piece of personal data a user might paste into a question."""
    first = _FIRST_NAMES[int(rng.integers(len(_FIRST_NAMES)))]
    last = _LAST_NAMES[int(rng.integers(len(_LAST_NAMES)))]
    kind = int(rng.integers(3))
    if kind == 0:
        return f" - reply to {first}.{last}@example.com"
    if kind == 1:
        return f" (call me at +1-555-{int(rng.integers(100, 1000))}-{int(rng.integers(10**4)):04d})"
    return f" my employee id is E{int(rng.integers(10**6)):06d}, {first.title()} {last.title()}"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _break(record: dict[str, Any], kind: str) -> str:
    """One malformed line: ``record`` broken the way ``kind`` says."""
    record = json.loads(_dumps(record))  # deep copy
    if kind == "truncated_json":
        line = _dumps(record)
        return line[: len(line) // 2]
    if kind == "missing_id":
        del record["id"]
    elif kind == "rating_zero":
        record["feedback"] = {"rating": 0, "source": "user"}
    elif kind == "rating_string":
        record["feedback"] = {"rating": "thumbs-up", "source": "user"}
    elif kind == "no_tool_call":
        message = record["response"]["choices"][0]["message"]
        message["tool_calls"] = []
        message["content"] = None
        record["response"]["choices"][0]["finish_reason"] = "stop"
    elif kind == "latency_string":
        record["latency_ms"] = f"{record['latency_ms']} ms"
    elif kind == "bad_timestamp":
        record["timestamp"] = "yesterday"
    else:  # pragma: no cover - MALFORMED_KINDS is the closed list
        raise ValueError(kind)
    return _dumps(record)


def _simulate_day(config: SimulateConfig, day: int, gold: np.ndarray, teacher: np.ndarray,
                  by_expert: list[np.ndarray], malformed_offset: int
                  ) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[dict[str, Any]]]:
    """Lines of one day's log file, its late feedback events and its truth rows.

    Returns ``(log_lines, feedback_events, truth)``; lines are ``(delivery_ms, text)``.
    """
    import numpy as np

    from tasks.demo.clinc150 import examples

    data = examples()
    rng = np.random.default_rng([config.seed, 3, day])
    n = config.records_per_day
    day_start = datetime.combine(config.start_date + timedelta(days=day), datetime.min.time(),
                                 tzinfo=UTC)
    day_ms = int(day_start.timestamp() * 1000)

    # Which query: an expert by the day's mix, then a CLINC150 example of it (with replacement).
    experts = rng.choice(len(EXPERTS), size=n, p=_domain_weights(config, day))
    sizes = np.array([len(pool) for pool in by_expert])
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    picks = np.concatenate(by_expert)[starts[experts] + rng.integers(0, sizes[experts])]

    # When: most traffic in office hours (about 08-20 UTC), some at any time; sorted in the day.
    office = rng.random(n) < 0.8
    when = np.where(office, rng.normal(14 * 3600_000, 3 * 3600_000, n), rng.random(n) * _DAY_MS)
    when = np.sort(np.clip(when, 0, _DAY_MS - 1).astype(np.int64))

    clients = rng.choice(len(config.client_ids), size=n,
                         p=rng.dirichlet(np.full(len(config.client_ids), 5.0)))
    latency = config.latency_median_ms * np.exp(config.latency_sigma * rng.normal(size=n))
    ttft = np.minimum(latency * config.ttft_fraction * np.exp(0.2 * rng.normal(size=n)),
                      latency * 0.95)
    rated = rng.random(n) < config.feedback_rate
    correct = teacher[picks] == gold[picks]
    negative = rng.random(n) < np.where(correct, config.p_negative_if_right,
                                        config.p_negative_if_wrong)
    late = rated & (rng.random(n) < config.late_feedback_fraction)
    with_comment = rng.random(n) < config.comment_rate
    comment_pick = rng.integers(0, 1000, size=n)
    delay_ms = (config.late_feedback_median_s * 1000 * np.exp(rng.normal(size=n))).astype(np.int64)
    delay_ms = np.maximum(delay_ms, 30_000)  # nobody rates within 30 s of asking
    pii = rng.random(n) < config.pii_rate
    malformed = rng.random(n) < config.malformed_rate
    duplicated = ~malformed & (rng.random(n) < config.duplicate_rate)
    retry_ms = rng.integers(1_000, 600_000, size=n)  # a retried delivery comes a bit later
    ids = rng.bytes(16 * n)
    call_ids = rng.bytes(12 * n)

    log_lines: list[tuple[int, str]] = []
    events: list[tuple[int, str]] = []
    truth: list[dict[str, Any]] = []
    n_malformed = 0
    for i in range(n):
        example = data[int(picks[i])]
        query = example.query + (_pii_suffix(rng) if pii[i] else "")
        record_id = str(uuid.UUID(bytes=ids[16 * i:16 * i + 16], version=4))
        route = EXPERTS[int(teacher[picks[i]])]
        ts = day_ms + int(when[i])
        prompt_tokens = 190 + math.ceil(len(query) / 4)  # system prompt + tool schema + question
        completion_tokens = 14 + len(route) // 4
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "id": record_id,
            "timestamp": _iso(ts),
            "workload_id": config.workload_id,
            "client_id": config.client_ids[int(clients[i])],
            "model": config.teacher_model,
            "request": make_request(query),
            "response": make_response(route, "call_" + call_ids[12 * i:12 * i + 12].hex()),
            "latency_ms": round(float(latency[i]), 1),
            "ttft_ms": round(float(ttft[i]), 1),
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        rating = (-1 if negative[i] else 1) if rated[i] else None
        feedback: dict[str, Any] | None = None
        if rating is not None:
            feedback = {"rating": rating}
            if rating < 0 and with_comment[i]:
                canned = _COMMENTS_RIGHT_ROUTE if correct[i] else _COMMENTS_WRONG_ROUTE
                feedback["comment"] = canned[int(comment_pick[i]) % len(canned)]
            feedback["source"] = "user"
        broken = None
        if malformed[i]:
            broken = MALFORMED_KINDS[(malformed_offset + n_malformed) % len(MALFORMED_KINDS)]
            n_malformed += 1
            if feedback is not None and broken not in ("rating_zero", "rating_string"):
                record["feedback"] = feedback
            log_lines.append((ts, _break(record, broken)))
        else:
            if feedback is not None and late[i]:
                event_ms = ts + int(delay_ms[i])
                events.append((event_ms, _dumps({"kind": "feedback", "id": record_id,
                                                 "timestamp": _iso(event_ms), **feedback})))
            elif feedback is not None:
                record["feedback"] = feedback
            line = _dumps(record)
            log_lines.append((ts, line))
            if duplicated[i]:
                log_lines.append((ts + int(retry_ms[i]), line))
        truth.append({
            "id": record_id, "date": (config.start_date + timedelta(days=day)).isoformat(),
            "timestamp": _iso(ts), "client_id": record["client_id"], "query": query,
            "intent": example.intent, "clinc_split": example.split,
            "gold_expert": example.expert, "teacher_route": route, "teacher_correct":
            bool(correct[i]), "rating": rating, "feedback_late": bool(late[i]) and not broken,
            "malformed": broken, "duplicated": bool(duplicated[i]), "pii": bool(pii[i]),
        })
    log_lines.sort(key=lambda item: item[0])  # stable: a duplicate never precedes its original
    return log_lines, events, truth


def _write_atomic(path: Path, lines: list[str], file_format: str) -> None:
    """Write ``lines`` in ``file_format`` to a temporary file beside ``path``, then rename it, so
    ingestion never sees half a file and a rerun replaces the old one in one step."""
    if file_format == "parquet":
        import pyarrow as pa

        write_table_atomic(pa.table({"record": pa.array(lines, type=pa.string())}), path)
        return
    payload = "".join(line + "\n" for line in lines).encode("utf-8")
    if file_format == "jsonl.gz":
        buffer = io.BytesIO()
        # mtime=0 and no file name in the header: the same lines give the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
            gz.write(payload)
        payload = buffer.getvalue()
    write_bytes_atomic(path, payload)


def simulate(config: SimulateConfig) -> SimulateResult:
    """Write ``config.days`` days of logs and late feedback to the landing folder.

    Args:
        config: the simulation settings; ``config.home`` picks the flywheel home.

    Returns:
        The files written and the counts a reader checks the funnel against.
    """
    import numpy as np
    import pyarrow as pa

    from tasks.demo.clinc150 import examples

    paths = get_paths(config.home)
    data = examples()
    gold = np.array([EXPERTS.index(e.expert) for e in data])
    by_expert = [np.flatnonzero(gold == k) for k in range(len(EXPERTS))]
    teacher = _teacher_routes(config, gold)
    ext = config.file_format

    files: list[str] = []
    events_by_date: dict[str, list[tuple[int, str]]] = {}
    truth: list[dict[str, Any]] = []
    malformed_offset = 0
    for day in range(config.days):
        lines, events, rows = _simulate_day(config, day, gold, teacher, by_expert,
                                            malformed_offset)
        malformed_offset += sum(1 for r in rows if r["malformed"])
        day_name = (config.start_date + timedelta(days=day)).isoformat()
        path = paths.landing / f"{config.workload_id}-{day_name}.{ext}"
        _write_atomic(path, [text for _, text in lines], ext)
        files.append(str(path))
        for event_ms, text in events:  # filed by the day the rating arrived
            events_by_date.setdefault(_iso(event_ms)[:10], []).append((event_ms, text))
        truth.extend(rows)
    for event_date in sorted(events_by_date):
        events = sorted(events_by_date[event_date], key=lambda item: item[0])
        path = paths.landing / f"{config.workload_id}-feedback-{event_date}.{ext}"
        _write_atomic(path, [text for _, text in events], ext)
        files.append(str(path))

    paths.simulator.mkdir(parents=True, exist_ok=True)
    truth_path = gold_labels(paths, config.workload_id)
    table = pa.Table.from_pylist(truth, schema=pa.schema([
        ("id", pa.string()), ("date", pa.string()), ("timestamp", pa.string()),
        ("client_id", pa.string()), ("query", pa.string()), ("intent", pa.string()),
        ("clinc_split", pa.string()), ("gold_expert", pa.string()),
        ("teacher_route", pa.string()), ("teacher_correct", pa.bool_()),
        ("rating", pa.int8()), ("feedback_late", pa.bool_()), ("malformed", pa.string()),
        ("duplicated", pa.bool_()), ("pii", pa.bool_()),
    ]))
    write_table_atomic(table, truth_path)

    good = [r for r in truth if r["malformed"] is None]
    return SimulateResult(
        files=files,
        records=len(good),
        duplicates=sum(r["duplicated"] for r in good),
        malformed=len(truth) - len(good),
        feedback_inline=sum(r["rating"] is not None and not r["feedback_late"] for r in good),
        feedback_late=sum(r["feedback_late"] for r in good),
        negatives=sum(r["rating"] == -1 for r in good),
        with_pii=sum(r["pii"] for r in good),
        teacher_accuracy_observed=round(
            sum(r["teacher_correct"] for r in good) / len(good), 4) if good else 0.0,
        truth_path=str(truth_path),
    )


def main(argv: list[str] | None = None) -> int:
    """``flywheel simulate``: parse the settings, simulate, print a summary."""
    from tasks.core.settings import parse_config

    config = parse_config(SimulateConfig, argv, "flywheel simulate",
                          description=__doc__.splitlines()[0])
    result = simulate(config)
    rated = result.feedback_inline + result.feedback_late
    print(f"simulated {config.days} day(s) from {config.start_date} "
          f"for workload {config.workload_id!r} (seed {config.seed})")
    print(f"  records   {result.records:>8}  well-formed, distinct")
    print(f"  rated     {rated:>8}  ({result.feedback_inline} inline, "
          f"{result.feedback_late} late), {result.negatives} negative")
    print(f"  noise     {result.duplicates:>8}  duplicates, {result.malformed} malformed, "
          f"{result.with_pii} with PII")
    print(f"  teacher accuracy {result.teacher_accuracy_observed:.2%} (simulation oracle)")
    print(f"  files     {len(result.files):>8}  in {Path(result.files[0]).parent}")
    print(f"  truth     {result.truth_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
