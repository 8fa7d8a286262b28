from __future__ import annotations

from tasks.report import render


def test_report_shows_funnel_models_gate_and_registry():
    dataset = {"version": "vabc", "n_train": 30, "n_test": 20,
               "funnel": {"records_in_window": 900, "with_feedback": 120, "negative": 50,
                          "positive": 70, "after_dedup": 50}}
    latency = {"latency_p50_ms": 10.0, "latency_p95_ms": 12.5, "latency_hardware": "cpu"}
    evaluations = [{"candidate": "s-lora", "base": {"candidate": "base:s", "accuracy": 0.1,
                                                   "macro_f1": 0.02, **latency},
                    "finetuned": {"candidate": "s-lora", "accuracy": 0.6, "macro_f1": 0.55,
                                  **latency}}]
    decision = {"verdicts": [{"candidate": "s-lora", "passed": True,
                              "reasons": ["accuracy 0.600 >= min 0.450"]}],
                "winner": "s-lora", "rule": "most accurate"}
    text = render("c1", "router",
                  {"lines_in": 1000, "quarantined": 3, "pii_redacted": {"email": 2, "phone": 1}},
                  {"records_in": 997, "quarantined": 2, "duplicates": 5, "stored": 990},
                  dataset,
                  {"model": "teacher-70b", "accuracy": 1.0, "oracle_accuracy": 0.96,
                   "latency_p50_ms": 1800.0, "latency_p95_ms": 3000.0},
                  evaluations, decision,
                  {"registered": True, "model_name": "flywheel-router", "version": "3",
                   "alias": "challenger"})
    assert "| records in window" in text and "900" in text
    assert "PII values redacted (email 2, phone 1) | 3" in text
    assert "0.960, simulation oracle" in text
    assert "s-lora (fine-tuned)" in text and "0.600" in text and "PASS" in text
    assert "base:s (zero-shot)" in text and "0.100" in text
    assert "flywheel-router version 3 with alias `challenger`" in text
    assert "tiny offline" in text  # says which models produced the numbers
