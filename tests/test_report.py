from __future__ import annotations

import json

from tasks.plots import pareto_front
from tasks.report import render, write_report

LATENCY = {"latency_p50_ms": 10.0, "latency_p95_ms": 12.5, "ttft_p50_ms": 3.0,
           "latency_hardware": "cpu", "throughput_qps": 80.0, "throughput_batch_size": 16,
           "cost_per_1k_requests": 0.0035, "price_per_device_hour": 1.0}


def cycle_inputs():
    dataset = {"version": "vabc", "n_train": 30, "n_test": 20,
               "funnel": {"records_in_window": 900, "with_feedback": 120, "negative": 50,
                          "positive": 70, "after_dedup": 50, "judged_routing_errors": 7}}
    evaluations = [{"candidate": "s-lora", "mlflow_run_id": "r1", "base_model": "flywheel-llama-s",
                    "base": {"candidate": "base:s", "prompting": "zero-shot", "accuracy": 0.1,
                             "mc_accuracy": 0.2, "macro_f1": 0.02, **LATENCY},
                    "base_icl": {"candidate": "base:s:icl", "prompting": "in-context (k=4)",
                                 "accuracy": 0.3, "macro_f1": 0.2, **LATENCY,
                                 "latency_p95_ms": 40.0},
                    "finetuned": {"candidate": "s-lora", "prompting": "fine-tuned",
                                  "accuracy": 0.6, "mc_accuracy": 0.62, "macro_f1": 0.55,
                                  "confusion": {"banking": {"banking": 5, "travel": 1},
                                                "travel": {"travel": 4, "(none)": 1}},
                                  **LATENCY}}]
    decision = {"verdicts": [{"candidate": "s-lora", "passed": True,
                              "reasons": ["accuracy 0.600 >= min 0.450"]}],
                "winner": "s-lora", "rule": "most accurate"}
    teacher = {"model": "teacher-70b", "n_test": 20, "accuracy": 0.9, "n_traffic_audit": 40,
               "accuracy_interval": [0.77, 0.96], "oracle_accuracy": 0.96,
               "latency_p50_ms": 1800.0, "latency_p95_ms": 3000.0}
    champion = {"version": "2", "candidate": "m-lora",
                "evaluation": {"candidate": "champion:v2", "prompting": "fine-tuned",
                               "accuracy": 0.55, "macro_f1": 0.5, **LATENCY}}
    return dataset, evaluations, decision, teacher, champion


def test_report_shows_funnel_models_gate_registry_and_promotion():
    dataset, evaluations, decision, teacher, champion = cycle_inputs()
    text = render("c1", "router",
                  {"lines_in": 1000, "quarantined": 3, "pii_redacted": {"email": 2, "phone": 1}},
                  {"records_in": 997, "quarantined": 2, "duplicates": 5, "stored": 990},
                  dataset, teacher, evaluations, decision,
                  {"registered": True, "model_name": "flywheel-router", "version": "3",
                   "alias": "challenger"}, champion,
                  {"promoted": True, "version": "3", "previous": "2", "changed": True})
    assert "| records in window" in text and "900" in text
    assert "| judged routing errors" in text  # any count the curate stage adds shows up
    assert "PII values redacted (email 2, phone 1) | 3" in text
    assert "0.900 [0.770, 0.960] (traffic audit, n=40); gold 0.960 (simulation oracle)" in text
    assert "s-lora" in text and "0.600" in text and "PASS" in text and "0.00350" in text
    assert "base:s:icl" in text and "in-context (k=4)" in text
    assert "champion:v2 (m-lora, re-evaluated)" in text
    assert "flywheel-router version 3 with alias `challenger`" in text
    assert "version 3 holds `champion`; version 2 is `previous-champion`" in text
    assert "Base models: flywheel-llama-s" in text  # says which models produced the numbers
    assert "test stand-ins" in text  # and that the tiny ones are not real LLMs
    evaluations[0]["base_model"] = "smollm2-135m-instruct"
    real = render("c1", "router", {"lines_in": 1, "quarantined": 0}, {"records_in": 1,
                  "quarantined": 0, "duplicates": 0, "stored": 1}, dataset, teacher, evaluations,
                  decision, {"registered": False})
    assert "Base models: smollm2-135m-instruct" in real and "stand-ins" not in real
    assert "Scope guard" not in real  # no guard, no sentence about one
    evaluations[0]["finetuned"].update(
        n_test=20, guard_fallbacks=3, scope_guard={"reference_queries": 27, "threshold": 0.4512,
                                                   "budget": 0.05, "neighbours": 5,
                                                   "fallback": "out_of_scope"})
    guarded = render("c1", "router", {"lines_in": 1, "quarantined": 0}, {"records_in": 1,
                     "quarantined": 0, "duplicates": 0, "stored": 1}, dataset, teacher,
                     evaluations, decision, {"registered": False})
    assert ("s-lora sent 3 of 20 test queries to out_of_scope (mean similarity to the 5 nearest "
            "of 27 in-scope training queries below 0.451; 5% budget)") in guarded
    assert "Data alarm" not in guarded
    alarmed = render("c1", "router", {"lines_in": 5, "quarantined": 0}, {
        "records_in": 5, "quarantined": 3, "duplicates": 0, "stored": 2,
        "alarm": "validate c1: 3 of 5 lines invalid"}, dataset, teacher, evaluations, decision,
        {"registered": False})
    assert "**Data alarm:** validate c1: 3 of 5 lines invalid" in alarmed.split("## Data")[0]


def test_pareto_front_keeps_only_undominated_models():
    points = [("fast-weak", 5, 0.3), ("slow-strong", 500, 0.9), ("dominated", 600, 0.5),
              ("middle", 50, 0.7)]
    assert pareto_front(points) == ["fast-weak", "slow-strong", "middle"]


def test_write_report_charts_history_and_mlflow(tmp_path):
    dataset, evaluations, decision, teacher, champion = cycle_inputs()
    home = str(tmp_path)
    ingested = {"lines_in": 10, "quarantined": 0}
    validated = {"records_in": 10, "quarantined": 0, "duplicates": 0, "stored": 10}
    registered = {"registered": True, "model_name": "flywheel-router", "version": "3",
                  "alias": "challenger"}
    write_report("c1", "router", ingested, validated, dataset, teacher, evaluations, decision,
                 registered, champion, None, home=home)
    result = write_report("c2", "router", ingested, validated, dataset, teacher, evaluations,
                          decision, registered, champion,
                          {"promoted": True, "version": "3", "previous": "2", "changed": True},
                          home=home)
    assert result["champion"]["version"] == "3" and result["champion"]["accuracy"] == 0.6
    out = tmp_path / "runs" / "c2"
    for name in ("pareto.png", "confusion.png", "funnel.png", "champion_history.png",
                 "report.html"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report.json").read_text())
    # history across cycles from the cycle runs in MLflow: c1 kept v2, c2 promoted v3
    assert [(h["cycle"], h["version"]) for h in report["history"]] == [("c1", "2"), ("c2", "3")]
    assert "## Champion history" in (out / "report.md").read_text()
    from tasks import tracking

    mlflow = tracking.configure(tracking.get_paths(home))
    runs = mlflow.search_runs(experiment_names=["flywheel-router"], output_format="list",
                              filter_string="tags.`flywheel.stage` = 'cycle'")
    artifacts = {a.path for r in runs for a in
                 mlflow.MlflowClient().list_artifacts(r.info.run_id)}
    assert {"pareto.png", "champion_history.png", "report.html"} <= artifacts
