"""DAG integrity: the DAG folder loads, and flywheel_cycle has the shape the docs promise."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parent.parent / "dags"
HEAVY = {"torch", "transformers", "peft", "deepspeed", "pandas", "great_expectations",
         "qdrant_client", "qdrant_edge", "lm_eval", "mlflow", "sklearn"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "flywheel_cycle" in dagbag.dag_ids


def test_cycle_schedule_and_defaults(dagbag):
    dag = dagbag.dags["flywheel_cycle"]
    assert dag.schedule == "0 2 * * *" or str(dag.timetable.summary) == "0 2 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "flywheel" in dag.tags
    for t in dag.tasks:
        assert t.retries >= 1, f"{t.task_id} has no retries"
    assert {"workload_id", "candidates", "min_accuracy", "max_p95_latency_ms",
            "window_days"} <= set(dag.params.keys())
    # outside the demo nobody has gold labels: experts review in the UI unless a run says
    # otherwise, and a cycle trains the catalog's pretrained routers, not the test stand-ins
    assert dag.params["sme_review"] == "ui"
    from tasks.training.catalog import load_catalog

    catalog = load_catalog()
    assert all(not catalog[name].base_model.startswith("flywheel-")
               for name in dag.params["candidates"])


def test_candidates_param_takes_names_and_whole_entries(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    param = dagbag.dags["flywheel_cycle"].params.get_param("candidates")
    entry = {"name": "mine", "base_model": "/models/x", "method": "lora"}
    assert param.resolve(["llama-s-lora", entry]) == ["llama-s-lora", entry]
    for bad in ([], ["llama-s-lora", 3], "llama-s-lora"):
        with pytest.raises(ParamValidationError):
            param.resolve(bad)
    # typed items: Airflow's trigger form shows a JSON field, not a textarea of "[object Object]"
    assert param.schema["items"]["type"] == ["string", "object"]


def test_cycle_edges(dagbag):
    dag = dagbag.dags["flywheel_cycle"]
    downstream = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert downstream["ingest"] == {"validate", "report"}
    assert {"attribute", "curate"} <= downstream["validate"]
    assert downstream["attribute"] == {"review", "sme_review_ui"}
    assert downstream["route_review"] == {"review", "sme_review_ui"}
    assert downstream["sme_review_ui"] == {"review"}
    assert downstream["review"] == {"curate"}
    from tasks.curation.review import UI_LATER, UI_OPTIONS

    hitl = dag.get_task("sme_review_ui")
    assert hitl.options == UI_OPTIONS and hitl.defaults == [UI_LATER]
    assert {"finetune", "evaluate", "evaluate_teacher"} <= downstream["curate"]
    assert "finetune" in downstream["plan_candidates"]
    # one training task per executor queue (Airflow cannot set the queue per mapped instance),
    # gathered into one list that evaluation maps over
    assert downstream["plan_candidates_gpu"] == {"finetune_gpu"}
    assert downstream["finetune"] == downstream["finetune_gpu"] == {"trained_models"}
    assert "evaluate" in downstream["trained_models"]
    assert {"gate", "register"} <= downstream["evaluate"]
    assert "register" in downstream["gate"]
    assert "report" in downstream["register"]


def test_dag_files_import_nothing_heavy_at_module_level():
    for path in DAGS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; imports inside tasks are fine
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            heavy = {n.split(".")[0] for n in names} & (HEAVY | {"tasks"})
            assert not heavy, f"{path.name} imports {heavy} at module level"


def test_dag_file_name_is_dag_id(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id


def test_ingest_dag_runs_often_and_publishes_the_store_asset(dagbag):
    dag = dagbag.dags["flywheel_ingest"]
    assert dag.catchup is False and dag.max_active_runs == 1
    downstream = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert downstream["ingest"] == {"validate"}
    outlets = [a.name for a in dag.get_task("validate").outlets]
    assert outlets == ["flywheel_store"]


def test_the_cycle_announces_its_challenger_and_never_waits_for_approval(dagbag):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from tasks.registry.promotion import CHALLENGER_ASSET, CHALLENGER_ASSET_URI

    dag = dagbag.dags["flywheel_cycle"]
    downstream = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert {"gate", "report"} <= downstream["evaluate_champion"]
    assert "gate" in downstream["evaluate_teacher"]
    assert downstream["register"] == {"announce", "report"}
    assert downstream["announce"] == set()
    assert not [t for t in dag.tasks if isinstance(t, ApprovalOperator)]  # no person in the way
    outlets = dag.get_task("announce").outlets
    assert [(a.name, a.uri) for a in outlets] == [(CHALLENGER_ASSET, CHALLENGER_ASSET_URI)]
    assert dag.get_task("report").trigger_rule == "none_failed"
    assert dag.params["auto_approve"] is False


def test_promotion_dag_runs_on_the_challenger_asset_and_waits_for_a_reviewer(dagbag):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from tasks.registry.promotion import CHALLENGER_ASSET

    dag = dagbag.dags["flywheel_promotion"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == [CHALLENGER_ASSET]
    assert dag.max_active_runs > 1  # one challenger waiting never blocks the next
    downstream = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert downstream["challenger"] == {"approval_route", "promote", "report"}
    assert downstream["promote"] == {"report"}  # the cycle's report shows the promotion
    assert downstream["approval_route"] == {"approve", "auto_approve"}
    assert downstream["approve"] == {"promote"} and downstream["auto_approve"] == {"promote"}
    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator) and approve.defaults == ["Reject"]
    assert dag.get_task("promote").trigger_rule == "none_failed_min_one_success"


def test_rollback_dag(dagbag):
    dag = dagbag.dags["flywheel_rollback"]
    assert dag.schedule is None and dag.catchup is False
    assert [t.task_id for t in dag.tasks] == ["rollback"]
    assert {"workload_id", "version", "reason"} <= set(dag.params.keys())


def test_each_queue_of_the_catalog_has_its_training_task(dagbag):
    from tasks.training.catalog import load_catalog

    cycle = dagbag.dags["flywheel_cycle"]
    training = {t.queue: t for t in cycle.tasks if t.task_id.startswith("finetune")}
    assert {s.resources.queue for s in load_catalog().values()} <= set(training)
    assert training["gpu"].task_id == "finetune_gpu" and training["default"].task_id == "finetune"
    for queue, task in training.items():
        assert task.pool == training["default"].pool and task.pool_slots == 1, queue


def test_finetune_runs_in_the_training_pool(dagbag):
    from tasks.training.finetune import TRAINING_POOL

    finetune = dagbag.dags["flywheel_cycle"].get_task("finetune")
    assert finetune.pool == TRAINING_POOL
    assert finetune.pool_slots == 1


def test_every_task_has_a_time_limit(dagbag):
    from datetime import timedelta

    from airflow.providers.standard.operators.hitl import HITLOperator

    for dag_id in ("flywheel_cycle", "flywheel_ingest", "flywheel_rollback",
                   "flywheel_promotion"):
        for t in dagbag.dags[dag_id].tasks:
            if isinstance(t, HITLOperator):  # a person's step waits by its response_timeout
                assert t.response_timeout is not None, t.task_id
                assert t.execution_timeout is None, t.task_id  # it would cut the wait short
            else:
                assert t.execution_timeout is not None, f"{dag_id}.{t.task_id}"
                assert timedelta(minutes=10) <= t.execution_timeout <= timedelta(hours=12)
    cycle = dagbag.dags["flywheel_cycle"]
    assert cycle.get_task("finetune").execution_timeout > cycle.get_task(
        "gate").execution_timeout


def test_no_dag_reaches_the_demo_package():
    """What the DAGs import, and all that imports in turn (lazy imports included), never reaches
    tasks.demo: a deployment runs the cycle without the simulator or the test models."""
    from tests.test_layout import DEMO, PACKAGE, ROOT, _imports_of, import_graph

    graph = import_graph(PACKAGE)
    todo = [m for path in (ROOT / "dags").glob("*.py") for m in _imports_of(path)
            if m.startswith("tasks")]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        while name and name not in graph:
            name = name.rpartition(".")[0]
        if name and name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    assert len(seen) > 20  # the walk found the stages the DAGs run
    reached = sorted(m for m in seen if m == DEMO or m.startswith(DEMO + "."))
    assert not reached, reached


def test_the_nightly_workload_is_a_setting(dagbag, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    assert dagbag.dags["flywheel_cycle"].params["workload_id"] == "router"
    monkeypatch.setenv("FLYWHEEL_WORKLOAD_ID", "desk")
    parsed = DagBag(dag_folder=str(DAGS / "flywheel_cycle.py"))
    assert parsed.dags["flywheel_cycle"].params["workload_id"] == "desk"
