"""End to end: simulated traffic through the real flywheel_cycle DAG (``dag.test()``) on tiny data.

Every task runs for real (great-expectations, DeepSpeed under torchrun, lm-eval, MLflow); only the
sizes are small: one day of traffic and the test-only base model, so the gate thresholds are
opened wide. What is asserted is the wiring: a model version registered with alias and metrics.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from tests.conftest import TEST_BASE


@pytest.mark.slow
def test_flywheel_cycle_registers_a_model(session_home, airflow_db, xs_base_model):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    from tasks.core import tracking
    from tasks.demo.simulate import SimulateConfig, simulate

    start = dt.date.today() - dt.timedelta(days=1)
    simulate(SimulateConfig(seed=7, days=1, records_per_day=1500, start_date=start,
                            feedback_rate=0.3, home=str(session_home)))

    dag = DagBag(dag_folder="dags").dags["flywheel_cycle"]
    candidate = {"name": "xs-lora", "base_model": TEST_BASE, "method": "lora",
                 "hyperparameters": {"learning_rate": 0.02, "batch_size": 16, "epochs": 1}}
    from tasks.core.config import get_paths
    from tasks.demo.simulate import gold_labels

    conf = {"sme_review": "simulated", "candidates": [candidate], "min_accuracy": 0.0,
            "gold_labels": str(gold_labels(get_paths(str(session_home)))),
            "max_p95_latency_ms": 60000,
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
    from tasks.core.config import run_folder_name

    reports = [session_home / "runs" / run_folder_name(run.run_id) / "report.json"]
    assert reports[-1].is_file(), "the cycle wrote no report"
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

    assert json.loads(reports[-1].read_text()) == before  # written once, by the report task
    from tasks.reporting.report import load_report

    report = load_report(reports[-1].parent.name, str(session_home))
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


#: A second agent: a help desk whose decision is the name of the function it called, with four
#: experts made of CLINC150's domains, no fallback, and its own teacher model.
DESK_EXPERTS = {"money": ("banking", "credit_cards"),
                "household": ("kitchen_and_dining", "home"),
                "trips": ("travel", "auto_and_commute"),
                "assistant": ("utility", "small_talk", "meta")}
#: The expert the desk adds before its second cycle.
ADDED = {"hr": ("work",)}


def desk_workload(folder, experts=DESK_EXPERTS) -> None:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "desk.yaml").write_text(yaml.safe_dump({
        "workload_id": "desk",
        "description": "A help desk agent that calls one function per expert.",
        "experts": [{"name": name, "description": f"questions about {', '.join(domains)}"}
                    for name, domains in experts.items()],
        "decision": {"kind": "function_name"},
        "teacher_models": ["desk-teacher-8b"],
        "prompt": "Pick the desk function for the request.\n{expert_list}",
        "candidates": ["minilm-router-lora"],
        "gate": {"min_accuracy": 0.0, "max_p95_latency_ms": 60000},
    }, sort_keys=False))


def desk_records(n: int, experts=DESK_EXPERTS, seed: int = 3, prefix: str = "desk"
                 ) -> list[dict]:
    """Logged decisions of the desk's teacher in the log contract, most rated thumbs-up."""
    import random

    from tasks.core.records import SCHEMA_VERSION, make_request, make_response
    from tasks.core.workload import Decision
    from tasks.demo.clinc150 import examples

    expert_of = {d: name for name, domains in experts.items() for d in domains}
    pool = [e for e in examples() if e.split == "train" and e.expert in expert_of]
    picked = random.Random(seed).sample(pool, n)
    decision, now = Decision(kind="function_name"), dt.datetime.now(dt.UTC)
    records = []
    for i, example in enumerate(picked):
        expert = expert_of[example.expert]
        record = {"schema_version": SCHEMA_VERSION, "id": f"{prefix}-{i}",
                  "timestamp": (now - dt.timedelta(minutes=5 + i)).isoformat(),
                  "workload_id": "desk", "client_id": "help-desk", "model": "desk-teacher-8b",
                  "request": make_request(example.query, list(experts), decision),
                  "response": make_response(expert, f"call-{i}", decision),
                  "latency_ms": 900.0}
        if i % 5:
            record["feedback"] = {"rating": 1, "source": "user"}
        records.append(record)
    return records


@pytest.mark.slow
def test_a_second_workload_runs_by_configuration_only(session_home, airflow_db, tmp_path):
    """Another agent's logs, with other experts and another decision format, go through the
    same DAG into the same store by configuration alone (a workload file and the run's conf),
    and its packaged model routes over its own experts."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    from tasks.core import tracking
    from tasks.serving.router import load_champion

    folder = tmp_path / "workloads"
    desk_workload(folder)
    landing = session_home / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "desk-agent.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in desk_records(400)))

    dag = DagBag(dag_folder="dags").dags["flywheel_cycle"]
    # no candidates, no gate thresholds: the workload file's; nobody reviews ('skip')
    conf = {"workload_id": "desk", "workloads_dir": str(folder), "sme_review": "skip",
            "window_days": 3, "latency_queries": 5, "max_train_steps": 15, "icl_examples": 0,
            "general_text_docs": 0, "max_drop_vs_teacher": None}
    run = dag.test(run_conf=conf)
    assert run.state == DagRunState.SUCCESS

    mlflow = tracking.configure(tracking.get_paths(str(session_home)))
    version = mlflow.MlflowClient().get_model_version_by_alias("flywheel-desk", "challenger")
    assert version.tags["candidate"] == "minilm-router-lora"  # the workload file's candidate
    dataset = json.loads((session_home / "datasets" / "desk" / "latest.json").read_text())
    manifest = json.loads((Path(dataset["dataset_dir"]) / "manifest.json").read_text())
    assert manifest["experts"] == list(DESK_EXPERTS) and manifest["fallback_expert"] is None
    assert manifest["lineage"]["teacher_model"] == "desk-teacher-8b"

    router = load_champion("desk", alias="challenger", home=str(session_home))
    assert router.model_config["experts"] == list(DESK_EXPERTS)
    routed = router.predict(["transfer money to my savings account", "book a hotel in rome",
                             "set a timer for ten minutes"])
    assert len(routed) == 3 and set(routed) <= set(DESK_EXPERTS)

    # An expert added to the file between two cycles: the next cycle learns it, the frozen test
    # split grows to include it, and the champion, which cannot name it, is re-evaluated on it.
    from tasks.registry.register import promote

    promote("desk", version.version, home=str(session_home))
    grown = {**DESK_EXPERTS, **ADDED}
    desk_workload(folder, grown)
    (landing / "desk-agent-2.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in desk_records(400, grown, seed=4, prefix="desk2")))
    second = dag.test(run_conf=conf)
    assert second.state == DagRunState.SUCCESS
    dataset = json.loads((session_home / "datasets" / "desk" / "latest.json").read_text())
    manifest = json.loads((Path(dataset["dataset_dir"]) / "manifest.json").read_text())
    assert manifest["experts"] == list(grown)
    assert manifest["label_space_change"] == {"added": ["hr"], "removed": []}
    assert manifest["counts"]["test"].get("hr", 0) > 0
    from tasks.core.config import run_folder_name

    newest = session_home / "runs" / run_folder_name(second.run_id) / "report.json"
    report = json.loads(newest.read_text())
    before = report["champion_before"]["evaluation"]
    assert report["champion_before"]["version"] == str(version.version)
    assert before["per_expert"]["hr"]["recall"] == 0.0  # it cannot name the new expert
    assert report["evaluations"][0]["finetuned"]["per_expert"]["hr"]["support"] > 0
    assert "**Label space changed: hr added" in newest.with_name("report.md").read_text()
    # the candidate and the champion were timed head to head, in the same window
    latency = report["decision"]["latency"]
    assert latency["reference"] == f"v{version.version}" and latency["queries"] == 5
    assert set(latency["timings"]) == {f"v{version.version}", "minilm-router-lora"}
    assert latency["versus"]["minilm-router-lora"]["low"] > 0
