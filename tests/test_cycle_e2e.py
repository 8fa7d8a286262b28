"""End to end: simulated traffic through the real flywheel_cycle DAG (``dag.test()``) on tiny data.

Every task runs for real (great-expectations, DeepSpeed under torchrun, lm-eval, MLflow); only the
sizes are small: one day of traffic and the test-only base model, so the gate thresholds are
opened wide. What is asserted is the wiring: a model version registered with alias and metrics.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.conftest import TEST_BASE


@pytest.mark.slow
def test_flywheel_cycle_registers_a_model(session_home, airflow_db, xs_base_model):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    from tasks import tracking
    from tasks.simulate import SimulateConfig, simulate

    start = dt.date.today() - dt.timedelta(days=1)
    simulate(SimulateConfig(seed=7, days=1, records_per_day=1500, start_date=start,
                            feedback_rate=0.3, home=str(session_home)))

    dag = DagBag(dag_folder="dags").dags["flywheel_cycle"]
    candidate = {"name": "xs-lora", "base_model": TEST_BASE, "method": "lora",
                 "hyperparameters": {"learning_rate": 0.02, "batch_size": 16, "epochs": 1}}
    conf = {"candidates": [candidate], "min_accuracy": 0.0, "max_p95_latency_ms": 60000,
            "window_days": 3, "latency_queries": 5, "max_train_steps": 15,
            "icl_examples": 2, "auto_approve": True, "general_text_docs": 20,
            "max_forgetting": 100.0,
            # one day of simulated traffic has too few expert-decided test records to grade the
            # teacher on: the teacher check (on by default) would refuse for want of evidence
            "max_drop_vs_teacher": None}
    run = dag.test(run_conf=conf)
    assert run.state == DagRunState.SUCCESS
    announced = [t for t in run.get_task_instances() if t.task_id == "announce"]
    assert [t.state for t in announced] == ["success"]  # the Asset event for flywheel_promotion

    mlflow = tracking.configure(tracking.get_paths(str(session_home)))
    client = mlflow.MlflowClient()
    # the cycle ends at registration: nothing is served until the promotion DAG approves
    version = client.get_model_version_by_alias("flywheel-router", "challenger")
    reports = sorted(session_home.glob("runs/*/report.json"))
    assert reports, "the cycle wrote no report"
    before = json.loads(reports[-1].read_text())
    assert before["promoted"] is None and before["champion"]["version"] is None
    assert "waits for approval in the DAG flywheel_promotion" in reports[-1].with_name(
        "report.md").read_text()

    promotion = DagBag(dag_folder="dags").dags["flywheel_promotion"].test(run_conf={
        "workload_id": "router", "version": str(version.version), "auto_approve": True})
    assert promotion.state == DagRunState.SUCCESS
    version = client.get_model_version_by_alias("flywheel-router", "champion")
    assert version.tags["candidate"] == "xs-lora"
    assert version.tags["gate"] == "passed"
    for tag in ("test_accuracy", "latency_p95_ms", "base_accuracy", "dataset_version"):
        assert tag in version.tags
    assert 0.0 <= float(version.tags["test_accuracy"]) <= 1.0
    # the winner's run links the exact ground-truth version it was scored on
    inputs = client.get_run(version.run_id).inputs.dataset_inputs
    assert {i.dataset.name.rsplit("-", 1)[-1] for i in inputs} >= {"train", "test"}
    assert all(version.tags["dataset_version"] in i.dataset.name for i in inputs)
    assert float(version.tags["latency_p95_ms"]) > 0

    report = json.loads(reports[-1].read_text())
    assert report["registered"]["version"] == str(version.version)
    # registered as challenger, approved (auto_approve) in flywheel_promotion, promoted; the
    # promotion is written into the cycle's report
    assert report["registered"]["alias"] == "challenger"
    assert report["promoted"]["promoted"] and report["champion"]["version"] == str(version.version)
    assert version.tags["approved_by"] == "auto_approve param"
    assert "Approved and promoted" in reports[-1].with_name("report.html").read_text()
    evaluation = report["evaluations"][0]
    assert evaluation["base_icl"]["prompting"] == "in-context (k=2)"
    assert evaluation["finetuned"]["cost_per_1k_requests"] > 0
    # the forgetting check: candidate and base on the same general text, and the gate read it
    assert evaluation["finetuned"]["general_text_docs"] == 20
    assert evaluation["forgetting_bpb"] == pytest.approx(
        evaluation["finetuned"]["general_bits_per_byte"]
        - evaluation["base"]["general_bits_per_byte"])
    assert report["decision"]["verdicts"][0]["checks"]["max_forgetting"] is True
    assert report["champion_before"]["version"] is None  # first cycle: nothing to re-evaluate
    ingested, validated = report["ingested"], report["validated"]
    # nothing is lost: every line read is stored, a known duplicate, or quarantined with a reason
    assert ingested["lines_in"] == (ingested["records_parsed"] + ingested["feedback_events"]
                                    + ingested["quarantined"])
    assert validated["records_in"] == (validated["stored"] + validated["duplicates"]
                                       + validated["quarantined"])
    assert report["dataset"]["n_test"] > 0 and report["dataset"]["n_train"] > 0

    # the cycle's own MLflow run carries the report and the great-expectations result
    cycle_runs = mlflow.search_runs(experiment_names=["flywheel-router"],
                                    filter_string="tags.`flywheel.stage` = 'cycle'",
                                    output_format="list")
    assert len(cycle_runs) == 1
    assert cycle_runs[0].data.tags["flywheel.champion_version"] == str(version.version)
    artifacts = {a.path for a in client.list_artifacts(cycle_runs[0].info.run_id)}
    assert {"report.md", "report.json", "report.html", "pareto.png", "confusion.png",
            "champion_history.png", "validation"} <= artifacts
    logged = {a.path for a in client.list_artifacts(cycle_runs[0].info.run_id, "validation")}
    assert "validation/validation.json" in logged
