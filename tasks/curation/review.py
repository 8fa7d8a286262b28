"""SME review: subject-matter experts confirm or correct what the judge flagged, and label a
random sample of the teacher's traffic.

Run it::

    flywheel review --mode simulated --workload-id router        # the stage (default action: run)
    flywheel review --start 2026-11-20 --end 2026-11-27 --traffic-audit-size 40
    flywheel review export --out review.csv                        # pending items, for experts
    flywheel review import review.csv --reviewer alice             # their answers back in
    flywheel review status
    flywheel review export --workload-id desk --workloads-dir ./workloads --out desk.csv

Everything lives in ``<home>/review/<workload_id>/`` as append-only JSON lines, so no decision is
ever lost and a rerun is harmless:

* ``judgements.jsonl``: the judge's verdict per badly rated record (:mod:`tasks.curation.judge`).
* ``queue.jsonl``: what experts are asked about, one item per record, with its reason:
  ``judge_flagged`` (the judge says the route was wrong), ``audit`` (a random share of the records
  the judge cleared, so its agreement with experts can be measured both ways), ``novel`` (far
  from every labelled query) or ``traffic_audit`` (below).
* ``traffic_audit.jsonl``: the traffic audit, one line per sampled record.
* ``decisions.jsonl``: experts' answers: the expert the query should have gone to, or ``discard``
  (unusable). The latest answer per record wins, and an expert's answer always overrides the judge
  and the user's thumbs.
* ``calibration.jsonl``: the judge measured against the experts, one line per review run.

The first three reasons are all chosen by the teacher's failure signals (a thumbs-down, novelty),
so the teacher's accuracy on them is low by construction. The *traffic audit* is what grades the
teacher (:func:`tasks.evaluation.evaluate.teacher_baseline`): each review run draws a seeded random
sample of ``traffic_audit_size`` records of the window that the production teacher routed, whatever
their feedback (:func:`draw_traffic_audit`). It has its own budget beside ``sme_capacity``: experts
are asked about up to ``sme_capacity`` items of the other reasons and ``traffic_audit_size`` traffic
audit items per cycle, so a backlog of flagged records never starves the unbiased sample (nor the
other way round). A traffic-audit item needs an expert's own label: the UI's "accept the judge's
labels" does not apply to it (the judge would vouch for the teacher).

Reviews are never waited for: a cycle uses what is decided when it curates, and answers that come
in later count in the next cycle. Three ways in: the Airflow UI (a human-in-the-loop task of the
``flywheel_cycle`` DAG, applied by :func:`apply_ui_response`), a CSV/JSONL round-trip
(:func:`export_queue` / :func:`import_decisions`), and, for the demo, a *simulated* SME that
answers from the simulator's gold labels (``source="simulated-sme"``; a simulation, not a person).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from tasks.core.clock import now_iso
from tasks.core.config import get_paths
from tasks.core.files import atomic_path, file_lock, write_jsonl_atomic
from tasks.core.workload import WorkloadSettings, teacher_models

if TYPE_CHECKING:
    import pandas as pd

DISCARD = "discard"
SIMULATED_SOURCE = "simulated-sme"
SIMULATED_REVIEWER = "simulated-sme (simulation oracle: simulator gold labels)"
TRAFFIC_AUDIT = "traffic_audit"
REASONS = ("judge_flagged", "audit", "novel", TRAFFIC_AUDIT)
#: Columns of an export; experts fill ``label`` (an expert or ``discard``) and may add a ``note``.
EXPORT_COLUMNS = ("record_id", "reason", "query", "route", "judge_expert", "judge_confidence",
                  "judge_rationale", "label", "note")
#: Options of the Airflow UI review task.
UI_ACCEPT = "Accept the judge's labels"
UI_ONLY_LINES = "Apply only the labels typed below"
UI_LATER = "Decide later"
UI_OPTIONS = [UI_ACCEPT, UI_ONLY_LINES, UI_LATER]


class ReviewError(ValueError):
    """A review file or answer that cannot be applied; the message lists every problem."""


# ------------------------------------------------------------------------------------ storage


class ReviewStore:
    """The review folder of one workload: judgements, queue, decisions, calibration."""

    def __init__(self, home: str | os.PathLike[str] | None, workload_id: str) -> None:
        self.paths = get_paths(home)
        self.root = self.paths.home / "review" / workload_id
        self.root.mkdir(parents=True, exist_ok=True)
        self.workload_id = workload_id

    def lock(self):
        return file_lock(self.root / ".lock")

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.jsonl"

    def read(self, name: str) -> list[dict[str, Any]]:
        path = self._path(name)
        if not path.exists():
            return []
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ReviewError(f"{path}: line {n} is not JSON ({exc.msg})") from exc
        return rows

    def append(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with open(self._path(name), "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                                 for r in rows))
            handle.flush()
            os.fsync(handle.fileno())

    def queue(self) -> dict[str, dict[str, Any]]:
        """Record id -> queue item (the first time a record was queued)."""
        items: dict[str, dict[str, Any]] = {}
        for row in self.read("queue"):
            items.setdefault(row["record_id"], row)
        return items

    def decisions(self) -> dict[str, dict[str, Any]]:
        """Record id -> the latest decision."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.read("decisions"):
            latest[row["record_id"]] = row
        return latest

    def judgements(self) -> dict[str, dict[str, Any]]:
        """Record id -> the latest judgement (any judge)."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.read("judgements"):
            latest[row["record_id"]] = row
        return latest

    def traffic_audit(self) -> dict[str, dict[str, Any]]:
        """Record id -> its traffic-audit draw (the first): the random sample of the teacher's
        traffic, including drawn records that were already queued for another reason."""
        drawn: dict[str, dict[str, Any]] = {}
        for row in self.read("traffic_audit"):
            drawn.setdefault(row["record_id"], row)
        return drawn

    def pending(self) -> list[dict[str, Any]]:
        """Queue items without a decision, oldest first."""
        decided = self.decisions()
        return [item for rid, item in self.queue().items() if rid not in decided]


def make_decision(record_id: str, label: str, reviewer: str, source: str,
                  note: str | None = None) -> dict[str, Any]:
    return {"record_id": record_id, "label": label, "reviewer": reviewer, "source": source,
            "note": note or None, "decided_at": now_iso()}


def _check_label(label: str, experts: tuple[str, ...] | list[str]) -> str | None:
    if label == DISCARD or label in experts:
        return None
    return f"label {label!r} is not an expert ({', '.join(experts)}) nor {DISCARD!r}"


# ------------------------------------------------------------------------------------ labels


def confirmed_labels(window: pd.DataFrame, decisions: dict[str, dict[str, Any]],
                     experts: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """The ground-truth label of each record of ``window`` that has one.

    A thumbs-up makes the teacher's route the label (``feedback``); an expert's decision replaces
    it whatever the rating (``sme``), and ``discard`` removes the record. The judge alone never
    labels anything.

    Returns:
        Columns ``id``, ``label``, ``label_source``, one row per labelled record.
    """
    import pandas as pd

    good = window[(window["rating"] == 1).fillna(False) & window["route"].isin(list(experts))]
    labels = {rid: (route, "feedback") for rid, route in zip(good["id"], good["route"],
                                                             strict=True)}
    in_window = set(window["id"])
    for rid, decision in decisions.items():
        if rid not in in_window:
            continue
        if decision["label"] == DISCARD:
            labels.pop(rid, None)
        elif decision["label"] in experts:
            labels[rid] = (decision["label"], "sme")
    return pd.DataFrame([(rid, lab, src) for rid, (lab, src) in labels.items()],
                        columns=["id", "label", "label_source"])


# ------------------------------------------------------------------------------------ traffic audit


def teacher_mask(records: pd.DataFrame,
                 teacher_model: str | list[str] | None = None) -> pd.Series:
    """Which logged records the production teacher routed: those of ``teacher_model`` (one
    logged model name or several, e.g. a workload file's ``teacher_models``) where given, else
    every model not named ``flywheel-...`` (the flywheel's own students, logged by
    :mod:`tasks.serving.agent`; the same rule as :func:`tasks.curation.curate.teacher_labelled`)."""
    from tasks.core.config import STUDENT_PREFIX

    model = records["model"].astype(str)
    names = [teacher_model] if isinstance(teacher_model, str) else list(teacher_model or [])
    return model.isin(names) if names else ~model.str.startswith(STUDENT_PREFIX)


def draw_traffic_audit(store: ReviewStore, window: pd.DataFrame, size: int, seed: int,
                       teacher_model: str | list[str] | None = None
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Draw a window's traffic audit: ``size`` of the teacher's records at random, whatever their
    feedback.

    The frame is every record of ``window`` the production teacher routed (:func:`teacher_mask`)
    that no earlier traffic audit drew. Records already queued for another reason, or decided,
    stay in the frame: leaving them out would leave out exactly those that negative feedback
    singled out, and the sample would overrate the teacher. Such a record joins the sample (its
    decision grades the teacher) but is never queued again; the others are queued with reason
    ``traffic_audit``. The draw is seeded by ``seed`` and the window's records, and a window is
    drawn once: a rerun over the same records (a retried task) draws nothing more. A fixed number
    per window gives every record about the same chance while traffic is steady; a window of
    heavy traffic is sampled more thinly (the estimate is not weighted by volume).

    Returns:
        The sample's rows (for ``traffic_audit.jsonl``) and the new queue items, oldest first;
        both empty when ``size`` is 0.
    """
    import zlib

    import numpy as np

    if not size or window.empty:
        return [], []
    key = (f"{window['timestamp'].min().isoformat()}/{window['timestamp'].max().isoformat()}"
           f"/{len(window)}")
    drawn = store.traffic_audit()
    if any(row.get("window") == key for row in drawn.values()):
        return [], []
    frame = window[teacher_mask(window, teacher_model) & ~window["id"].isin(list(drawn))]
    frame = frame.sort_values("id", kind="mergesort")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    picked = frame.iloc[np.sort(rng.choice(len(frame), size=min(size, len(frame)),
                                           replace=False))]
    picked = picked.sort_values(["timestamp", "id"], kind="mergesort")
    queue, decided, at = store.queue(), store.decisions(), now_iso()
    sample, items = [], []
    for row in picked.itertuples(index=False):
        already = (f"queued:{queue[row.id]['reason']}" if row.id in queue
                   else "decided" if row.id in decided else None)
        sample.append({"record_id": row.id, "window": key, "seed": seed, "drawn_at": at,
                       "model": str(row.model), "already": already})
        if already is None:
            items.append({
                "record_id": row.id, "reason": TRAFFIC_AUDIT, "query": row.query,
                "route": row.route, "model": str(row.model),
                "timestamp": row.timestamp.isoformat(),
                "rating": None if _missing(row.rating) else int(row.rating),
                "comment": None if _missing(row.feedback_comment) else str(row.feedback_comment),
                "judge": None, "enqueued_at": at})
    return sample, items


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


# ------------------------------------------------------------------------------------ calibration


def calibration(store: ReviewStore, record_ids: set[str] | None = None,
                min_agreement: float | None = None, min_items: int = 10) -> dict[str, Any]:
    """How often the judge agrees with the experts on "was the route wrong?".

    Counts records with both a judgement (not an abstention or an error) and an expert decision
    (not ``discard``), optionally only ``record_ids``.

    Returns:
        ``n``, ``agreement``, ``kappa`` (Cohen's, sklearn; None when only one answer occurs),
        ``precision`` (share of judge-flagged routing errors the experts confirm), ``recall``,
        ``label_accuracy`` (the judge's expert is the experts' one, on confirmed errors) and
        ``alarm`` (agreement below ``min_agreement`` over at least ``min_items`` records).
    """
    from sklearn.metrics import cohen_kappa_score

    if min_agreement is None:
        min_agreement = CalibrationSettings().min_judge_agreement
    judged, decided, queue = store.judgements(), store.decisions(), store.queue()
    pairs = []
    for rid, verdict in judged.items():
        decision = decided.get(rid)
        if (record_ids is not None and rid not in record_ids) or decision is None \
                or decision["label"] == DISCARD or verdict.get("routing_error") is None:
            continue
        route = verdict.get("route") or queue.get(rid, {}).get("route")
        pairs.append((bool(verdict["routing_error"]), decision["label"] != route,
                      verdict.get("expert"), decision["label"]))
    n = len(pairs)
    result: dict[str, Any] = {"n": n, "agreement": None, "kappa": None, "precision": None,
                              "recall": None, "label_accuracy": None, "alarm": False,
                              "min_agreement": min_agreement}
    if not n:
        return result
    judge = [p[0] for p in pairs]
    sme = [p[1] for p in pairs]
    result["agreement"] = round(sum(j == s for j, s in zip(judge, sme, strict=True)) / n, 4)
    if len(set(judge) | set(sme)) > 1:
        kappa = float(cohen_kappa_score(sme, judge))
        result["kappa"] = None if kappa != kappa else round(kappa, 4)  # nan: one rater constant
    flagged = [s for j, s in zip(judge, sme, strict=True) if j]
    if flagged:
        result["precision"] = round(sum(flagged) / len(flagged), 4)
    confirmed = [p for p in pairs if p[1]]
    if confirmed:
        result["recall"] = round(sum(p[0] for p in confirmed) / len(confirmed), 4)
        both = [p for p in confirmed if p[0]]
        if both:
            result["label_accuracy"] = round(sum(p[2] == p[3] for p in both) / len(both), 4)
    result["alarm"] = n >= min_items and result["agreement"] < min_agreement
    return result


def announce_calibration(cal: dict[str, Any], judge: str | None = None) -> None:
    """Print the calibration; a judge below the agreement floor is reported loudly."""
    if not cal["n"]:
        print("  judge calibration: no record both judged and reviewed yet")
        return
    print(f"  judge calibration ({judge or 'latest judges'}): n={cal['n']} "
          f"agreement={cal['agreement']} kappa={cal['kappa']} precision={cal['precision']} "
          f"recall={cal['recall']}")
    if cal["alarm"]:
        message = (f"JUDGE CALIBRATION ALARM: the judge agrees with the experts on "
                   f"{cal['agreement']:.0%} of {cal['n']} reviewed records, below the "
                   f"configured {cal['min_agreement']:.0%}; do not trust its flags until it is "
                   "fixed or replaced")
        # one banner on stderr: the task log under Airflow, the terminal from the CLI
        print("!" * 100 + f"\n!! {message}\n" + "!" * 100, file=sys.stderr)


# ------------------------------------------------------------------------------------ the stage


class CalibrationSettings(BaseModel):
    """How well the judge must agree with the experts (review, its status and curation share
    it)."""

    min_judge_agreement: float = Field(0.7, ge=0.0, le=1.0, description=(
        "Judge/expert agreement below which the judge's calibration is reported as an alarm "
        "(over at least 10 records both decided)"))


class NoveltySettings(BaseModel):
    """When a query counts as novel (the judge queues novel ones; curation counts them)."""

    novelty_threshold: float = Field(0.55, ge=-1.0, le=1.0, description=(
        "An unlabelled query whose nearest labelled query is less similar (cosine) is novel"))


class ReviewConfig(WorkloadSettings, CalibrationSettings):
    """Settings of ``flywheel review`` (the stage)."""

    home: str | None = Field(None, description="Flywheel home folder (default $FLYWHEEL_HOME "
                                               "or ~/.flywheel)")
    mode: Literal["simulated", "ui", "skip"] = Field(
        "simulated", description="Who answers this cycle: 'simulated' (an SME simulated from "
                                 "the simulator's gold labels; demo only), 'ui' (apply the "
                                 "Airflow UI task's answer), 'skip' (nobody; use what is "
                                 "decided already)")
    start: datetime | None = Field(None, description="Window start, inclusive (UTC if naive): "
                                                     "where the traffic audit samples")
    end: datetime | None = Field(None, description="Window end, exclusive (UTC if naive)")
    sme_capacity: int = Field(200, ge=0, le=1_000_000,
                              description="Items of the judge_flagged, audit and novel reasons "
                                          "the simulated SME answers per cycle, oldest first; "
                                          "the rest wait for the next cycle (the traffic audit "
                                          "has its own budget, traffic_audit_size)")
    traffic_audit_size: int = Field(
        40, ge=0, le=100_000,
        description="Records of the window the production teacher routed, sampled at random "
                    "whatever their feedback and queued for experts per run (reason "
                    "traffic_audit), beside sme_capacity; the teacher's accuracy is graded on "
                    "them alone. The simulated SME answers up to this many of them per cycle. "
                    "0: no traffic audit")
    teacher_model: str | None = Field(
        None, description="The logged model whose records are the teacher's traffic (default: "
                          "every model not named flywheel-..., the flywheel's own routers)")
    gold_labels: str | None = Field(None, description=(
        "Known right answers for logged records (Parquet: id, gold_expert), which the "
        "'simulated' reviewer answers from: a simulation's ground truth (the demo's traffic "
        "simulator), never a real agent's"))
    sme_error_rate: float = Field(0.0, ge=0.0, le=0.5,
                                  description="Share of the simulated SME's answers that are "
                                              "wrong (a random other expert)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the traffic audit's sample "
                                                         "and of the simulated SME's mistakes")
    ui_response: dict[str, Any] | None = Field(
        None, description="The Airflow UI review task's answer (chosen_options, params_input), "
                          "for mode 'ui'")
    ui_items: list[str] = Field([], max_length=10_000,
                                description="Record ids the UI task showed, for mode 'ui'")

    @model_validator(mode="after")
    def _window(self) -> ReviewConfig:
        from tasks.core.config import utc_window

        self.start, self.end = utc_window(self.start, self.end)
        return self


class ReviewResult(BaseModel):
    """What one review run did (a small XCom value)."""

    workload_id: str
    mode: str
    decided: int = Field(ge=0, description="Decisions recorded by this run")
    source: str | None = Field(None, description="Who answered: sme, airflow-ui, simulated-sme")
    pending: int = Field(ge=0, description="Queue items still waiting for an expert")
    decided_total: int = Field(ge=0, description="Records with a decision, all time")
    traffic_audit_drawn: int = Field(0, ge=0, description=(
        "Records this run drew into the traffic audit (those already queued or decided join "
        "the sample without being queued again)"))
    traffic_audit_queued: int = Field(0, ge=0, description="Of those, newly queued for experts")
    calibration: dict[str, Any]


def _truth_path(gold_labels: str | None) -> Path:
    if not gold_labels or not Path(gold_labels).expanduser().is_file():
        raise ReviewError(f"simulated review needs a file of gold labels (gold_labels: "
                          f"{gold_labels or 'not given'}); use --mode skip or ui when the logs "
                          "come from a real agent")
    return Path(gold_labels).expanduser()


def simulate_sme(store: ReviewStore, capacity: int, error_rate: float, seed: int,
                 experts: list[str], audit_capacity: int = 0,
                 gold_labels: str | None = None) -> list[dict[str, Any]]:
    """Answer pending items from the simulator's gold labels: up to ``capacity`` of the
    judge_flagged, audit and novel ones and up to ``audit_capacity`` traffic-audit ones, each
    oldest first.

    A stand-in for people, for the demo and tests: it reads ``gold_labels`` (Parquet with ``id``
    and ``gold_expert``: the traffic simulator's), which the pipeline itself never reads. Every
    decision says so (``source="simulated-sme"``).
    """
    import numpy as np
    import pandas as pd

    gold = pd.read_parquet(_truth_path(gold_labels), columns=["id", "gold_expert"]
                           ).drop_duplicates("id")
    gold_of = dict(zip(gold["id"], gold["gold_expert"], strict=True))
    rng = np.random.default_rng([seed, len(store.decisions())])
    pending = store.pending()
    chosen = {i["record_id"] for i in (
        [i for i in pending if i["reason"] != TRAFFIC_AUDIT][:capacity]
        + [i for i in pending if i["reason"] == TRAFFIC_AUDIT][:audit_capacity])}
    decisions = []
    for item in (i for i in pending if i["record_id"] in chosen):
        label = gold_of.get(item["record_id"])
        if label is None:
            continue  # not a simulated record: a simulated expert cannot know
        note = "simulation oracle"
        if error_rate and rng.random() < error_rate:
            label = str(rng.choice([e for e in experts if e != label]))
            note = "simulation oracle, deliberate mistake"
        decisions.append(make_decision(item["record_id"], label, SIMULATED_REVIEWER,
                                       SIMULATED_SOURCE, note))
    return decisions


def parse_label_lines(text: str, experts: list[str]) -> dict[str, str]:
    """``<record id> <expert|discard>`` per line (``#`` comments, blank lines ignored)."""
    labels: dict[str, str] = {}
    problems = []
    for n, line in enumerate((text or "").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            problems.append(f"line {n}: expected '<record id> <expert>', got {line!r}")
            continue
        if (problem := _check_label(parts[1], experts)) is not None:
            problems.append(f"line {n}: {problem}")
            continue
        labels[parts[0]] = parts[1]
    if problems:
        raise ReviewError("; ".join(problems))
    return labels


def apply_ui_response(store: ReviewStore, response: dict[str, Any] | None, shown: list[str],
                      experts: list[str]) -> list[dict[str, Any]]:
    """Decisions from the Airflow UI task's answer (None or "Decide later": none).

    "Accept the judge's labels" confirms the judge on every item shown (its suggested expert
    where it flagged a routing error, the teacher's route where it cleared one; novel and
    traffic-audit items need a typed label: a traffic-audit answer grades the teacher, so it must
    be an expert's own). Typed lines ``<record id> <expert|discard>`` override it for their
    records, and are all that "Apply only the labels typed below" applies.
    """
    if not response:
        return []
    chosen = response.get("chosen_options") or []
    if UI_LATER in chosen or not chosen:
        return []
    unknown = set(chosen) - set(UI_OPTIONS)
    if unknown:
        raise ReviewError(f"unknown review option(s) {sorted(unknown)}; expected {UI_OPTIONS}")
    reviewer = (response.get("responded_by_user") or {}).get("name") or "airflow-ui"
    typed = parse_label_lines((response.get("params_input") or {}).get("labels", ""), experts)
    queue, judged = store.queue(), store.judgements()
    not_queued = sorted(set(typed) - set(queue))
    if not_queued:
        raise ReviewError(f"{len(not_queued)} typed record id(s) are not in the review queue, "
                          f"e.g. {not_queued[0]!r}")
    labels: dict[str, str] = {}
    if UI_ACCEPT in chosen:
        for rid in shown:
            if queue.get(rid, {}).get("reason") == TRAFFIC_AUDIT:
                continue
            verdict = judged.get(rid) or {}
            if verdict.get("routing_error") is True and verdict.get("expert") in experts:
                labels[rid] = verdict["expert"]
            elif verdict.get("routing_error") is False and rid in queue:
                labels[rid] = queue[rid]["route"]
    labels.update(typed)
    return [make_decision(rid, label, reviewer, "airflow-ui") for rid, label in labels.items()]


def review(config: ReviewConfig) -> ReviewResult:
    """Draw this window's traffic audit, collect this cycle's expert answers and measure the judge
    against them."""
    from tasks.ingest.store import load_store

    store = ReviewStore(config.home, config.workload_id)
    source = None
    sample: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    with store.lock():
        if config.mode == "simulated":
            _truth_path(config.gold_labels)  # fail before anything is written
        if config.traffic_audit_size:
            window = load_store(config.home, workload_id=config.workload_id, start=config.start,
                                end=config.end)
            sample, items = draw_traffic_audit(store, window, config.traffic_audit_size,
                                               config.seed, teacher_models(
                                                   config.teacher_model, config.workload()))
            store.append("traffic_audit", sample)
            store.append("queue", items)
        if config.mode == "simulated":
            decisions = simulate_sme(store, config.sme_capacity, config.sme_error_rate,
                                     config.seed, config.experts, config.traffic_audit_size,
                                     config.gold_labels)
            source = SIMULATED_SOURCE
        elif config.mode == "ui":
            decisions = apply_ui_response(store, config.ui_response, config.ui_items,
                                          config.experts)
            source = "airflow-ui"
        else:
            decisions = []
        store.append("decisions", decisions)
        cal = calibration(store, min_agreement=config.min_judge_agreement)
        store.append("calibration", [{"at": now_iso(), "mode": config.mode,
                                      "decided": len(decisions), **cal}])
        pending = len(store.pending())
        total = len(store.decisions())
    return ReviewResult(workload_id=config.workload_id, mode=config.mode, decided=len(decisions),
                        source=source, pending=pending, decided_total=total,
                        traffic_audit_drawn=len(sample), traffic_audit_queued=len(items),
                        calibration=cal)


# ------------------------------------------------------------------------------------ files


def export_queue(store: ReviewStore, out: Path, include_decided: bool = False) -> int:
    """Write the queue for experts as CSV or JSONL (by ``out``'s suffix); returns rows written.

    Columns: :data:`EXPORT_COLUMNS`; ``label`` is empty for pending items (the current decision
    when ``include_decided``).
    """
    judged, decided = store.judgements(), store.decisions()
    rows = []
    for rid, item in store.queue().items():
        if rid in decided and not include_decided:
            continue
        verdict = judged.get(rid) or {}
        rows.append({
            "record_id": rid, "reason": item["reason"], "query": item["query"],
            "route": item["route"], "judge_expert": verdict.get("expert") or "",
            "judge_confidence": "" if verdict.get("confidence") is None
            else round(float(verdict["confidence"]), 3),
            "judge_rationale": verdict.get("rationale") or "",
            "label": decided.get(rid, {}).get("label", ""),
            "note": decided.get(rid, {}).get("note") or ""})
    if out.suffix not in (".csv", ".jsonl"):
        raise ReviewError(f"{out}: export to .csv or .jsonl")
    if out.suffix == ".jsonl":
        write_jsonl_atomic(out, rows, ensure_ascii=False)
        return len(rows)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(EXPORT_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise ReviewError(f"{path}: no such file")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "record_id" not in reader.fieldnames \
                    or "label" not in reader.fieldnames:
                raise ReviewError(f"{path}: needs the columns record_id and label "
                                  f"(got {reader.fieldnames})")
            return list(reader)
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReviewError(f"{path}: line {n} is not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ReviewError(f"{path}: line {n} is not a JSON object")
            rows.append(row)
        return rows
    raise ReviewError(f"{path}: import a .csv or .jsonl file")


def import_decisions(store: ReviewStore, path: Path, reviewer: str,
                     experts: list[str]) -> int:
    """Record the experts' answers from an exported file, all or nothing.

    Rows with an empty ``label`` are still pending and skipped. Every problem (unknown record,
    unknown label, one record labelled two ways) is listed in one :class:`ReviewError` and nothing
    is recorded.

    Returns:
        Decisions recorded.
    """
    if not reviewer.strip():
        raise ReviewError("name the reviewer (--reviewer)")
    rows = _read_rows(path)
    queue = store.queue()
    problems: list[str] = []
    labels: dict[str, tuple[str, str | None]] = {}
    for n, row in enumerate(rows, 2 if path.suffix == ".csv" else 1):
        rid = str(row.get("record_id") or "").strip()
        label = str(row.get("label") or "").strip()
        if not label:
            continue
        if not rid:
            problems.append(f"row {n}: no record_id")
        elif rid not in queue:
            problems.append(f"row {n}: record {rid!r} is not in the review queue")
        elif (problem := _check_label(label, experts)) is not None:
            problems.append(f"row {n}: {problem}")
        elif rid in labels and labels[rid][0] != label:
            problems.append(f"row {n}: record {rid!r} labelled both {labels[rid][0]!r} and "
                            f"{label!r}")
        else:
            labels[rid] = (label, str(row.get("note") or "").strip() or None)
    if problems:
        raise ReviewError(f"{path}: nothing imported, {len(problems)} problem(s): "
                          + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))
    with store.lock():
        store.append("decisions", [make_decision(rid, label, reviewer, "sme", note)
                                   for rid, (label, note) in labels.items()])
    return len(labels)


# ------------------------------------------------------------------------------------ CLI


class ExportConfig(WorkloadSettings):
    """Settings of ``flywheel review export``: the workload's file is read (an unknown workload
    is refused, not given an empty queue) and its experts are the labels the export asks for."""

    home: str | None = Field(None, description="Flywheel home folder")
    out: Path = Field(Path("review.csv"), description="File to write: .csv or .jsonl")
    include_decided: bool = Field(False, description="Also export decided items (with their "
                                                     "current label)")


class ImportConfig(WorkloadSettings):
    """Settings of ``flywheel review import``: labels are checked against the workload's
    experts."""

    home: str | None = Field(None, description="Flywheel home folder")
    file: Path = Field(description="The filled-in export (.csv or .jsonl)")
    reviewer: str = Field(min_length=1, max_length=200, description="Who reviewed (recorded "
                                                                    "with every decision)")


class StatusConfig(WorkloadSettings, CalibrationSettings):
    """Settings of ``flywheel review status``: the workload's file is read, so an unknown
    workload is refused rather than reported as an empty queue."""

    home: str | None = Field(None, description="Flywheel home folder")


def main(argv: list[str] | None = None) -> int:
    from tasks.core.settings import parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    action = argv.pop(0) if argv and argv[0] in {"run", "export", "import", "status"} else "run"
    try:
        if action == "export":
            ex = parse_config(ExportConfig, argv, prog="flywheel review export")
            n = export_queue(ReviewStore(ex.home, ex.workload_id), ex.out, ex.include_decided)
            print(f"review export {ex.workload_id}: {n} item(s) -> {ex.out}; label each with "
                  f"one of {', '.join(ex.experts or [])} or {DISCARD}")
        elif action == "import":
            if argv and not argv[0].startswith("-"):
                argv = ["--file", *argv]
            im = parse_config(ImportConfig, argv, prog="flywheel review import")
            n = import_decisions(ReviewStore(im.home, im.workload_id), im.file, im.reviewer,
                                 im.experts)
            print(f"review import {im.workload_id}: {n} decision(s) by {im.reviewer}")
        elif action == "status":
            st = parse_config(StatusConfig, argv, prog="flywheel review status")
            store = ReviewStore(st.home, st.workload_id)
            queue = store.queue()
            reasons = {r: sum(i["reason"] == r for i in queue.values()) for r in REASONS}
            print(f"review {st.workload_id}: {len(queue)} queued {reasons}, "
                  f"{len(store.decisions())} decided, {len(store.pending())} pending; "
                  f"traffic audit sample {len(store.traffic_audit())} record(s)")
            announce_calibration(calibration(store, min_agreement=st.min_judge_agreement))
        else:
            config = parse_config(ReviewConfig, argv, prog="flywheel review",
                                  description=__doc__.split("\n\n")[0] if __doc__ else None)
            result = review(config)
            print(f"review {result.workload_id} ({result.mode}): traffic audit drew "
                  f"{result.traffic_audit_drawn} record(s) ({result.traffic_audit_queued} newly "
                  f"queued); {result.decided} decided now by {result.source or 'nobody'}, "
                  f"{result.decided_total} in all, {result.pending} pending")
            announce_calibration(result.calibration)
    except ReviewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
