"""flywheel_cycle under a real scheduler, on Postgres, logging to an MLflow server, with faults.

Two runs are triggered at once through the REST API (as the UI's trigger button does, not
``dags test``). The DAG allows one active run, so the second must wait for the first. During the
first, one running task's process is killed by its PID (a worker lost mid-task): Airflow must retry
it and the cycle complete. During the second, the MLflow server is stopped for a minute as soon as
the run talks to it: the tasks must ride it out (client retries, then task retries) and succeed.

What is asserted is outcomes, not the DAG's task list (which grows): both runs succeed one after
the other, the killed task succeeded on a later try, the registry holds one version per cycle over
HTTP with its alias and gate tags, and nothing is duplicated or lost in the store.

Sizes are tiny (one day of simulated traffic, the test-only base model, a few training steps); the
gate's thresholds are opened wide because the point is the wiring, not the model's quality.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import DAG_ID
from tests.integration.servers import AirflowStack, MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_NAME = "flywheel-router"
RUN_A, RUN_B = "integration-a", "integration-b"
#: the outage the second run must survive
MLFLOW_OUTAGE_S = 60
#: a task is killed once it has run this long (so it is mid-work, not starting up)
KILL_AFTER_S = 3.0
RUN_TIMEOUT_S = 1200


@dataclass
class Observed:
    """What the test saw while the runs went on."""

    b_states_while_a_active: set[str] = field(default_factory=set)
    killed: dict | None = None
    outage: tuple[float, float] | None = None  # (stopped, back), monotonic seconds
    turned_away: list[str] = field(default_factory=list)  # request lines that met the outage
    seconds: dict[str, float] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _kill_one_running_task(stack: AirflowStack, observed: Observed) -> None:
    """SIGKILL the first task of run A seen running for KILL_AFTER_S on its first try."""
    if observed.killed is not None:
        return
    now = dt.datetime.now(dt.UTC)
    for ti in stack.task_instances(DAG_ID, RUN_A):
        if (ti["state"] == "running" and ti.get("pid") and ti.get("try_number") == 1
                and ti.get("start_date")
                and (now - _parse(ti["start_date"])).total_seconds() >= KILL_AFTER_S):
            os.kill(ti["pid"], signal.SIGKILL)
            observed.killed = {"task_id": ti["task_id"], "map_index": ti["map_index"],
                               "pid": ti["pid"]}
            print(f"killed {ti['task_id']}[{ti['map_index']}] (pid {ti['pid']})", flush=True)
            return


#: once a request of run B has been turned away, the server stays down this much longer
MLFLOW_OUTAGE_AFTER_MET_S = 30


class _DeadPort:
    """Holds the stopped server's port: accepts each connection, reads its request line and
    closes it unanswered, as a load balancer before a dead backend does. The MLflow client sees a
    broken connection (retried like a refused one) and the test sees which requests met the
    outage, without reading task logs."""

    def __init__(self, port: int):
        self.turned_away: list[tuple[float, str]] = []
        self._socket = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._socket.settimeout(0.5)
        self._open = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._open:
            try:
                conn, _ = self._socket.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    line = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                except OSError:
                    line = "?"
                self.turned_away.append((time.monotonic(), line))
                # RST, not FIN: the client reads a reset connection
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self._open = False
        self._thread.join(timeout=5)
        self._socket.close()


class _Outage:
    """Stops the MLflow server right after run B's first request to it; its port turns requests
    away while it is down. It comes back once it has been down MLFLOW_OUTAGE_S and a request of
    run B has been turned away at least MLFLOW_OUTAGE_AFTER_MET_S before (the request that
    stopped it may have been a task's last: then the outage lasts until the next one needs it)."""

    def __init__(self, mlflow: MlflowServer, observed: Observed):
        self.mlflow, self.observed = mlflow, observed
        self.log_offset: int | None = None
        self.stopped_at: float | None = None
        self.dead: _DeadPort | None = None

    def __call__(self, run: dict) -> None:
        if self.observed.outage is not None or run["state"] != "running":
            return
        if self.log_offset is None:  # run B just started: requests after this point are its
            self.log_offset = self.mlflow.log_path.stat().st_size
            return
        if self.stopped_at is None:
            with self.mlflow.log_path.open("rb") as log:
                log.seek(self.log_offset)
                fresh = log.read()
                if b"/api/2.0/mlflow/" in fresh or b"/ajax-api/" in fresh:
                    self.mlflow.stop()
                    self.dead = _DeadPort(self.mlflow.port)
                    self.stopped_at = time.monotonic()
                    print("MLflow server stopped", flush=True)
            return
        now = time.monotonic()
        turned_away = self.dead.turned_away
        if (now - self.stopped_at >= MLFLOW_OUTAGE_S and turned_away
                and now - turned_away[0][0] >= MLFLOW_OUTAGE_AFTER_MET_S):
            self.back()

    def back(self) -> None:
        """Restart the server on its port (also when run B ended while it was down)."""
        if self.dead is None or self.observed.outage is not None:
            return
        self.dead.close()
        self.mlflow.start()
        self.observed.outage = (self.stopped_at, time.monotonic())
        self.observed.turned_away = [line for _, line in self.dead.turned_away]
        print(f"MLflow server back after {self.observed.outage[1] - self.stopped_at:.0f}s; "
              f"{len(self.observed.turned_away)} requests turned away, first "
              f"{self.observed.turned_away[:1]}", flush=True)


@pytest.fixture(scope="module")
def cycles(airflow_stack: AirflowStack, mlflow_server: MlflowServer, integration_home: Path,
           xs_base_model: Path):
    from tasks.demo.simulate import SimulateConfig, simulate

    started = time.monotonic()
    sim = simulate(SimulateConfig(seed=11, days=1, records_per_day=1200, feedback_rate=0.3,
                                  start_date=dt.date.today() - dt.timedelta(days=1),
                                  home=str(integration_home)))
    candidate = {"name": "xs-lora", "base_model": str(xs_base_model), "method": "lora",
                 "hyperparameters": {"learning_rate": 0.02, "batch_size": 16, "epochs": 1}}
    from tasks.core.config import get_paths
    from tasks.demo.simulate import gold_labels

    conf = {"sme_review": "simulated", "candidates": [candidate], "min_accuracy": 0.0,
            "gold_labels": str(gold_labels(get_paths(str(integration_home)))),
            "max_p95_latency_ms": 60000,
            "max_accuracy_drop": 1.0, "max_drop_vs_teacher": None, "window_days": 3,
            "latency_queries": 5, "max_train_steps": 10}
    # both at once: max_active_runs=1 must hold B back until A is done
    airflow_stack.trigger(DAG_ID, conf, run_id=RUN_A)
    airflow_stack.trigger(DAG_ID, conf, run_id=RUN_B)
    observed = Observed()

    def during_a(run: dict) -> None:
        if run["state"] not in {"success", "failed"}:
            observed.b_states_while_a_active.add(airflow_stack.run(DAG_ID, RUN_B)["state"])
        if run["state"] == "running":
            _kill_one_running_task(airflow_stack, observed)

    observed.runs[RUN_A] = airflow_stack.wait_for_run(DAG_ID, RUN_A, RUN_TIMEOUT_S, during_a)
    observed.seconds["run_a"] = time.monotonic() - started
    outage = _Outage(mlflow_server, observed)
    try:
        observed.runs[RUN_B] = airflow_stack.wait_for_run(DAG_ID, RUN_B, RUN_TIMEOUT_S, outage)
    finally:
        outage.back()  # the run ended (or the wait failed) while the server was down
    observed.seconds["both_runs"] = time.monotonic() - started
    print(f"integration cycles: {observed.seconds}", flush=True)
    return sim, observed


def _task_instances(stack: AirflowStack, run_id: str) -> list[dict]:
    return stack.task_instances(DAG_ID, run_id)


def test_both_runs_succeed_one_after_the_other(cycles, airflow_stack, postgres):
    _, observed = cycles
    a, b = observed.runs[RUN_A], observed.runs[RUN_B]
    assert a["state"] == "success", a
    assert b["state"] == "success", b
    # B never ran while A was active: it waited queued, and started after A ended
    assert observed.b_states_while_a_active == {"queued"}
    assert _parse(b["start_date"]) >= _parse(a["end_date"])
    # the scheduler ran them: their rows are in the Postgres metadata database
    rows = postgres.query("airflow", "SELECT run_id, state, run_type FROM dag_run "
                                     "WHERE dag_id = %s ORDER BY run_id", (DAG_ID,))
    assert rows == [(RUN_A, "success", "manual"), (RUN_B, "success", "manual")]


def test_killed_task_is_retried_and_succeeds(cycles, airflow_stack):
    _, observed = cycles
    assert observed.killed is not None, "no task of run A was seen running long enough to kill"
    ti = next(t for t in _task_instances(airflow_stack, RUN_A)
              if t["task_id"] == observed.killed["task_id"]
              and t["map_index"] == observed.killed["map_index"])
    assert ti["state"] == "success"
    assert ti["try_number"] >= 2
    assert ti["pid"] != observed.killed["pid"]


def test_run_b_rode_out_the_mlflow_outage(cycles):
    _, observed = cycles
    assert observed.outage is not None, "run B never talked to MLflow"
    stopped, back = observed.outage
    assert back - stopped >= MLFLOW_OUTAGE_S
    # requests of run B met the dead port (A had ended; nothing else talks to MLflow then), and
    # the run still succeeded (test_both_runs_succeed_one_after_the_other)
    assert observed.turned_away, "no request of run B met the outage"
    assert all(line.split(" ")[1].startswith(("/api/", "/ajax-api/")) for line in
               observed.turned_away if line.count(" ") >= 2), observed.turned_away


def test_registry_holds_one_version_per_cycle_over_http(cycles, mlflow_server):
    _, observed = cycles
    versions = mlflow_server.api("GET", "model-versions/search",
                                 filter=f"name='{MODEL_NAME}'")["model_versions"]
    assert versions, "nothing was registered"
    tags = [{t["key"]: t["value"] for t in v.get("tags", [])} for v in versions]
    cycles_registered = [t["cycle_id"] for t in tags]
    assert len(cycles_registered) == len(set(cycles_registered)), "a cycle registered twice"
    assert set(cycles_registered) <= {RUN_A, RUN_B}
    assert RUN_A in cycles_registered
    for tag in tags:
        assert tag["gate"] == "passed"
        assert tag["candidate"] == "xs-lora"
        assert 0.0 <= float(tag["test_accuracy"]) <= 1.0
    aliases = {}
    for alias in ("champion", "challenger"):
        try:
            found = mlflow_server.api("GET", "registered-models/alias", name=MODEL_NAME,
                                      alias=alias)
        except Exception:
            continue
        aliases[alias] = found["model_version"]["version"]
    assert aliases, "no version holds alias champion or challenger"
    # the versions' files went through the server into its artifact store
    assert list(mlflow_server.artifacts.rglob("MLmodel")), "no model files in the artifact store"


def test_nothing_duplicated_or_lost(cycles, integration_home):
    from tasks.ingest.store import load_store

    sim, _ = cycles
    reports = {}
    for run_id in (RUN_A, RUN_B):
        path = integration_home / "runs" / run_id / "report.json"
        assert path.is_file(), f"run {run_id} wrote no report"
        reports[run_id] = json.loads(path.read_text())
    # every well-formed record is stored exactly once (malformed lines are quarantined instead),
    # although ingest was killed mid-task and retried and the second run saw the same files
    stored = load_store(str(integration_home))
    assert len(stored) == stored["id"].nunique() == sim.records
    # the second run found nothing new: the same landing files are not stored twice
    assert reports[RUN_B]["validated"]["stored"] == 0
    for report in reports.values():
        ingested, validated = report["ingested"], report["validated"]
        assert ingested["lines_in"] == (ingested["records_parsed"] + ingested["feedback_events"]
                                        + ingested["quarantined"])
        assert validated["records_in"] == (validated["stored"] + validated["duplicates"]
                                           + validated["quarantined"])
