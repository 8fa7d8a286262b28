"""The gate: one explicit decision per candidate, from named thresholds, with every reason.

    flywheel gate --evaluations runs/<cycle>/scores.json --min-accuracy 0.8 \
        --champion-accuracy 0.91 --teacher-accuracy 0.96 --teacher-p95-ms 2400

A candidate passes when every check holds:

- ``min_accuracy``: its test accuracy is at least this;
- ``max_p95_latency_ms``: its p95 latency (batch 1, measured here) is at most this;
- ``max_accuracy_drop``: it is not more than this below the current champion, re-evaluated on this
  cycle's test set (no champion yet: the check passes and says so);
- ``max_drop_vs_teacher`` (optional): it is not more than this below the teacher on the same test
  set;
- ``min_speedup`` (optional): the teacher's p95 latency (from its logs) divided by its p95 is at
  least this;
- ``max_forgetting`` (optional): its bits per byte on general text exceed its base model's by at
  most this (the forgetting check of :mod:`tasks.evaluate`; encoder routers have no text to forget,
  and the check says so and holds).

A check whose reference is missing (no teacher accuracy for ``max_drop_vs_teacher``) fails: a gate
that cannot compare does not wave a model through.

The winner, among those that pass, is picked by one stated rule: the most accurate; candidates
within ``tie_margin`` of the best accuracy count as equal, and the cheapest of them wins (lowest
cost per 1,000 requests from measured throughput; lowest p95 latency where a cost is missing;
then the higher accuracy, then the name, so the decision never depends on input order).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.settings import parse_config


class GateThresholds(BaseModel):
    """What a candidate must reach to be registered (and then, after approval, served)."""

    min_accuracy: float = Field(0.70, ge=0, le=1, description="Minimum test accuracy.")
    max_p95_latency_ms: float = Field(1000.0, gt=0, description="Maximum p95 latency (ms).")
    max_accuracy_drop: float = Field(0.02, ge=0, le=1, description=(
        "How far below the champion's accuracy (re-evaluated on this test set) a candidate "
        "may fall."))
    max_drop_vs_teacher: float | None = Field(None, ge=0, le=1, description=(
        "How far below the teacher's accuracy on this test set a candidate may fall; "
        "none: not checked."))
    min_speedup: float | None = Field(None, gt=0, description=(
        "Minimum teacher p95 / candidate p95 (teacher from its logs); none: not checked."))
    max_forgetting: float | None = Field(None, ge=0, description=(
        "Maximum increase of bits per byte on general text over the candidate's base model "
        "(the forgetting check); none: not checked."))
    tie_margin: float = Field(0.01, ge=0, le=1, description=(
        "Accuracies this close to the best count as equal; the cheapest of them wins."))


class CandidateScore(BaseModel):
    """The figures the gate reads for one candidate."""

    candidate: str = Field(min_length=1)
    accuracy: float = Field(ge=0, le=1)
    latency_p95_ms: float = Field(gt=0)
    cost_per_1k_requests: float | None = Field(None, ge=0)
    base_accuracy: float | None = None
    family: str = Field("causal_lm", description="causal_lm or encoder.")
    forgetting_bpb: float | None = Field(None, description=(
        "Bits per byte on general text minus its base model's (none: not measured)."))


class Reference(BaseModel):
    """A model the candidates are compared with (the champion or the teacher)."""

    name: str
    accuracy: float | None = Field(None, ge=0, le=1)
    latency_p95_ms: float | None = Field(None, gt=0)
    source: str = Field("", description="Where the figures come from, in words.")


class Verdict(BaseModel):
    candidate: str
    passed: bool
    checks: dict[str, bool] = Field(description="check name -> held")
    reasons: list[str]


class GateResult(BaseModel):
    verdicts: list[Verdict]
    winner: str | None
    rule: str
    thresholds: GateThresholds
    champion_accuracy: float | None
    champion: Reference | None = None
    teacher: Reference | None = None


RULE = ("most accurate passing candidate; within {margin:.3f} of the best accuracy, the cheapest "
        "(cost per 1,000 requests, else p95 latency) wins")


def _check(s: CandidateScore, t: GateThresholds, champion: Reference | None,
           teacher: Reference | None) -> Verdict:
    checks: dict[str, bool] = {}
    reasons: list[str] = []

    def record(name: str, held: bool, text: str) -> None:
        checks[name] = held
        reasons.append(text)

    ok = s.accuracy >= t.min_accuracy
    record("min_accuracy", ok, f"accuracy {s.accuracy:.3f} {'>=' if ok else '<'} min "
                               f"{t.min_accuracy:.3f}")
    ok = s.latency_p95_ms <= t.max_p95_latency_ms
    record("max_p95_latency_ms", ok, f"p95 latency {s.latency_p95_ms:.1f} ms "
                                     f"{'<=' if ok else '>'} max {t.max_p95_latency_ms:.1f} ms")
    if champion is None or champion.accuracy is None:
        record("max_accuracy_drop", True, "no champion yet")
    else:
        floor = champion.accuracy - t.max_accuracy_drop
        ok = s.accuracy >= floor - 1e-12
        record("max_accuracy_drop", ok,
               f"accuracy {s.accuracy:.3f} {'>=' if ok else '<'} champion {champion.name} "
               f"{champion.accuracy:.3f} - {t.max_accuracy_drop:.3f} ({champion.source})")
    if t.max_drop_vs_teacher is not None:
        if teacher is None or teacher.accuracy is None:
            record("max_drop_vs_teacher", False, "no teacher accuracy to compare with")
        else:
            floor = teacher.accuracy - t.max_drop_vs_teacher
            ok = s.accuracy >= floor - 1e-12
            record("max_drop_vs_teacher", ok,
                   f"accuracy {s.accuracy:.3f} {'>=' if ok else '<'} teacher "
                   f"{teacher.accuracy:.3f} - {t.max_drop_vs_teacher:.3f}")
    if t.min_speedup is not None:
        if teacher is None or teacher.latency_p95_ms is None:
            record("min_speedup", False, "no teacher latency to compare with")
        else:
            speedup = teacher.latency_p95_ms / s.latency_p95_ms
            ok = speedup >= t.min_speedup
            record("min_speedup", ok,
                   f"speed-up {speedup:.1f}x {'>=' if ok else '<'} min {t.min_speedup:.1f}x "
                   f"(teacher p95 {teacher.latency_p95_ms:.1f} ms, {teacher.source})")
    if t.max_forgetting is not None:
        if s.family == "encoder":
            record("max_forgetting", True, "forgetting: n/a for an encoder router (no "
                                           "language-model head)")
        elif s.forgetting_bpb is None:
            record("max_forgetting", False, "forgetting not measured (general_text_docs = 0?)")
        else:
            ok = s.forgetting_bpb <= t.max_forgetting + 1e-12
            record("max_forgetting", ok,
                   f"forgetting {s.forgetting_bpb:+.3f} bits/byte vs its base "
                   f"{'<=' if ok else '>'} max {t.max_forgetting:.3f}")
    return Verdict(candidate=s.candidate, passed=all(checks.values()), checks=checks,
                   reasons=reasons)


def decide(scores: list[CandidateScore], thresholds: GateThresholds,
           champion_accuracy: float | None = None, *, champion: Reference | None = None,
           teacher: Reference | None = None) -> GateResult:
    """Judge each candidate against the thresholds and pick the winner among those that pass.

    Args:
        scores: one entry per candidate (names must be distinct).
        thresholds: the named limits.
        champion_accuracy: shorthand for ``champion=Reference(name="champion", accuracy=...)``.
        champion: the model in production, re-evaluated on this test set; none on the first cycle.
        teacher: the teacher's accuracy on this test set and p95 latency from its logs.
    """
    names = [s.candidate for s in scores]
    if len(names) != len(set(names)):
        raise ValueError(f"gate: candidate names must be distinct, got {names}")
    if champion is None and champion_accuracy is not None:
        champion = Reference(name="champion", accuracy=champion_accuracy,
                             source="as given")
    verdicts = [_check(s, thresholds, champion, teacher) for s in scores]
    passing = [s for s, v in zip(scores, verdicts, strict=True) if v.passed]
    winner = None
    if passing:
        best = max(s.accuracy for s in passing)
        near_best = [s for s in passing if s.accuracy >= best - thresholds.tie_margin - 1e-12]
        # the cheapest by measured cost where every tied candidate has one, else by p95
        with_cost = all(s.cost_per_1k_requests is not None for s in near_best)
        winner = min(near_best, key=lambda s: (
            s.cost_per_1k_requests if with_cost else s.latency_p95_ms, s.latency_p95_ms,
            -s.accuracy, s.candidate)).candidate
    return GateResult(verdicts=verdicts, winner=winner,
                      rule=RULE.format(margin=thresholds.tie_margin), thresholds=thresholds,
                      champion_accuracy=champion.accuracy if champion else None,
                      champion=champion, teacher=teacher)


class GateConfig(GateThresholds):
    evaluations: str = Field(description="JSON file: a list of candidate scores.")
    champion_accuracy: float | None = Field(None, ge=0, le=1, description=(
        "Current champion's accuracy on the same test set."))
    teacher_accuracy: float | None = Field(None, ge=0, le=1, description=(
        "Teacher's accuracy on the same test set."))
    teacher_p95_ms: float | None = Field(None, gt=0, description="Teacher's p95 latency (ms).")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(GateConfig, argv, "flywheel gate", __doc__)
    path = Path(config.evaluations)
    if not path.is_file():
        raise SystemExit(f"flywheel gate: {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"flywheel gate: {path} is not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, list):
        raise SystemExit(f"flywheel gate: {path} must hold a JSON list of candidate scores")
    scores = [CandidateScore.model_validate(s) for s in raw]
    teacher = None
    if config.teacher_accuracy is not None or config.teacher_p95_ms is not None:
        teacher = Reference(name="teacher", accuracy=config.teacher_accuracy,
                            latency_p95_ms=config.teacher_p95_ms, source="as given")
    result = decide(scores, GateThresholds.model_validate(config.model_dump()),
                    config.champion_accuracy, teacher=teacher)
    for v in result.verdicts:
        print(f"{v.candidate}: {'PASS' if v.passed else 'FAIL'} ({'; '.join(v.reasons)})")
    print(f"winner: {result.winner or 'none'} ({result.rule})")
    return 0


def scores_of(evaluations: list[dict]) -> list[CandidateScore]:
    """The gate's inputs from the evaluate task's results (one per candidate)."""
    scores = []
    for e in evaluations:
        tuned = e["finetuned"]
        scores.append(CandidateScore(
            candidate=e["candidate"], accuracy=tuned["accuracy"],
            latency_p95_ms=tuned["latency_p95_ms"],
            cost_per_1k_requests=tuned.get("cost_per_1k_requests"),
            base_accuracy=(e.get("base") or {}).get("accuracy"),
            family=e.get("family") or "causal_lm", forgetting_bpb=e.get("forgetting_bpb")))
    return scores


def gate_cycle(evaluations: list[dict], workload_id: str, params: dict,
               home: str | None = None, champion: dict | None = None,
               teacher: dict | None = None) -> GateResult:
    """The cycle's gate: thresholds from the run's params, references from this cycle.

    Args:
        evaluations: the evaluate task's results.
        workload_id: whose registry holds the champion.
        params: the DAG run's params (threshold names as in :class:`GateThresholds`).
        home: flywheel home.
        champion: the ``evaluate_champion`` task's result (the champion re-evaluated on this test
            set); without one, the champion's recorded accuracy from the registry is used and the
            reason says so.
        teacher: the ``evaluate_teacher`` task's result.
    """
    thresholds = GateThresholds.model_validate(
        {k: params[k] for k in GateThresholds.model_fields if params.get(k) is not None})
    reference = None
    if champion and champion.get("evaluation"):
        ev = champion["evaluation"]
        reference = Reference(
            name=f"v{champion['version']}", accuracy=ev["accuracy"],
            latency_p95_ms=ev["latency_p95_ms"], source="re-evaluated on this test set")
    else:
        from tasks.register import champion_accuracy, champion_version

        accuracy = champion_accuracy(workload_id, home)
        if accuracy is not None:
            version = champion_version(workload_id, home)
            reference = Reference(name=f"v{version.version}", accuracy=accuracy,
                                  source="registry tag: its own cycle's test set")
    teacher_ref = None
    if teacher:
        teacher_ref = Reference(name=teacher.get("model") or "teacher",
                                accuracy=teacher.get("accuracy") if teacher.get("n_test") else None,
                                latency_p95_ms=teacher.get("latency_p95_ms"),
                                source="from its logs")
    return decide(scores_of(evaluations), thresholds, champion=reference, teacher=teacher_ref)
