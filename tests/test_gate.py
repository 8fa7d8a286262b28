from __future__ import annotations

import json

import pytest

from tasks.gate import CandidateScore, GateThresholds, Reference, decide, gate_cycle, main


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
    result = decide(scores(), GateThresholds(min_accuracy=0.9, max_p95_latency_ms=1000))
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
    result = decide(scores(), GateThresholds(min_accuracy=0.9, max_p95_latency_ms=1000,
                                             tie_margin=0.01))
    assert result.winner == "small"
    assert "cheapest" in result.rule
    result = decide(scores(), GateThresholds(min_accuracy=0.9, max_p95_latency_ms=1000,
                                             tie_margin=0.0))
    assert result.winner == "big"


def test_exact_tie_is_decided_by_cost_then_latency_never_by_order():
    a = CandidateScore(candidate="a", accuracy=0.9, latency_p95_ms=50, cost_per_1k_requests=0.2)
    b = CandidateScore(candidate="b", accuracy=0.9, latency_p95_ms=60, cost_per_1k_requests=0.1)
    t = GateThresholds(min_accuracy=0.5, tie_margin=0.0)
    assert decide([a, b], t).winner == "b"
    assert decide([b, a], t).winner == "b"
    # without a measured cost for every tied candidate, the lower p95 decides
    c = CandidateScore(candidate="c", accuracy=0.9, latency_p95_ms=40)
    assert decide([a, b, c], t).winner == "c"
    twins = [CandidateScore(candidate=n, accuracy=0.9, latency_p95_ms=50) for n in ("y", "x")]
    assert decide(twins, t).winner == "x"


def test_champion_re_evaluated_blocks_a_worse_challenger():
    champion = Reference(name="v3", accuracy=0.948, source="re-evaluated on this test set")
    result = decide(scores(), GateThresholds(min_accuracy=0.9, max_p95_latency_ms=1000,
                                             max_accuracy_drop=0.0), champion=champion)
    v = verdicts(result)
    assert v["big"].passed and not v["small"].passed
    assert v["small"].checks["max_accuracy_drop"] is False
    assert any("champion v3 0.948" in r and "re-evaluated" in r for r in v["small"].reasons)
    assert result.winner == "big"
    assert result.champion_accuracy == 0.948


def test_teacher_drop_and_speedup_checks():
    teacher = Reference(name="teacher-70b", accuracy=0.96, latency_p95_ms=2400,
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
    assert "no teacher accuracy to compare with" in v["big"].reasons


def test_forgetting_check_bounds_the_rise_over_the_base():
    t = GateThresholds(min_accuracy=0.5, max_p95_latency_ms=10000, max_forgetting=0.2)
    candidates = [
        CandidateScore(candidate="kept", accuracy=0.9, latency_p95_ms=50, forgetting_bpb=0.05),
        CandidateScore(candidate="forgot", accuracy=0.95, latency_p95_ms=50, forgetting_bpb=0.6),
        CandidateScore(candidate="unmeasured", accuracy=0.95, latency_p95_ms=50),
        CandidateScore(candidate="encoder", accuracy=0.8, latency_p95_ms=5, family="encoder")]
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
    assert verdicts(decide(candidates, GateThresholds(min_accuracy=0.5)))["forgot"].passed


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
              "min_speedup": 5.0, "workload_id": "router"}
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


def test_cli_prints_each_verdict(tmp_path, capsys):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps([s.model_dump() for s in scores()]))
    assert main(["--evaluations", str(path), "--min-accuracy", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "weak: FAIL" in out and "winner: small" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="JSON list"):
        main(["--evaluations", str(bad)])
