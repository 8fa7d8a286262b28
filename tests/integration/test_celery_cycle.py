"""flywheel_cycle under the CeleryExecutor: a Redis broker and one Celery worker per queue.

The distributed setup of ``infra/compose.yaml`` on one machine: Debian's ``redis-server`` as the
broker (127.0.0.1, nothing persisted, stopped by PID like the tier's PostgreSQL), Airflow's
components on a metadata database of their own, an MLflow server on its own backend store, and
two ``airflow celery worker`` processes sharing the flywheel home (one host): ``worker-default``
serves the ``default`` queue, ``worker-gpu`` the ``gpu`` queue. Each names itself through
``FLYWHEEL_WORKER_NAME`` (``[core] hostname_callable = tasks.core.config.worker_hostname``), so a
task instance's hostname says which worker ran it.

One cycle trains two candidates on the test-only base model: one on the default queue, one whose
entry asks for the ``gpu`` queue (``gpus: 0``: there is no GPU here; what is checked is where the
job goes). Asserted: the gpu candidate trained on the gpu worker and nothing else ran there. While
the run goes on, the default worker is killed (SIGKILL to its process group) in the middle of a
task and a replacement is started on the same queue, as a supervisor (systemd, Kubernetes) would:
the task misses its heartbeats, Airflow fails it and retries it on the live worker, and the cycle
completes with every record stored once and one registered version.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tasks.core.config import Paths, local_environment
from tests.integration.conftest import DAG_ID, missing_prerequisite, start_mlflow
from tests.integration.servers import (
    BIN,
    AirflowStack,
    MlflowServer,
    Postgres,
    Service,
    airflow_environment,
    free_port,
    start_service,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = "celery-cycle"
MODEL_NAME = "flywheel-router"
#: a task is killed once it has run this long on the default worker (mid-work, not starting up)
KILL_AFTER_S = 3.0
RUN_TIMEOUT_S = 1500
DEFAULT_WORKER, GPU_WORKER, REPLACEMENT = "worker-default", "worker-gpu", "worker-default-2"


@dataclass
class Redis:
    service: Service
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Redis:
    binary = shutil.which("redis-server")
    if binary is None:
        missing_prerequisite("redis-server not found: `apt-get install redis-server` (.ci/run "
                             "does)")
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    service = start_service("redis", [binary, "--bind", "127.0.0.1", "--port", str(port),
                                      "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            folder / "redis.log")
    server = Redis(service, port)
    try:
        wait_until(server.ping, 60, "redis-server", (service,), interval=0.5)
    except BaseException:
        service.stop()
        raise
    yield server
    service.stop()


@pytest.fixture(scope="module")
def celery_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Paths(tmp_path_factory.mktemp("celery-home")).ensure().home


@pytest.fixture(scope="module")
def celery_mlflow(postgres: Postgres, celery_home: Path) -> MlflowServer:
    postgres.create_database("mlflow_celery")
    server = start_mlflow(postgres, "mlflow_celery", celery_home)
    yield server
    server.stop()


@dataclass
class CeleryStack:
    airflow: AirflowStack
    workers: dict[str, Service] = field(default_factory=dict)

    def start_worker(self, name: str, queues: str) -> Service:
        env = {**self.airflow.env, "FLYWHEEL_WORKER_NAME": name}
        command = [str(BIN / "airflow"), "celery", "worker", "--queues", queues,
                   "--concurrency", "1", "--skip-serve-logs", "--celery-hostname", f"{name}@%h",
                   "--without-gossip", "--without-mingle"]
        self.workers[name] = start_service(name, command, self.airflow.log_dir / f"{name}.log",
                                           env=env)
        return self.workers[name]

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group: the worker, its pool, the running task."""
        worker = self.workers[name]
        os.killpg(worker.pid, signal.SIGKILL)
        worker.process.wait(timeout=30)

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.airflow.stop()


@pytest.fixture(scope="module")
def celery_stack(postgres: Postgres, redis: Redis, celery_mlflow: MlflowServer,
                 celery_home: Path) -> CeleryStack:
    postgres.create_database("airflow_celery")
    port = free_port()
    base = {**os.environ, **local_environment(Paths(celery_home), inherit=False)}
    env = {**airflow_environment(base, postgres.url("airflow_celery"), port, celery_mlflow.url),
           "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
           "AIRFLOW__CELERY__BROKER_URL": redis.url,
           "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + postgres.url("airflow_celery"),
           "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
           "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tasks.core.config.worker_hostname",
           "FLYWHEEL_TRAINING_QUEUES": "default,gpu"}
    stack = CeleryStack(AirflowStack(env=env, log_dir=celery_home / "server-logs", port=port))
    stack.airflow.start()
    try:
        stack.airflow.wait_for_dag(DAG_ID)
        stack.airflow.ensure_pools(DAG_ID)
        stack.start_worker(DEFAULT_WORKER, "default")
        stack.start_worker(GPU_WORKER, "gpu")
    except BaseException:
        stack.stop()
        raise
    yield stack
    stack.stop()


@dataclass
class Observed:
    killed: dict | None = None
    seconds: float = 0.0
    run: dict = field(default_factory=dict)


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def celery_cycle(celery_stack: CeleryStack, celery_home: Path, xs_base_model: Path):
    from tasks.demo.simulate import SimulateConfig, simulate

    started = time.monotonic()
    sim = simulate(SimulateConfig(seed=13, days=1, records_per_day=1200, feedback_rate=0.3,
                                  start_date=dt.date.today() - dt.timedelta(days=1),
                                  home=str(celery_home)))
    hyper = {"learning_rate": 0.02, "batch_size": 16, "epochs": 1}
    candidates = [
        {"name": "xs-lora", "base_model": str(xs_base_model), "method": "lora",
         "hyperparameters": hyper},
        {"name": "xs-lora-gpu", "base_model": str(xs_base_model), "method": "lora",
         "hyperparameters": hyper, "resources": {"gpus": 0, "queue": "gpu"}},
    ]
    from tasks.core.config import get_paths
    from tasks.demo.simulate import gold_labels

    conf = {"sme_review": "simulated", "candidates": candidates, "min_accuracy": 0.0,
            "gold_labels": str(gold_labels(get_paths(str(celery_home)))),
            "max_p95_latency_ms": 60000,
            "max_accuracy_drop": 1.0, "max_drop_vs_teacher": None, "window_days": 3,
            "latency_queries": 5, "max_train_steps": 10}
    stack = celery_stack.airflow
    stack.trigger(DAG_ID, conf, run_id=RUN)
    observed = Observed()

    def kill_the_default_worker_mid_task(run: dict) -> None:
        if observed.killed is not None or run["state"] != "running":
            return
        now = dt.datetime.now(dt.UTC)
        for ti in stack.task_instances(DAG_ID, RUN):
            if (ti["state"] == "running" and ti.get("hostname") == DEFAULT_WORKER
                    and ti.get("try_number") == 1 and ti.get("start_date")
                    and (now - _parse(ti["start_date"])).total_seconds() >= KILL_AFTER_S):
                celery_stack.kill_worker(DEFAULT_WORKER)
                observed.killed = {"task_id": ti["task_id"], "map_index": ti["map_index"]}
                print(f"killed {DEFAULT_WORKER} while it ran {ti['task_id']}[{ti['map_index']}]",
                      flush=True)
                celery_stack.start_worker(REPLACEMENT, "default")
                return

    observed.run = stack.wait_for_run(DAG_ID, RUN, RUN_TIMEOUT_S,
                                      kill_the_default_worker_mid_task)
    observed.seconds = time.monotonic() - started
    print(f"celery cycle: {observed.seconds:.0f}s", flush=True)
    return sim, observed


def test_the_cycle_completes_under_celery(celery_cycle):
    _, observed = celery_cycle
    assert observed.run["state"] == "success", observed.run


def test_the_gpu_candidate_trains_on_the_gpu_worker_and_nothing_else_does(celery_cycle,
                                                                          celery_stack):
    instances = celery_stack.airflow.task_instances(DAG_ID, RUN)
    gpu_training = [t for t in instances if t["task_id"] == "finetune_gpu"]
    assert [t["map_index"] for t in gpu_training] == [0]
    assert gpu_training[0]["state"] == "success"
    assert gpu_training[0]["hostname"] == GPU_WORKER
    on_gpu = sorted(f"{t['task_id']}[{t['map_index']}]" for t in instances
                    if t.get("hostname") == GPU_WORKER)
    assert on_gpu == ["finetune_gpu[0]"]
    ran = [t for t in instances if t["state"] == "success"]
    assert {t["hostname"] for t in ran} <= {DEFAULT_WORKER, GPU_WORKER, REPLACEMENT}
    cpu_training = [t for t in instances if t["task_id"] == "finetune"]
    assert [t["map_index"] for t in cpu_training] == [0]
    assert cpu_training[0]["hostname"] in {DEFAULT_WORKER, REPLACEMENT}


def test_the_killed_workers_task_is_retried_on_a_live_worker(celery_cycle, celery_stack):
    _, observed = celery_cycle
    assert observed.killed is not None, "no task was seen running on the default worker"
    ti = next(t for t in celery_stack.airflow.task_instances(DAG_ID, RUN)
              if t["task_id"] == observed.killed["task_id"]
              and t["map_index"] == observed.killed["map_index"])
    assert ti["state"] == "success"
    assert ti["try_number"] >= 2
    assert ti["hostname"] == REPLACEMENT


def test_nothing_duplicated_and_both_candidates_evaluated(celery_cycle, celery_home,
                                                         celery_mlflow):
    from tasks.ingest.store import load_store

    sim, _ = celery_cycle
    stored = load_store(str(celery_home))
    assert len(stored) == stored["id"].nunique() == sim.records
    report = json.loads((celery_home / "runs" / RUN / "report.json").read_text())
    ingested, validated = report["ingested"], report["validated"]
    assert ingested["lines_in"] == (ingested["records_parsed"] + ingested["feedback_events"]
                                    + ingested["quarantined"])
    assert validated["records_in"] == (validated["stored"] + validated["duplicates"]
                                       + validated["quarantined"])
    assert {e["candidate"] for e in report["evaluations"]} >= {"xs-lora", "xs-lora-gpu"}
    versions = celery_mlflow.api("GET", "model-versions/search",
                                 filter=f"name='{MODEL_NAME}'")["model_versions"]
    cycles = [{t["key"]: t["value"] for t in v.get("tags", [])}["cycle_id"] for v in versions]
    assert cycles == [RUN], cycles
