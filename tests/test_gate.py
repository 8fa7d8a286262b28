from __future__ import annotations

from tasks.gate import CandidateScore, GateThresholds, decide, gate_cycle


def scores():
    return [CandidateScore(candidate="big", accuracy=0.95, latency_p95_ms=300),
            CandidateScore(candidate="small", accuracy=0.945, latency_p95_ms=80),
            CandidateScore(candidate="slow", accuracy=0.97, latency_p95_ms=5000),
            CandidateScore(candidate="weak", accuracy=0.50, latency_p95_ms=10)]


def test_each_candidate_gets_a_verdict_with_reasons():
    result = decide(scores(), GateThresholds(min_accuracy=0.9, max_p95_latency_ms=1000))
    verdicts = {v.candidate: v for v in result.verdicts}
    assert verdicts["big"].passed and verdicts["small"].passed
    assert not verdicts["slow"].passed
    assert any("p95 latency 5000.0 ms > max 1000.0 ms" in r for r in verdicts["slow"].reasons)
    assert not verdicts["weak"].passed
    assert any("accuracy 0.500 < min 0.900" in r for r in verdicts["weak"].reasons)


def test_within_the_tie_margin_the_faster_candidate_wins():
    result = decide(scores(), GateThresholds(min_accuracy=0.9, max_p95_latency_ms=1000,
                                             tie_margin=0.01))
    assert result.winner == "small"
    result = decide(scores(), GateThresholds(min_accuracy=0.9, max_p95_latency_ms=1000,
                                             tie_margin=0.0))
    assert result.winner == "big"


def test_champion_blocks_a_worse_challenger():
    result = decide(scores(), GateThresholds(min_accuracy=0.9, max_p95_latency_ms=1000,
                                             max_accuracy_drop=0.0), champion_accuracy=0.948)
    verdicts = {v.candidate: v for v in result.verdicts}
    assert verdicts["big"].passed and not verdicts["small"].passed
    assert result.winner == "big"


def test_nothing_passes_means_no_winner():
    result = decide(scores(), GateThresholds(min_accuracy=0.99))
    assert result.winner is None and not any(v.passed for v in result.verdicts)


def test_gate_cycle_reads_thresholds_from_params(tmp_path):
    evaluations = [{"candidate": "a", "finetuned": {"accuracy": 0.8, "latency_p95_ms": 50},
                    "base": {"accuracy": 0.1}}]
    params = {"min_accuracy": 0.85, "max_p95_latency_ms": 100, "max_accuracy_drop": 0.02,
              "workload_id": "router"}
    result = gate_cycle(evaluations, "router", params, home=str(tmp_path))
    assert result.winner is None
    assert result.thresholds.min_accuracy == 0.85
    assert result.champion_accuracy is None
