"""The gate: one explicit decision per candidate, from named thresholds, with every reason.

    flywheel gate --evaluations runs/<cycle>/evaluations.json --min-accuracy 0.8

A candidate passes when its accuracy is at least ``min_accuracy``, its p95 latency is at most
``max_p95_latency_ms``, and it is not more than ``max_accuracy_drop`` below the current champion.
Among those that pass, the winner is the most accurate; candidates within ``tie_margin`` of the best
accuracy count as equal and the fastest (lowest p95) of them wins: the smaller, cheaper model.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.settings import parse_config


class GateThresholds(BaseModel):
    """What a candidate must reach to be promoted."""

    min_accuracy: float = Field(0.70, ge=0, le=1, description="Minimum test accuracy.")
    max_p95_latency_ms: float = Field(1000.0, gt=0, description="Maximum p95 latency (ms).")
    max_accuracy_drop: float = Field(0.02, ge=0, le=1, description=(
        "How far below the champion's accuracy a challenger may fall."))
    tie_margin: float = Field(0.01, ge=0, le=1, description=(
        "Accuracies this close to the best count as equal; the fastest of them wins."))


class CandidateScore(BaseModel):
    """The figures the gate reads for one candidate."""

    candidate: str
    accuracy: float
    latency_p95_ms: float
    base_accuracy: float | None = None


class Verdict(BaseModel):
    candidate: str
    passed: bool
    reasons: list[str]


class GateResult(BaseModel):
    verdicts: list[Verdict]
    winner: str | None
    rule: str
    thresholds: GateThresholds
    champion_accuracy: float | None


def decide(scores: list[CandidateScore], thresholds: GateThresholds,
           champion_accuracy: float | None = None) -> GateResult:
    """Judge each candidate against the thresholds and pick the winner among those that pass."""
    verdicts = []
    for s in scores:
        reasons = []
        ok_acc = s.accuracy >= thresholds.min_accuracy
        reasons.append(f"accuracy {s.accuracy:.3f} {'>=' if ok_acc else '<'} "
                       f"min {thresholds.min_accuracy:.3f}")
        ok_lat = s.latency_p95_ms <= thresholds.max_p95_latency_ms
        reasons.append(f"p95 latency {s.latency_p95_ms:.1f} ms {'<=' if ok_lat else '>'} "
                       f"max {thresholds.max_p95_latency_ms:.1f} ms")
        ok_champ = True
        if champion_accuracy is not None:
            floor = champion_accuracy - thresholds.max_accuracy_drop
            ok_champ = s.accuracy >= floor
            reasons.append(f"accuracy {s.accuracy:.3f} {'>=' if ok_champ else '<'} champion "
                           f"{champion_accuracy:.3f} - {thresholds.max_accuracy_drop:.3f}")
        else:
            reasons.append("no champion yet")
        verdicts.append(Verdict(candidate=s.candidate, passed=ok_acc and ok_lat and ok_champ,
                                reasons=reasons))
    passing = [s for s, v in zip(scores, verdicts, strict=True) if v.passed]
    winner = None
    if passing:
        best = max(s.accuracy for s in passing)
        near_best = [s for s in passing if s.accuracy >= best - thresholds.tie_margin]
        winner = min(near_best, key=lambda s: (s.latency_p95_ms, -s.accuracy)).candidate
    rule = (f"most accurate passing candidate; within {thresholds.tie_margin:.3f} of the best, "
            f"the lowest p95 latency wins")
    return GateResult(verdicts=verdicts, winner=winner, rule=rule, thresholds=thresholds,
                      champion_accuracy=champion_accuracy)


class GateConfig(GateThresholds):
    evaluations: str = Field(description="JSON file: a list of candidate scores.")
    champion_accuracy: float | None = Field(None, ge=0, le=1, description="Current champion's.")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(GateConfig, argv, "flywheel gate", __doc__)
    scores = [CandidateScore.model_validate(s)
              for s in json.loads(Path(config.evaluations).read_text())]
    result = decide(scores, GateThresholds.model_validate(config.model_dump()),
                    config.champion_accuracy)
    for v in result.verdicts:
        print(f"{v.candidate}: {'PASS' if v.passed else 'FAIL'} ({'; '.join(v.reasons)})")
    print(f"winner: {result.winner or 'none'} ({result.rule})")
    return 0


def gate_cycle(evaluations: list[dict], workload_id: str, params: dict,
               home: str | None = None) -> GateResult:
    """The cycle's gate: thresholds from the run's params, the champion from the registry."""
    from tasks.register import champion_accuracy

    thresholds = GateThresholds.model_validate(
        {k: params[k] for k in GateThresholds.model_fields if params.get(k) is not None})
    scores = [CandidateScore(candidate=e["candidate"], accuracy=e["finetuned"]["accuracy"],
                             latency_p95_ms=e["finetuned"]["latency_p95_ms"],
                             base_accuracy=e["base"]["accuracy"]) for e in evaluations]
    return decide(scores, thresholds, champion_accuracy(workload_id, home))
