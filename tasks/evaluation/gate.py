"""The gate: one explicit decision per candidate, from named thresholds, with every reason.

    flywheel gate --evaluations ~/.flywheel/runs/<cycle>/report.json   # re-judge a cycle
    flywheel gate --evaluations .../report.json --min-accuracy 0.9 --out decision.json
    flywheel gate --evaluations scores.json --champion champion.json --teacher teacher.json \
        --min-accuracy 0.8 --alpha 0.05

``--evaluations`` is a cycle's ``report.json`` (its candidates, the champion re-evaluated and the
teacher, as the cycle recorded them) or a JSON list of candidate scores (the fields of
:class:`CandidateScore`, or the evaluate task's results). ``--champion`` (an ``evaluate_champion``
result, or the ``evaluate_result.json`` of its evaluation) and ``--teacher`` (a ``teacher_baseline``
result) replace what a report holds; ``--champion-accuracy``, ``--teacher-accuracy`` (with
``--teacher-evidence``, the traffic-audit records it is measured on) and ``--teacher-p95-ms`` give
bare figures, which can only be compared unpaired.

A candidate passes when every check holds:

- ``min_accuracy``: its test accuracy is at least this;
- ``max_p95_latency_ms``: its p95 latency (batch 1, measured on the evaluation machine) is at most
  this;
- ``max_accuracy_drop`` (the champion check): the champion re-evaluated on this cycle's test set,
  compared query by query (below); no champion yet: the check passes and says so;
- ``max_drop_vs_teacher`` (default 0.03; none: not checked): by the point estimate, its test
  accuracy is not more than this below the teacher's accuracy on the traffic audit (experts'
  labels on a seeded random sample of the teacher's traffic,
  :func:`tasks.evaluation.evaluate.teacher_baseline`; never its own thumbs-up answers, nor the
  records experts saw because of negative feedback, where the teacher is worse by construction).
  Where at least ``min_teacher_evidence`` traffic-audit records are in the test split and both have
  per-query results, it is paired on them (the reason gives the interval and McNemar's p beside it);
  otherwise it is unpaired, the candidate's whole test split against every traffic-audit record, and
  the reason gives both n's and Newcombe's interval for independent samples. Fewer than
  ``min_teacher_evidence`` traffic-audit records in all: the check fails, "not enough evidence";
- ``min_speedup`` (optional): the teacher's p95 latency (from its logs, on its own hardware)
  divided by the candidate's (measured on the evaluation machine) is at least this;
- ``max_forgetting`` (optional): its bits per byte on general text exceed its base model's by at
  most this (the forgetting check of :mod:`tasks.evaluation.evaluate`; encoder routers have no text
  to forget, and the check says so and holds).

A check whose reference is missing (no teacher graded on a traffic audit for
``max_drop_vs_teacher``) fails: a gate that cannot compare does not wave a model through.

The champion rule. Challenger and champion are scored on the same test queries (per-query
right/wrong vectors aligned to the frozen ``test.jsonl``); ``b`` counts the queries only the
champion got right, ``c`` those only the challenger got right, and the difference of accuracies is
``(c - b) / n``. Significance is McNemar's exact test on the ``b + c`` discordant queries
(two-sided binomial, level ``alpha``); the interval of the difference is Newcombe's hybrid score
interval for paired proportions (1998, method 10, with its continuity-corrected correlation), at
``1 - alpha``. With ``m = max_accuracy_drop`` (default 0), the challenger

1. is refused when significantly worse by more than ``m`` (McNemar p < alpha, the difference
   negative and the whole interval below ``-m``);
2. passes when significantly better (McNemar p < alpha, difference positive), but only over at
   least ``min_paired_queries`` paired queries with a discordant pair: below that the verdict
   says "not enough evidence" and it cannot be shown better;
3. otherwise (no significant difference, or not enough evidence) passes only at equal accuracy
   when cheaper: not below the champion by more than ``m`` by the point estimate, and faster
   beyond the measurement's spread. Where the two were timed head to head, in the same window
   and interleaved query by query (:mod:`tasks.evaluation.latency`), that means the whole 95%
   interval of the median of their per-query time ratios below ``1 - min_saving``; only without
   such a timing, a lower cost per 1,000 requests (a lower p95 where either has no cost), each
   measured in its own evaluation.

Each reason states the difference, its interval, the McNemar p-value, ``b``, ``c`` and ``n``. When
the challenger or the champion has no per-query results (a champion known only by its registry
tag) or they were scored on different test sets, the old unpaired rule applies (accuracy at least
the champion's minus ``m``) and the reason says so.

The winner, among those that pass, is picked by one stated rule: the most accurate; candidates
within ``tie_margin`` of the best accuracy count as equal, and the cheapest of them wins (lowest
cost per 1,000 requests from measured throughput; lowest p95 latency where a cost is missing;
then the higher accuracy, then the name, so the decision never depends on input order).
"""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from statistics import NormalDist

from pydantic import BaseModel, Field

from tasks.core.params import GateThresholds
from tasks.core.settings import parse_config
from tasks.evaluation.latency import HeadToHead

#: A per-query result vector: one character per line of the frozen ``test.jsonl``, in its order:
#: ``1`` right, ``0`` wrong, ``-`` not scored (e.g. for the teacher, not a traffic-audit record).
CORRECT_PATTERN = r"^[01-]*$"


# ------------------------------------------------------------------------------------ statistics


def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion, two-sided at ``1 - alpha``; (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    z = _z(alpha)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` and ``c`` discordant pairs.

    If both models were equally accurate, each discordant query would favour either one with
    probability 1/2: ``min(b, c)`` is then a Binomial(b + c, 1/2) tail, doubled and capped at 1.
    No discordant pair gives 1.0 (no evidence either way).
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_difference_interval(both: int, only_new: int, only_ref: int, neither: int,
                               alpha: float = 0.05) -> tuple[float, float]:
    """Interval of ``accuracy(new) - accuracy(ref)`` from paired right/wrong counts.

    Newcombe's hybrid score interval for paired proportions (Newcombe 1998, method 10; the
    "square-and-add" interval of Fagerland, Lydersen and Laake): the Wilson intervals of the two
    accuracies, combined with their estimated correlation (continuity-corrected as Newcombe
    recommends). It stays inside [-1, 1] and behaves at small discordant counts, where a Wald
    interval does not.
    """
    n = both + only_new + only_ref + neither
    if n == 0:
        return -1.0, 1.0
    right_new, right_ref = both + only_new, both + only_ref
    p1, p2 = right_new / n, right_ref / n
    l1, u1 = wilson_interval(right_new, n, alpha)
    l2, u2 = wilson_interval(right_ref, n, alpha)
    phi = 0.0
    margins = right_new * (n - right_new) * right_ref * (n - right_ref)
    if margins:
        cross = both * neither - only_new * only_ref
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    difference = p1 - p2
    lower = difference - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2
                                       - 2 * phi * (p1 - l1) * (u2 - p2)))
    upper = difference + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2
                                       - 2 * phi * (p2 - l2) * (u1 - p1)))
    return max(-1.0, lower), min(1.0, upper)


def unpaired_difference_interval(right_new: int, n_new: int, right_ref: int, n_ref: int,
                                 alpha: float = 0.05) -> tuple[float, float]:
    """Interval of ``right_new / n_new - right_ref / n_ref`` for two independent samples.

    Newcombe's hybrid score interval (Newcombe 1998, "Interval estimation for the difference
    between independent proportions", method 10): the two Wilson intervals combined by
    square-and-add. (-1, 1) when either sample is empty.
    """
    if not n_new or not n_ref:
        return -1.0, 1.0
    p1, p2 = right_new / n_new, right_ref / n_ref
    l1, u1 = wilson_interval(right_new, n_new, alpha)
    l2, u2 = wilson_interval(right_ref, n_ref, alpha)
    difference = p1 - p2
    return (max(-1.0, difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)),
            min(1.0, difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)))


class PairedComparison(BaseModel):
    """A challenger and a reference scored on the same test queries."""

    reference: str
    n: int = Field(description="Test queries both were scored on.")
    b: int = Field(description="Queries the reference got right and the challenger wrong.")
    c: int = Field(description="Queries the challenger got right and the reference wrong.")
    accuracy: float = Field(description="The challenger's accuracy on these queries.")
    reference_accuracy: float = Field(description="The reference's accuracy on these queries.")
    difference: float = Field(description="accuracy - reference_accuracy, i.e. (c - b) / n.")
    interval: tuple[float, float] = Field(description=(
        "Newcombe interval of the difference at 1 - alpha."))
    p_value: float = Field(description="McNemar's exact test on b and c (two-sided).")
    alpha: float

    def summary(self) -> str:
        """E.g. ``0.966 vs 0.949, +0.017 [-0.012, +0.047] (95% CI), McNemar p=0.311 (b=14,
        c=21)``: b counts the queries only the reference got right, c only the candidate."""
        return (f"{self.accuracy:.3f} vs {self.reference_accuracy:.3f}, "
                f"{self.difference:+.3f} [{self.interval[0]:+.3f}, {self.interval[1]:+.3f}] "
                f"({(1 - self.alpha) * 100:g}% CI), McNemar p={self.p_value:.3g} "
                f"(b={self.b}, c={self.c})")


def compare_paired(challenger: str, reference: str, reference_name: str,
                   alpha: float = 0.05) -> PairedComparison:
    """Pair two per-query vectors (:data:`CORRECT_PATTERN`) on the queries both scored.

    Positions where either says ``-`` are left out; a shorter vector (an evaluation with a
    ``limit``) pairs on the queries it covers, which are the first ones of the same file.
    """
    both = only_new = only_ref = neither = 0
    for new, ref in zip(challenger, reference, strict=False):
        if new == "-" or ref == "-":
            continue
        if new == "1":
            both, only_new = (both + 1, only_new) if ref == "1" else (both, only_new + 1)
        else:
            only_ref, neither = (only_ref + 1, neither) if ref == "1" else (only_ref, neither + 1)
    n = both + only_new + only_ref + neither
    return PairedComparison(
        reference=reference_name, n=n, b=only_ref, c=only_new,
        accuracy=(both + only_new) / n if n else 0.0,
        reference_accuracy=(both + only_ref) / n if n else 0.0,
        difference=(only_new - only_ref) / n if n else 0.0,
        interval=paired_difference_interval(both, only_new, only_ref, neither, alpha),
        p_value=mcnemar_exact(only_ref, only_new), alpha=alpha)


# ------------------------------------------------------------------------------------ models


class CandidateScore(BaseModel):
    """The figures the gate reads for one candidate."""

    candidate: str = Field(min_length=1)
    accuracy: float = Field(ge=0, le=1)
    latency_p95_ms: float = Field(gt=0)
    cost_per_1k_requests: float | None = Field(None, ge=0)
    base_accuracy: float | None = None
    family: str = Field("causal_lm", description="Its model family (tasks.families), for the "
                                                 "record: no check depends on it.")
    forgetting_applies: bool = Field(True, description=(
        "Whether it has a language-model head whose forgetting can be measured (an encoder "
        "classifier or a linear probe has none)."))
    forgetting_bpb: float | None = Field(None, description=(
        "Bits per byte on general text minus its base model's (none: not measured)."))
    correct: str | None = Field(None, pattern=CORRECT_PATTERN, description=(
        "Per-query right/wrong over the frozen test.jsonl, in its order (none: unpaired)."))
    dataset_version: str | None = Field(None, description="The test set's dataset version.")
    n_test: int | None = Field(None, ge=0, description="Test queries the accuracy is over.")
    hardware: str | None = Field(None, description="Where its latency was measured.")


class Reference(BaseModel):
    """A model the candidates are compared with (the champion or the teacher)."""

    name: str
    accuracy: float | None = Field(None, ge=0, le=1)
    latency_p95_ms: float | None = Field(None, gt=0)
    cost_per_1k_requests: float | None = Field(None, ge=0)
    source: str = Field("", description="Where the figures come from, in words.")
    n: int | None = Field(None, ge=0, description=(
        "Queries (teacher: traffic-audit records) the accuracy is measured on; none: "
        "unknown."))
    accuracy_interval: tuple[float, float] | None = Field(None, description=(
        "95% interval of the accuracy, where known."))
    correct: str | None = Field(None, pattern=CORRECT_PATTERN, description=(
        "Per-query right/wrong over the same test.jsonl ('-': not graded)."))
    dataset_version: str | None = None


class Verdict(BaseModel):
    candidate: str
    passed: bool
    checks: dict[str, bool] = Field(description="check name -> held")
    reasons: list[str]
    comparisons: dict[str, PairedComparison] = Field(default_factory=dict, description=(
        "Paired comparisons behind the checks: 'champion', 'teacher'."))


class GateResult(BaseModel):
    verdicts: list[Verdict]
    winner: str | None
    rule: str
    thresholds: GateThresholds
    champion_accuracy: float | None
    champion: Reference | None = None
    teacher: Reference | None = None
    latency: HeadToHead | None = Field(None, description=(
        "The candidates and the champion timed head to head, where they were"))


RULE = ("most accurate passing candidate; within {margin:.3f} of the best accuracy, the cheapest "
        "(cost per 1,000 requests, else p95 latency) wins")


def _unpaired_because(s: CandidateScore, ref: Reference) -> str | None:
    """Why the candidate cannot be compared with ``ref`` query by query (None: it can)."""
    if not s.correct:
        return "no per-query results for the candidate"
    if not ref.correct:
        return f"no per-query results for {ref.name}"
    if s.dataset_version and ref.dataset_version and s.dataset_version != ref.dataset_version:
        return f"different test sets: {s.dataset_version} vs {ref.dataset_version}"
    return None


def _cheaper(s: CandidateScore, ref: Reference, saving: float = 0.0,
             latency: HeadToHead | None = None) -> tuple[bool, str]:
    """Is the candidate cheaper than ``ref`` by at least the share ``saving``: by the head-to-head
    timing where both were in it (the whole interval of the paired time ratio below
    ``1 - saving``),
    else by cost per 1,000 requests, else by p95, each from its own evaluation."""
    factor = 1.0 - saving
    margin = f" by {saving:.0%}" if saving else ""
    if (latency is not None and latency.reference == ref.name and s.candidate in latency.versus
            and ref.name in latency.timings and s.candidate in latency.timings):
        ratio, mine, theirs = (latency.versus[s.candidate], latency.timings[s.candidate],
                               latency.timings[ref.name])
        ok = ratio.high < factor
        return ok, (f"timed head to head, interleaved on the same {latency.queries} queries: "
                    f"p50/p95 {mine.p50_ms:.1f}/{mine.p95_ms:.1f} ms vs {ref.name}'s "
                    f"{theirs.p50_ms:.1f}/{theirs.p95_ms:.1f} ms, "
                    f"{ratio.summary()}; {'faster' if ok else 'not faster'} beyond the "
                    f"measurement's spread (the interval's top must be below {factor:.2f})")
    if s.cost_per_1k_requests is not None and ref.cost_per_1k_requests is not None:
        ok = s.cost_per_1k_requests <= factor * ref.cost_per_1k_requests
        return ok, (f"cost per 1,000 requests {s.cost_per_1k_requests:.5f} "
                    f"{'is' if ok else 'is not'} below {ref.name}'s "
                    f"{ref.cost_per_1k_requests:.5f}{margin}")
    if ref.latency_p95_ms is not None:
        ok = s.latency_p95_ms <= factor * ref.latency_p95_ms
        return ok, (f"p95 {s.latency_p95_ms:.1f} ms {'is' if ok else 'is not'} below "
                    f"{ref.name}'s {ref.latency_p95_ms:.1f} ms{margin} (no cost for both)")
    return False, f"no cost or latency of {ref.name} to compare"


def _champion_check(s: CandidateScore, t: GateThresholds, champion: Reference,
                    latency: HeadToHead | None = None
                    ) -> tuple[bool, str, PairedComparison | None]:
    """The champion rule of the module docstring: held, reason, the paired comparison."""
    m = t.max_accuracy_drop
    why = _unpaired_because(s, champion)
    paired = None
    if why is None:
        paired = compare_paired(s.correct or "", champion.correct or "", champion.name, t.alpha)
        if paired.n == 0:
            why, paired = "no test query scored by both", None
    if paired is None:
        ok = s.accuracy >= champion.accuracy - m - 1e-12  # type: ignore[operator]
        return ok, (f"unpaired ({why}): accuracy {s.accuracy:.3f} {'>=' if ok else '<'} champion "
                    f"{champion.name} {champion.accuracy:.3f} - {m:.3f} ({champion.source})"), None
    head = f"vs champion {champion.name} on the same {paired.n} test queries: {paired.summary()}"
    significant = paired.p_value < t.alpha
    if significant and paired.difference < 0 and paired.interval[1] < -m:
        return False, f"{head}; significantly worse: refused", paired
    if paired.n < t.min_paired_queries:
        evidence = f"not enough evidence: n={paired.n} < min_paired_queries {t.min_paired_queries}"
    elif paired.b + paired.c == 0:
        evidence = "not enough evidence: no discordant pair (both right or both wrong on each)"
    else:
        evidence = None
    if evidence is None and significant and paired.difference > 0:
        return True, f"{head}; significantly better: passes", paired
    state = f"{evidence}, so it cannot be shown better" if evidence else \
        "no significant difference"
    if paired.difference < -m - 1e-12:
        return False, (f"{head}; {state}, and below the champion by the point estimate "
                       f"(allowed drop {m:.3f}): refused"), paired
    cheaper, cost = _cheaper(s, champion, t.min_saving, latency)
    if cheaper:
        equal = "not worse by the point estimate" if evidence else "equal accuracy"
        return True, f"{head}; {state}; {equal} and cheaper ({cost}): passes", paired
    return False, f"{head}; {state}; not better, not cheaper ({cost}): refused", paired


def _teacher_check(s: CandidateScore, t: GateThresholds, teacher: Reference | None
                   ) -> tuple[bool, str, PairedComparison | None]:
    """max_drop_vs_teacher: the candidate's test accuracy against the teacher's on its traffic
    audit (a random sample of its traffic), paired on the traffic-audit test queries where
    there are at least ``min_teacher_evidence`` of them, else unpaired with both n's."""
    m = t.max_drop_vs_teacher or 0.0
    k = t.min_teacher_evidence
    if teacher is None or teacher.accuracy is None:
        return False, ("no teacher accuracy from a traffic audit (experts' labels on a random "
                       "sample of its traffic) to compare with"), None
    if teacher.n is None or teacher.n < k:
        n = "an unknown number of" if teacher.n is None else str(teacher.n)
        return False, (f"not enough evidence: the teacher is graded on {n} traffic-audit "
                       f"records < min_teacher_evidence {k}, so the candidate cannot be "
                       "compared with it"), None
    why = _unpaired_because(s, teacher)
    if why is None:
        paired = compare_paired(s.correct or "", teacher.correct or "", "the teacher", t.alpha)
        if paired.n >= k:
            ok = paired.difference >= -m - 1e-12
            return ok, (f"vs teacher {teacher.name} on the same {paired.n} traffic-audit test "
                        f"queries (of its {teacher.n} traffic-audit records): "
                        f"{paired.summary()}; {'within' if ok else 'beyond'} the allowed drop "
                        f"{m:.3f}"), paired
        why = f"{paired.n} traffic-audit test queries < min_teacher_evidence {k}"
    difference = s.accuracy - teacher.accuracy
    ok = difference >= -m - 1e-12
    if s.n_test:
        low, high = unpaired_difference_interval(
            round(s.accuracy * s.n_test), s.n_test, round(teacher.accuracy * teacher.n),
            teacher.n, t.alpha)
        spread = f" [{low:+.3f}, {high:+.3f}] ({(1 - t.alpha) * 100:g}% CI, independent samples)"
        n_candidate = f"{s.n_test} test queries"
    else:
        spread, n_candidate = " (no interval: its number of test queries is unknown)", \
            "its test queries"
    interval = (f" [{teacher.accuracy_interval[0]:.3f}, {teacher.accuracy_interval[1]:.3f}]"
                if teacher.accuracy_interval else "")
    return ok, (f"unpaired ({why}): accuracy {s.accuracy:.3f} on {n_candidate} vs teacher "
                f"{teacher.name} {teacher.accuracy:.3f}{interval} on {teacher.n} traffic-audit "
                f"records (a random sample of its traffic): {difference:+.3f}{spread}; "
                f"{'within' if ok else 'beyond'} the allowed drop {m:.3f}"), None


def _check(s: CandidateScore, t: GateThresholds, champion: Reference | None,
           teacher: Reference | None, latency: HeadToHead | None = None) -> Verdict:
    checks: dict[str, bool] = {}
    reasons: list[str] = []
    comparisons: dict[str, PairedComparison] = {}

    def record(name: str, held: bool, text: str, paired: PairedComparison | None = None,
               key: str = "") -> None:
        checks[name] = held
        reasons.append(text)
        if paired is not None:
            comparisons[key] = paired

    where = f" on {s.hardware}" if s.hardware else ""
    ok = s.accuracy >= t.min_accuracy
    record("min_accuracy", ok, f"accuracy {s.accuracy:.3f} {'>=' if ok else '<'} min "
                               f"{t.min_accuracy:.3f}")
    ok = s.latency_p95_ms <= t.max_p95_latency_ms
    record("max_p95_latency_ms", ok, f"p95 latency {s.latency_p95_ms:.1f} ms{where} "
                                     f"{'<=' if ok else '>'} max {t.max_p95_latency_ms:.1f} ms")
    if champion is None or champion.accuracy is None:
        record("max_accuracy_drop", True, "no champion yet")
    else:
        record("max_accuracy_drop", *_champion_check(s, t, champion, latency), key="champion")
    if t.max_drop_vs_teacher is not None:
        record("max_drop_vs_teacher", *_teacher_check(s, t, teacher), key="teacher")
    if t.min_speedup is not None:
        if teacher is None or teacher.latency_p95_ms is None:
            record("min_speedup", False, "no teacher latency to compare with")
        else:
            speedup = teacher.latency_p95_ms / s.latency_p95_ms
            ok = speedup >= t.min_speedup
            record("min_speedup", ok,
                   f"speed-up {speedup:.1f}x {'>=' if ok else '<'} min {t.min_speedup:.1f}x "
                   f"(teacher p95 {teacher.latency_p95_ms:.1f} ms from its logs; candidate "
                   f"p95 {s.latency_p95_ms:.1f} ms measured{where or ' here'})")
    if t.max_forgetting is not None:
        if not s.forgetting_applies:
            record("max_forgetting", True, f"forgetting: n/a for a {s.family} router (no "
                                           "language-model head)")
        elif s.forgetting_bpb is None:
            record("max_forgetting", False, "forgetting not measured (general_text_docs = 0?)")
        else:
            ok = s.forgetting_bpb <= t.max_forgetting + 1e-12
            record("max_forgetting", ok,
                   f"forgetting {s.forgetting_bpb:+.3f} bits/byte vs its base "
                   f"{'<=' if ok else '>'} max {t.max_forgetting:.3f}")
    return Verdict(candidate=s.candidate, passed=all(checks.values()), checks=checks,
                   reasons=reasons, comparisons=comparisons)


def decide(scores: list[CandidateScore], thresholds: GateThresholds,
           champion_accuracy: float | None = None, *, champion: Reference | None = None,
           teacher: Reference | None = None, latency: HeadToHead | None = None) -> GateResult:
    """Judge each candidate against the thresholds and pick the winner among those that pass.

    Args:
        scores: one entry per candidate (names must be distinct).
        thresholds: the named limits.
        champion_accuracy: shorthand for ``champion=Reference(name="champion", accuracy=...)``.
        champion: the model in production, re-evaluated on this test set (with its per-query
            results: the paired rule); none on the first cycle.
        teacher: the teacher graded on its traffic audit (with its per-query results on the
            traffic-audit records of this test set), and its p95 latency from its logs.
        latency: the candidates and the champion timed head to head (same window, interleaved);
            where given, "cheaper than the champion" is read from it.
    """
    names = [s.candidate for s in scores]
    if len(names) != len(set(names)):
        raise ValueError(f"gate: candidate names must be distinct, got {names}")
    if champion is None and champion_accuracy is not None:
        champion = Reference(name="champion", accuracy=champion_accuracy,
                             source="as given")
    verdicts = [_check(s, thresholds, champion, teacher, latency) for s in scores]
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
                      champion=champion, teacher=teacher, latency=latency)


class GateConfig(GateThresholds):
    evaluations: str = Field(description=(
        "JSON file: a cycle's report.json, or a list of candidate scores (or of the evaluate "
        "task's results)."))
    champion: str | None = Field(None, description=(
        "JSON file: the champion re-evaluated on the same test set (an evaluate_champion result "
        "or its evaluate_result.json); replaces the report's."))
    champion_accuracy: float | None = Field(None, ge=0, le=1, description=(
        "The champion's accuracy alone (compared unpaired)."))
    teacher: str | None = Field(None, description=(
        "JSON file: a teacher_baseline result (graded on its traffic audit); replaces the "
        "report's."))
    teacher_accuracy: float | None = Field(None, ge=0, le=1, description=(
        "The teacher's accuracy on a traffic audit (a random sample of its traffic, labelled "
        "by experts) alone (compared unpaired)."))
    teacher_evidence: int | None = Field(None, ge=0, description=(
        "How many traffic-audit records teacher_accuracy is measured on."))
    teacher_p95_ms: float | None = Field(None, gt=0, description="Teacher's p95 latency (ms).")
    out: str | None = Field(None, description=(
        "Write the decision here as JSON (what `flywheel register --decision` reads)."))


def _read_json(path: str, what: str) -> typing.Any:
    file = Path(path).expanduser()
    if not file.is_file():
        raise SystemExit(f"flywheel gate: {what} {file} does not exist")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"flywheel gate: {file} is not valid JSON ({exc.msg})") from exc


def main(argv: list[str] | None = None) -> int:
    config = parse_config(GateConfig, argv, "flywheel gate", __doc__)
    raw = _read_json(config.evaluations, "--evaluations")
    champion = teacher = None
    if isinstance(raw, dict) and isinstance(raw.get("evaluations"), list):  # a cycle's report
        raw, champion, teacher = raw["evaluations"], raw.get("champion_before"), raw.get("teacher")
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise SystemExit(f"flywheel gate: {config.evaluations} must hold a cycle's report or a "
                         "JSON list of candidate scores")
    scores = scores_of(raw) if all("finetuned" in s for s in raw) else [
        CandidateScore.model_validate(s) for s in raw]
    if config.champion:
        champion = _read_json(config.champion, "--champion")
    champion_ref = champion_reference(champion) if isinstance(champion, dict) else None
    if config.champion_accuracy is not None:
        champion_ref = Reference(name="champion", accuracy=config.champion_accuracy,
                                 source="as given")
    if config.teacher:
        teacher = _read_json(config.teacher, "--teacher")
    teacher_ref = teacher_reference(teacher) if isinstance(teacher, dict) else None
    if config.teacher_accuracy is not None or config.teacher_p95_ms is not None:
        teacher_ref = Reference(name="teacher", accuracy=config.teacher_accuracy,
                                n=config.teacher_evidence, latency_p95_ms=config.teacher_p95_ms,
                                source="as given")
    result = decide(scores, GateThresholds.model_validate(
        config.model_dump(include=set(GateThresholds.model_fields))),
                    champion=champion_ref, teacher=teacher_ref)
    for v in result.verdicts:
        print(f"{v.candidate}: {'PASS' if v.passed else 'FAIL'} ({'; '.join(v.reasons)})")
    print(f"winner: {result.winner or 'none'} ({result.rule})")
    if config.out:
        Path(config.out).expanduser().write_text(result.model_dump_json(indent=1))
        print(f"decision: {config.out}")
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
            family=e.get("family") or "causal_lm", forgetting_bpb=e.get("forgetting_bpb"),
            forgetting_applies=e.get("forgetting_applies", True),
            correct=tuned.get("correct"),
            dataset_version=tuned.get("dataset_version") or e.get("dataset_version"),
            n_test=tuned.get("n_test"), hardware=tuned.get("latency_hardware")))
    return scores


def champion_reference(champion: dict) -> Reference | None:
    """The champion as the gate compares with it, from the ``evaluate_champion`` task's result
    (``{"version", "evaluation"}``) or from one evaluation's result; None before the first."""
    ev = champion.get("evaluation") if "evaluation" in champion else champion
    if not ev or ev.get("accuracy") is None:
        return None
    name = f"v{champion['version']}" if champion.get("version") else ev.get("candidate",
                                                                             "champion")
    return Reference(name=name, accuracy=ev["accuracy"], latency_p95_ms=ev.get("latency_p95_ms"),
                     cost_per_1k_requests=ev.get("cost_per_1k_requests"), n=ev.get("n_test"),
                     correct=ev.get("correct"), dataset_version=ev.get("dataset_version"),
                     source="re-evaluated on this test set")


def teacher_reference(teacher: dict) -> Reference:
    """The teacher as the gate compares with it, from the ``evaluate_teacher`` task's result.

    Only its accuracy on the traffic audit is read (``n_traffic_audit`` records); a result without
    that count (graded on its own thumbs-up labels, or, before the traffic audit, on the records
    experts saw because of negative feedback: biased) gives no accuracy. Neither
    ``selected_accuracy`` (biased low) nor the simulator's gold labels (``oracle_accuracy``) are
    ever read.
    """
    graded = teacher.get("n_traffic_audit")
    return Reference(
        name=teacher.get("model") or "teacher",
        accuracy=teacher.get("accuracy") if graded else None, n=graded or 0,
        accuracy_interval=teacher.get("accuracy_interval") if graded else None,
        correct=teacher.get("correct") if graded else None,
        dataset_version=teacher.get("dataset_version"),
        latency_p95_ms=teacher.get("latency_p95_ms"),
        source="its logged routes graded by experts on a random sample of its traffic (traffic "
               "audit); latency from its logs")


def gate_cycle(evaluations: list[dict], workload_id: str, params: dict,
               home: str | None = None, champion: dict | None = None,
               teacher: dict | None = None, latency: dict | None = None) -> GateResult:
    """The cycle's gate: thresholds from the run's params, references from this cycle.

    Args:
        evaluations: the evaluate task's results.
        workload_id: whose registry holds the champion.
        params: the DAG run's params (threshold names as in :class:`GateThresholds`; a check that
            may be off is off when its param is null).
        home: flywheel home.
        champion: the ``evaluate_champion`` task's result (the champion re-evaluated on this test
            set, with its per-query results); without one, the champion's recorded accuracy from
            the registry is compared unpaired and the reason says so.
        teacher: the ``evaluate_teacher`` task's result.
        latency: the ``time_head_to_head`` task's result (:class:`HeadToHead`), if any.
    """
    may_be_off = {k for k, f in GateThresholds.model_fields.items()
                  if type(None) in typing.get_args(f.annotation)}
    thresholds = GateThresholds.model_validate(
        {k: params[k] for k in GateThresholds.model_fields
         if params.get(k) is not None or (k in params and k in may_be_off)})
    reference = champion_reference(champion) if champion else None
    if reference is None:
        from tasks.registry.register import champion_accuracy, champion_version

        accuracy = champion_accuracy(workload_id, home)
        if accuracy is not None:
            version = champion_version(workload_id, home)
            reference = Reference(name=f"v{version.version}", accuracy=accuracy,
                                  source="registry tag: its own cycle's test set")
    teacher_ref = teacher_reference(teacher) if teacher else None
    return decide(scores_of(evaluations), thresholds, champion=reference, teacher=teacher_ref,
                  latency=HeadToHead.model_validate(latency) if latency else None)
