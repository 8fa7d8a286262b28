from __future__ import annotations

import json

import pytest

from tasks.evaluation.gate import (
    CandidateScore,
    GateThresholds,
    Reference,
    compare_paired,
    decide,
    gate_cycle,
    main,
    mcnemar_exact,
    paired_difference_interval,
    teacher_reference,
    unpaired_difference_interval,
    wilson_interval,
)


def without_teacher(**limits) -> GateThresholds:
    """Thresholds with the teacher check off, for tests about the other checks."""
    return GateThresholds(max_drop_vs_teacher=None, **limits)


def scores():
    return [CandidateScore(candidate="big", accuracy=0.95, latency_p95_ms=300,
                           cost_per_1k_requests=0.30),
            CandidateScore(candidate="small", accuracy=0.945, latency_p95_ms=80,
                           cost_per_1k_requests=0.05),
            CandidateScore(candidate="slow", accuracy=0.97, latency_p95_ms=5000,
                           cost_per_1k_requests=2.0),
            CandidateScore(candidate="weak", accuracy=0.50, latency_p95_ms=10,
                           cost_per_1k_requests=0.01)]


def verdicts(result):
    return {v.candidate: v for v in result.verdicts}


def test_pass_and_fail_on_accuracy_and_on_latency_each_with_its_reason():
    result = decide(scores(), without_teacher(min_accuracy=0.9, max_p95_latency_ms=1000))
    v = verdicts(result)
    assert v["big"].passed and v["small"].passed
    assert v["big"].checks == {"min_accuracy": True, "max_p95_latency_ms": True,
                               "max_accuracy_drop": True}
    assert not v["slow"].passed and v["slow"].checks["min_accuracy"]
    assert v["slow"].checks["max_p95_latency_ms"] is False
    assert "p95 latency 5000.0 ms > max 1000.0 ms" in v["slow"].reasons
    assert not v["weak"].passed and v["weak"].checks["max_p95_latency_ms"]
    assert "accuracy 0.500 < min 0.900" in v["weak"].reasons
    assert "no champion yet" in v["big"].reasons


def test_tie_within_the_margin_goes_to_the_cheapest():
    result = decide(scores(), without_teacher(min_accuracy=0.9, max_p95_latency_ms=1000,
                                              tie_margin=0.01))
    assert result.winner == "small"
    assert "cheapest" in result.rule
    result = decide(scores(), without_teacher(min_accuracy=0.9, max_p95_latency_ms=1000,
                                              tie_margin=0.0))
    assert result.winner == "big"


def test_exact_tie_is_decided_by_cost_then_latency_never_by_order():
    a = CandidateScore(candidate="a", accuracy=0.9, latency_p95_ms=50, cost_per_1k_requests=0.2)
    b = CandidateScore(candidate="b", accuracy=0.9, latency_p95_ms=60, cost_per_1k_requests=0.1)
    t = without_teacher(min_accuracy=0.5, tie_margin=0.0)
    assert decide([a, b], t).winner == "b"
    assert decide([b, a], t).winner == "b"
    # without a measured cost for every tied candidate, the lower p95 decides
    c = CandidateScore(candidate="c", accuracy=0.9, latency_p95_ms=40)
    assert decide([a, b, c], t).winner == "c"
    twins = [CandidateScore(candidate=n, accuracy=0.9, latency_p95_ms=50) for n in ("y", "x")]
    assert decide(twins, t).winner == "x"


def test_without_per_query_results_the_unpaired_rule_applies_and_says_so():
    champion = Reference(name="v3", accuracy=0.948, source="re-evaluated on this test set")
    result = decide(scores(), without_teacher(min_accuracy=0.9, max_p95_latency_ms=1000),
                    champion=champion)
    v = verdicts(result)
    assert v["big"].passed and not v["small"].passed
    assert v["small"].checks["max_accuracy_drop"] is False
    assert any("champion v3 0.948" in r and "re-evaluated" in r for r in v["small"].reasons)
    assert any(r.startswith("unpaired (no per-query results for the candidate)")
               for r in v["small"].reasons)
    assert result.winner == "big"
    assert result.champion_accuracy == 0.948


def test_teacher_drop_and_speedup_checks():
    teacher = Reference(name="teacher-70b", accuracy=0.96, n=200, latency_p95_ms=2400,
                        source="from its logs")
    t = GateThresholds(min_accuracy=0.9, max_p95_latency_ms=10000, max_drop_vs_teacher=0.015,
                       min_speedup=10)
    v = verdicts(decide(scores(), t, teacher=teacher))
    assert v["slow"].checks["max_drop_vs_teacher"] and not v["slow"].checks["min_speedup"]
    assert "speed-up 0.5x < min 10.0x" in v["slow"].reasons[-1]
    assert v["big"].checks["max_drop_vs_teacher"] and v["big"].checks["min_speedup"] is False
    assert "speed-up 8.0x < min 10.0x" in v["big"].reasons[-1]
    assert v["small"].passed  # 0.945 is exactly the teacher's 0.960 - 0.015; 30x faster
    assert v["weak"].checks["max_drop_vs_teacher"] is False


def test_a_check_without_its_reference_fails():
    t = GateThresholds(min_accuracy=0.5, max_drop_vs_teacher=0.1, min_speedup=2)
    v = verdicts(decide(scores(), t, teacher=None))
    assert not any(x.passed for x in v.values())
    assert any(r.startswith("no teacher accuracy from a traffic audit")
               for r in v["big"].reasons)


def test_forgetting_check_bounds_the_rise_over_the_base():
    t = without_teacher(min_accuracy=0.5, max_p95_latency_ms=10000, max_forgetting=0.2)
    candidates = [
        CandidateScore(candidate="kept", accuracy=0.9, latency_p95_ms=50, forgetting_bpb=0.05),
        CandidateScore(candidate="forgot", accuracy=0.95, latency_p95_ms=50, forgetting_bpb=0.6),
        CandidateScore(candidate="unmeasured", accuracy=0.95, latency_p95_ms=50),
        CandidateScore(candidate="encoder", accuracy=0.8, latency_p95_ms=5, family="encoder",
                       forgetting_applies=False)]
    result = decide(candidates, t)
    v = verdicts(result)
    assert v["kept"].passed and "forgetting +0.050 bits/byte vs its base <= max 0.200" in \
        v["kept"].reasons
    assert not v["forgot"].passed and v["forgot"].checks["max_forgetting"] is False
    assert "forgetting +0.600 bits/byte vs its base > max 0.200" in v["forgot"].reasons
    assert v["unmeasured"].checks["max_forgetting"] is False  # no figure, no pass
    assert v["encoder"].checks["max_forgetting"] and "n/a" in v["encoder"].reasons[-1]
    assert result.winner == "kept"  # the more accurate "forgot" is out
    # unset, the figure is reported but decides nothing
    assert verdicts(decide(candidates, without_teacher(min_accuracy=0.5)))["forgot"].passed


def test_nothing_passes_means_no_winner():
    result = decide(scores(), GateThresholds(min_accuracy=0.99))
    assert result.winner is None and not any(v.passed for v in result.verdicts)


def test_duplicate_candidates_and_bad_scores_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        decide(scores() + scores()[:1], GateThresholds())
    with pytest.raises(ValueError):
        CandidateScore(candidate="x", accuracy=1.5, latency_p95_ms=1)


def test_gate_cycle_uses_the_re_evaluated_champion_and_the_teacher(tmp_path):
    evaluations = [{"candidate": "a", "finetuned": {"accuracy": 0.8, "latency_p95_ms": 50,
                                                    "cost_per_1k_requests": 0.01},
                    "base": {"accuracy": 0.1}}]
    params = {"min_accuracy": 0.5, "max_p95_latency_ms": 100, "max_accuracy_drop": 0.02,
              "min_speedup": 5.0, "max_drop_vs_teacher": None, "workload_id": "router"}
    champion = {"version": "4", "evaluation": {"accuracy": 0.85, "latency_p95_ms": 40}}
    teacher = {"model": "teacher-70b", "n_test": 10, "accuracy": 1.0, "latency_p95_ms": 2000}
    result = gate_cycle(evaluations, "router", params, home=str(tmp_path), champion=champion,
                        teacher=teacher)
    assert result.winner is None
    assert result.champion.name == "v4" and result.champion_accuracy == 0.85
    assert result.verdicts[0].checks == {"min_accuracy": True, "max_p95_latency_ms": True,
                                         "max_accuracy_drop": False, "min_speedup": True}
    first_cycle = gate_cycle(evaluations, "router", params, home=str(tmp_path))
    assert first_cycle.champion is None
    assert first_cycle.verdicts[0].checks["min_speedup"] is False  # no teacher given
    # the teacher check is on unless its param is null; a teacher graded on its own thumbs-up
    # labels (no traffic-audit count) gives it nothing to compare with
    params.pop("max_drop_vs_teacher")
    on = gate_cycle(evaluations, "router", params, home=str(tmp_path), champion=champion,
                    teacher=teacher)
    assert on.thresholds.max_drop_vs_teacher == 0.03
    assert on.verdicts[0].checks["max_drop_vs_teacher"] is False
    assert any(r.startswith("no teacher accuracy from a traffic audit")
               for r in on.verdicts[0].reasons)


def test_cli_prints_each_verdict(tmp_path, capsys):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps([s.model_dump() for s in scores()]))
    assert main(["--evaluations", str(path), "--min-accuracy", "0.9",
                 "--max-drop-vs-teacher", "none"]) == 0
    out = capsys.readouterr().out
    assert "weak: FAIL" in out and "winner: small" in out
    # by default the teacher check is on: without a teacher nothing passes
    assert main(["--evaluations", str(path), "--min-accuracy", "0.9"]) == 0
    assert "winner: none" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="JSON list"):
        main(["--evaluations", str(bad)])


def test_cli_re_judges_a_cycle_from_its_report(tmp_path, capsys):
    new, ref = paired(940, 12, 30, 18)
    report = {
        "evaluations": [{"candidate": "a", "finetuned": {
            "accuracy": 0.952, "latency_p95_ms": 50, "cost_per_1k_requests": 0.01,
            "correct": new, "dataset_version": "v1", "n_test": 1000}}],
        "champion_before": {"version": "3", "evaluation": {
            "accuracy": 0.97, "latency_p95_ms": 60, "correct": ref, "dataset_version": "v1"}},
        "teacher": {"model": "teacher-70b", "n_test": 1000, "n_traffic_audit": 12,
                    "accuracy": 0.5}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert main(["--evaluations", str(path), "--min-accuracy", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "a: FAIL" in out and "vs champion v3 on the same 1000 test queries" in out
    assert "not enough evidence: the teacher is graded on 12 traffic-audit records" in out
    # a looser margin, typed on the command line, and the teacher check off
    decided = tmp_path / "decision.json"  # what `flywheel register --decision` reads
    assert main(["--evaluations", str(path), "--min-accuracy", "0.5", "--max-accuracy-drop",
                 "0.02", "--max-drop-vs-teacher", "none", "--out", str(decided)]) == 0
    assert "winner: a" in capsys.readouterr().out
    written = json.loads(decided.read_text())
    assert written["winner"] == "a" and written["verdicts"][0]["passed"] is True


# ------------------------------------------------------------------------ paired comparisons


def paired(both: int, only_new: int, only_ref: int, neither: int) -> tuple[str, str]:
    """Per-query vectors of a challenger and a reference with these paired counts."""
    new = "1" * both + "1" * only_new + "0" * only_ref + "0" * neither
    ref = "1" * both + "0" * only_new + "1" * only_ref + "0" * neither
    return new, ref


def duel(counts: tuple[int, int, int, int], cost: float | None = 0.02,
         champion_cost: float | None = 0.05, p95: float = 50, champion_p95: float = 60,
         **limits) -> tuple[object, object]:
    """The verdict of a challenger against champion v3 with these paired counts."""
    new, ref = paired(*counts)
    challenger = CandidateScore(candidate="c", accuracy=new.count("1") / len(new),
                                latency_p95_ms=p95, cost_per_1k_requests=cost, correct=new,
                                dataset_version="v1", n_test=len(new))
    champion = Reference(name="v3", accuracy=ref.count("1") / len(ref),
                         latency_p95_ms=champion_p95, cost_per_1k_requests=champion_cost,
                         correct=ref, dataset_version="v1", source="re-evaluated")
    result = decide([challenger], without_teacher(min_accuracy=0.5, **limits),
                    champion=champion)
    return result.verdicts[0], champion


def champion_reason(verdict) -> str:
    return next(r for r in verdict.reasons if "champion" in r)


def test_a_worse_challenger_is_refused_even_within_the_old_two_points():
    # 1,000 paired queries: wrong on 30 the champion got right, right on 12 it got wrong
    verdict, champion = duel((940, 12, 30, 18))  # 0.952 vs 0.970, and cheaper
    assert not verdict.passed and verdict.checks["max_accuracy_drop"] is False
    reason = champion_reason(verdict)
    assert reason.startswith("vs champion v3 on the same 1000 test queries: 0.952 vs 0.970, "
                             "-0.018 [-0.032, -0.005] (95% CI), McNemar p=0.00792 (b=30, c=12)")
    assert reason.endswith("significantly worse: refused")
    comparison = verdict.comparisons["champion"]
    assert (comparison.n, comparison.b, comparison.c) == (1000, 30, 12)
    assert comparison.interval[1] < 0  # the whole interval lies below the champion
    # the old unpaired rule (2 points allowed) would have waved it through
    unpaired = champion.model_copy(update={"correct": None})
    old = decide([CandidateScore(candidate="c", accuracy=0.952, latency_p95_ms=50)],
                 without_teacher(min_accuracy=0.5, max_accuracy_drop=0.02), champion=unpaired)
    assert old.verdicts[0].passed


def test_a_significantly_better_challenger_passes_even_when_not_cheaper():
    verdict, _ = duel((940, 30, 12, 18), cost=0.09)
    assert verdict.passed
    assert champion_reason(verdict).endswith("significantly better: passes")
    assert "0.970 vs 0.952, +0.018 [" in champion_reason(verdict)


def test_at_equal_accuracy_only_a_cheaper_challenger_passes():
    verdict, _ = duel((900, 10, 10, 80))  # the same accuracy, cost 0.02 < 0.05
    assert verdict.passed
    assert "no significant difference; equal accuracy and cheaper (cost per 1,000 requests " \
           "0.02000 is below v3's 0.05000 by 10%): passes" in champion_reason(verdict)
    verdict, _ = duel((900, 10, 10, 80), cost=None, p95=40)  # no cost: the lower p95 decides
    assert verdict.passed and "p95 40.0 ms is below v3's 60.0 ms by 10%" in \
        champion_reason(verdict)
    verdict, _ = duel((900, 10, 10, 80), cost=0.05)
    assert not verdict.passed
    assert champion_reason(verdict).endswith(
        "not better, not cheaper (cost per 1,000 requests 0.05000 is not below v3's 0.05000 by "
        "10%): refused")
    # 5% cheaper is within a p95's noise on a shared machine: not enough to swap the champion
    verdict, _ = duel((900, 10, 10, 80), cost=None, p95=57)
    assert not verdict.passed and "p95 57.0 ms is not below v3's 60.0 ms by 10%" in \
        champion_reason(verdict)
    assert duel((900, 10, 10, 80), cost=None, p95=57, min_saving=0.04)[0].passed
    # one query worse and not significant: refused at the default drop of 0, allowed at 0.01
    verdict, _ = duel((900, 10, 11, 79))
    assert not verdict.passed and "below the champion by the point estimate" in \
        champion_reason(verdict)
    assert duel((900, 10, 11, 79), max_accuracy_drop=0.01)[0].passed


def test_too_little_evidence_is_said_and_never_counts_as_better():
    # 8 of 8 discordant queries favour the challenger (p = 0.0078) but on 40 queries only
    verdict, _ = duel((30, 8, 0, 2), cost=0.09)
    assert not verdict.passed
    reason = champion_reason(verdict)
    assert "not enough evidence: n=40 < min_paired_queries 100, so it cannot be shown better" \
        in reason and "significantly better" not in reason
    assert reason.endswith("not better, not cheaper (cost per 1,000 requests 0.09000 is not "
                           "below v3's 0.05000 by 10%): refused")
    verdict, _ = duel((30, 8, 0, 2))  # cheaper: passes on the equal-and-cheaper rule
    assert verdict.passed and "not enough evidence: n=40" in champion_reason(verdict)
    verdict, _ = duel((150, 0, 0, 50), cost=0.09)  # identical answers: nothing to test
    assert not verdict.passed
    assert "not enough evidence: no discordant pair" in champion_reason(verdict)
    verdict, _ = duel((30, 8, 0, 2), cost=0.09, min_paired_queries=40)
    assert verdict.passed and "significantly better" in champion_reason(verdict)


def test_pairing_needs_both_vectors_on_the_same_test_set():
    new, ref = paired(940, 12, 30, 18)
    challenger = CandidateScore(candidate="c", accuracy=0.952, latency_p95_ms=50, correct=new,
                                dataset_version="v2")
    champion = Reference(name="v3", accuracy=0.97, correct=ref, dataset_version="v1",
                         source="re-evaluated")
    reason = champion_reason(decide([challenger], without_teacher(min_accuracy=0.5),
                                    champion=champion).verdicts[0])
    assert reason.startswith("unpaired (different test sets: v2 vs v1)")
    registry_only = Reference(name="v3", accuracy=0.97, source="registry tag")
    reason = champion_reason(decide([challenger], without_teacher(min_accuracy=0.5),
                                    champion=registry_only).verdicts[0])
    assert reason.startswith("unpaired (no per-query results for v3)")


def test_mcnemar_exact_p_values():
    # by hand: P(X <= k) for X ~ Binomial(n, 1/2), doubled
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(30, 12) == pytest.approx(0.007915897334896727, rel=1e-12)
    assert mcnemar_exact(12, 30) == mcnemar_exact(30, 12)
    assert mcnemar_exact(10, 10) == 1.0 and mcnemar_exact(0, 0) == 1.0
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(6, 16), (14, 21), (0, 1), (3, 40), (200, 260), (1500, 1400)]:
        assert mcnemar_exact(b, c) == pytest.approx(
            stats.binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)


def test_intervals_match_published_values():
    # Newcombe's paired interval on Cavo et al. (2012), as in Fagerland, Lydersen & Laake,
    # "Statistical Analysis of Contingency Tables", ch. 8: -0.0621 (95% CI -0.1186 to -0.0046)
    lower, upper = paired_difference_interval(59, 6, 16, 80)
    assert lower == pytest.approx(-0.1186, abs=5e-5) and upper == pytest.approx(-0.0046, abs=5e-5)
    comparison = compare_paired(*paired(59, 6, 16, 80), "ref")
    assert comparison.difference == pytest.approx(-10 / 161)
    assert comparison.interval == pytest.approx((lower, upper))
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(8, 10), (0, 12), (45, 50), (412, 500)]:
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_pairing_skips_queries_either_did_not_score():
    # "-": not scored; past the shorter vector (an evaluation with a limit): not scored either
    comparison = compare_paired("1101", "-01-10", "teacher")
    assert (comparison.n, comparison.b, comparison.c) == (2, 1, 1)
    assert comparison.accuracy == comparison.reference_accuracy == 0.5


# ------------------------------------------------------------------------ the teacher


def test_teacher_check_needs_enough_traffic_audit_records():
    candidate = [CandidateScore(candidate="c", accuracy=0.9, latency_p95_ms=50, n_test=200)]
    few = Reference(name="teacher-70b", accuracy=0.8, n=12, latency_p95_ms=2400)
    v = decide(candidate, GateThresholds(min_accuracy=0.5), teacher=few).verdicts[0]
    assert not v.passed and v.checks["max_drop_vs_teacher"] is False
    assert ("not enough evidence: the teacher is graded on 12 traffic-audit records "
            "< min_teacher_evidence 30, so the candidate cannot be compared with it") in v.reasons
    unknown = few.model_copy(update={"n": None})
    v = decide(candidate, GateThresholds(min_accuracy=0.5), teacher=unknown).verdicts[0]
    assert not v.passed and "an unknown number of" in v.reasons[-1]
    v = decide(candidate, GateThresholds(min_accuracy=0.5, min_teacher_evidence=10),
               teacher=few).verdicts[0]
    low, high = unpaired_difference_interval(180, 200, round(0.8 * 12), 12)
    assert v.passed and v.reasons[-1] == (
        "unpaired (no per-query results for the candidate): accuracy 0.900 on 200 test queries "
        "vs teacher teacher-70b 0.800 on 12 traffic-audit records (a random sample of its "
        f"traffic): +0.100 [{low:+.3f}, {high:+.3f}] (95% CI, independent samples); within the "
        "allowed drop 0.030")


def test_unpaired_difference_interval_matches_newcombe():
    # Newcombe (1998), "Interval estimation for the difference between independent
    # proportions", table II, method 10 (score interval without continuity correction)
    assert unpaired_difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339),
                                                                         abs=5e-5)
    assert unpaired_difference_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090),
                                                                       abs=5e-5)
    assert unpaired_difference_interval(10, 10, 0, 20) == pytest.approx((0.6791, 1.0), abs=5e-5)
    assert unpaired_difference_interval(3, 10, 0, 0) == (-1.0, 1.0)


def test_teacher_check_pairs_on_the_traffic_audit_test_queries():
    # 200 test queries, 50 of them traffic-audit records: the teacher right on 40 of those, and
    # graded on 80 traffic-audit records in all (the other 30 are not in this test split)
    teacher = "1" * 40 + "0" * 10 + "-" * 150
    # the candidate: right on every other query, but on the traffic-audit ones wrong on 4 the
    # teacher got right and right on 2 it got wrong: 38/50 = 0.76 vs 0.80 there
    candidate = "1" * 36 + "0" * 4 + "1" * 2 + "0" * 8 + "1" * 150
    score = CandidateScore(candidate="c", accuracy=candidate.count("1") / 200,
                           latency_p95_ms=50, correct=candidate, dataset_version="v1",
                           n_test=200)
    ref = Reference(name="teacher-70b", accuracy=0.8, n=80, correct=teacher,
                    dataset_version="v1", latency_p95_ms=2400)
    assert score.accuracy == 0.94  # unpaired, it would look far better than the teacher
    v = decide([score], GateThresholds(min_accuracy=0.5), teacher=ref).verdicts[0]
    assert v.checks["max_drop_vs_teacher"] is False
    reason = v.reasons[-1]
    assert reason.startswith("vs teacher teacher-70b on the same 50 traffic-audit test queries "
                             "(of its 80 traffic-audit records): 0.760 vs 0.800, -0.040 [")
    assert reason.endswith("beyond the allowed drop 0.030")
    assert (v.comparisons["teacher"].b, v.comparisons["teacher"].c) == (4, 2)
    v = decide([score], GateThresholds(min_accuracy=0.5, max_drop_vs_teacher=0.05),
               teacher=ref).verdicts[0]
    assert v.passed and v.reasons[-1].endswith("within the allowed drop 0.050")

    # too few traffic-audit records in the test split to pair on: unpaired, both n's stated
    v = decide([score], GateThresholds(min_accuracy=0.5, min_teacher_evidence=60),
               teacher=ref).verdicts[0]
    reason = v.reasons[-1]
    assert reason.startswith("unpaired (50 traffic-audit test queries < min_teacher_evidence "
                             "60): accuracy 0.940 on 200 test queries vs teacher teacher-70b "
                             "0.800 on 80 traffic-audit records")
    assert "+0.140 [" in reason and "teacher" not in v.comparisons
    assert v.checks["max_drop_vs_teacher"] is True


def test_the_gate_reads_only_the_teachers_traffic_audit():
    """A teacher result graded on the records experts saw because of negative feedback (the
    format before the traffic audit, or its second, biased figure) gives the gate no accuracy."""
    old = {"model": "teacher-70b", "n_test": 1000, "n_expert": 60, "accuracy": 0.5,
           "correct": "10" * 30, "latency_p95_ms": 2400}
    assert teacher_reference(old).accuracy is None and teacher_reference(old).correct is None
    new = {"model": "teacher-70b", "n_test": 1000, "n_traffic_audit": 40, "accuracy": 0.95,
           "accuracy_interval": [0.83, 0.99], "n_selected": 200, "selected_accuracy": 0.2,
           "latency_p95_ms": 2400}
    ref = teacher_reference(new)
    assert (ref.accuracy, ref.n, ref.accuracy_interval) == (0.95, 40, (0.83, 0.99))
    candidate = [CandidateScore(candidate="c", accuracy=0.9, latency_p95_ms=50, n_test=300)]
    v = decide(candidate, GateThresholds(min_accuracy=0.5), teacher=ref).verdicts[0]
    # 0.9 is far above the biased 0.2, but 0.05 below the teacher on its traffic: refused
    assert v.checks["max_drop_vs_teacher"] is False
    assert "vs teacher teacher-70b 0.950 [0.830, 0.990] on 40 traffic-audit records" in (
        v.reasons[-1])
    v = decide(candidate, GateThresholds(min_accuracy=0.5), teacher=teacher_reference(old)
               ).verdicts[0]
    assert v.reasons[-1].startswith("no teacher accuracy from a traffic audit")


def test_speedup_reason_says_where_each_latency_comes_from():
    score = CandidateScore(candidate="c", accuracy=0.9, latency_p95_ms=50,
                           hardware="cpu:x86_64 x2 threads")
    teacher = Reference(name="teacher-70b", accuracy=0.9, n=100, latency_p95_ms=2400)
    v = decide([score], without_teacher(min_accuracy=0.5, min_speedup=10),
               teacher=teacher).verdicts[0]
    assert v.reasons[-1] == ("speed-up 48.0x >= min 10.0x (teacher p95 2400.0 ms from its logs; "
                             "candidate p95 50.0 ms measured on cpu:x86_64 x2 threads)")


def test_gate_cycle_pairs_what_the_cycle_tasks_return(tmp_path):
    new, ref = paired(940, 12, 30, 18)
    teacher_vector = "".join("1" if i % 2 else "0" for i in range(60)) + "-" * 940
    evaluations = [{"candidate": "a", "dataset_version": "v1",
                    "finetuned": {"accuracy": 0.952, "latency_p95_ms": 50, "n_test": 1000,
                                  "cost_per_1k_requests": 0.01, "correct": new,
                                  "dataset_version": "v1", "latency_hardware": "cpu:x"}}]
    champion = {"version": "3", "evaluation": {
        "accuracy": 0.97, "latency_p95_ms": 60, "cost_per_1k_requests": 0.05, "correct": ref,
        "dataset_version": "v1", "n_test": 1000}}
    teacher = {"model": "teacher-70b", "n_test": 1000, "n_traffic_audit": 60, "accuracy": 0.5,
               "accuracy_interval": [0.38, 0.62], "correct": teacher_vector,
               "dataset_version": "v1", "latency_p95_ms": 2400, "oracle_accuracy": 0.0}
    params = {"min_accuracy": 0.5, "max_p95_latency_ms": 1000, "max_accuracy_drop": 0.0,
              "max_drop_vs_teacher": 0.03, "alpha": 0.05, "min_paired_queries": 100,
              "min_teacher_evidence": 30, "workload_id": "router"}
    result = gate_cycle(evaluations, "router", params, home=str(tmp_path), champion=champion,
                        teacher=teacher)
    v = result.verdicts[0]
    assert v.checks == {"min_accuracy": True, "max_p95_latency_ms": True,
                        "max_accuracy_drop": False, "max_drop_vs_teacher": True}
    assert "p95 latency 50.0 ms on cpu:x <= max 1000.0 ms" in v.reasons
    assert v.comparisons["champion"].n == 1000 and v.comparisons["teacher"].n == 60
    assert result.teacher.n == 60 and result.champion.name == "v3"
    assert result.winner is None


# --------------------------------------------------------------------------------------------
# head-to-head latency: the gate's "cheaper" is not chosen by load on the machine


def _spin(rounds: int) -> int:
    """CPU-bound work (what a model's forward pass is to the machine)."""
    total = 0
    for i in range(rounds):
        total += i * i
    return total


class _Load:
    """Busy processes on every core (and one more), started and stopped by PID."""

    def __init__(self, per_core: int = 1) -> None:
        self.processes: list = []
        self.per_core = per_core

    def start(self) -> None:
        import os
        import subprocess
        import sys

        for _ in range((os.cpu_count() or 2) * self.per_core + 1):
            self.processes.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.processes.clear()


def test_load_while_the_champion_is_timed_does_not_make_an_equal_challenger_cheaper():
    """Champion and challenger do the same work. Timed apart, the champion while a neighbour
    loads the cores, the challenger looks cheaper; timed head to head (the load arriving part-way,
    as it does), the gate sees no difference beyond the spread and refuses to swap them; a
    challenger doing a third of the work is still found faster."""
    from tasks.evaluation.latency import compare, time_interleaved

    load = _Load()
    heavy = _Load(per_core=2)  # whatever else shares the machine, the champion is the slower
    work = 60_000
    queries = [f"q{i}" for i in range(40)]
    same = lambda q: _spin(work)  # noqa: E731
    try:
        heavy.start()
        champion_apart = time_interleaved({"v3": same}, queries)["v3"]
        heavy.stop()
        challenger_apart = time_interleaved({"c": same}, queries)["c"]
        # the old rule, on the two timings' medians: fooled by the load
        verdict, _ = duel((900, 10, 10, 80), cost=None, p95=sorted(challenger_apart)[20],
                          champion_p95=sorted(champion_apart)[20])
        assert verdict.passed, champion_reason(verdict)

        calls = {"n": 0}

        def champion(query: str) -> int:  # the load arrives at the 15th timed query
            calls["n"] += 1
            if calls["n"] == 2 + 15:
                load.start()
            return _spin(work)

        together = compare({"v3": champion, "c": same}, queries, reference="v3")
    finally:
        load.stop()
        heavy.stop()
    verdict = _duel_with(together)
    reason = champion_reason(verdict)
    assert not verdict.passed, reason
    assert "timed head to head, interleaved on the same 40 queries" in reason
    assert "not faster beyond the measurement's spread" in reason
    assert together.versus["c"].high >= 1.0 - 0.1  # within the spread of "no difference"

    half = compare({"v3": same, "c": lambda q: _spin(work // 3)}, queries, reference="v3")
    verdict = _duel_with(half)
    assert verdict.passed and "faster beyond the measurement's spread" in champion_reason(verdict)


def _duel_with(latency):
    """The equal-accuracy duel of :func:`duel`, "cheaper" read from the head-to-head timing."""
    new, ref = paired(900, 10, 10, 80)
    challenger = CandidateScore(candidate="c", accuracy=0.91, correct=new, dataset_version="v1",
                                latency_p95_ms=latency.timings["c"].p95_ms,
                                cost_per_1k_requests=0.01)  # its own cost says "cheaper"
    champion = Reference(name="v3", accuracy=0.91, correct=ref, dataset_version="v1",
                         latency_p95_ms=latency.timings["v3"].p95_ms, cost_per_1k_requests=0.05)
    return decide([challenger], without_teacher(min_accuracy=0.5), champion=champion,
                  latency=latency).verdicts[0]
