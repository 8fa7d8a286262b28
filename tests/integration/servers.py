"""Real servers for the integration tier, each its own process, started here and stopped by PID.

* :func:`start_postgres`: a throwaway PostgreSQL cluster (``initdb`` into a temporary folder,
  ``postgres`` on 127.0.0.1 and a free port, trust auth for the loopback only). PostgreSQL refuses
  to run as root, so as root the cluster belongs to the ``postgres`` system user that the Debian
  package creates.
* :class:`MlflowServer`: ``mlflow server`` on that Postgres, artifacts proxied by the server
  (``--artifacts-destination``), as an object store behind it would be.
* :class:`AirflowStack`: Airflow's metadata database on that Postgres and its components as
  separate processes (api-server, scheduler, dag-processor, triggerer; LocalExecutor), driven
  through the REST API the UI uses.

Every process is started in its own process group, so stopping it (by its PID) also stops the
workers it forked; nothing is ever looked up or killed by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: superuser of the throwaway cluster (trust auth on 127.0.0.1 only)
PG_SUPERUSER = "flywheel"
#: where Debian's postgresql packages put the server binaries (one folder per major version)
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
BIN = Path(sys.executable).parent


class ServerError(RuntimeError):
    """A server did not come up, or died; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Folder holding ``initdb`` and ``postgres``: ``$FLYWHEEL_PG_BINDIR``, the newest Debian
    ``/usr/lib/postgresql/<major>/bin``, or the folder of ``initdb`` on ``PATH``; None if absent."""
    if configured := os.environ.get("FLYWHEEL_PG_BINDIR"):
        return Path(configured)
    versions = sorted((p for p in DEBIAN_PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Service:
    """One started server process (the leader of its own process group) and its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    url: str = ""
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return f"--- {self.name} log ({self.log_path}) ---\n{_tail(self.log_path, lines)}"

    def stop(self, timeout: float = 60) -> None:
        """Signal the process group led by this PID; SIGKILL it if it outlives ``timeout``."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, self.stop_signal)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        # forked workers that outlived their leader share its group id
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def start_service(name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None,
                  user: str | None = None, url: str = "", stop_signal: int = signal.SIGTERM,
                  cwd: Path | None = None) -> Service:
    """Start ``command`` in a new process group, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, user=user, cwd=cwd,
                                   start_new_session=True)
    return Service(name, process, log_path, url, stop_signal)


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               services: tuple[Service, ...] = (), interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns a truthy value; fail early if one of ``services`` died."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        for service in services:
            if not service.alive():
                raise ServerError(f"{service.name} exited ({service.process.returncode}) while "
                                  f"waiting for {what}\n{service.log_tail()}")
        try:
            if result := check():
                return result
        except Exception as exc:  # not up yet: keep polling, report the last error on timeout
            last_error = exc
        time.sleep(interval)
    logs = "\n".join(s.log_tail() for s in services)
    raise ServerError(f"timed out after {timeout:.0f}s waiting for {what} "
                      f"(last error: {last_error!r})\n{logs}")


def http_json(method: str, url: str, body: Any = None, timeout: float = 30) -> Any:
    """One JSON request; raises ``urllib.error.HTTPError`` with the server's message on >= 400."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:2000]
        raise urllib.error.HTTPError(exc.url, exc.code, f"{exc.reason}: {detail}", exc.headers,
                                     None) from None
    return json.loads(payload) if payload else None


# ------------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass
class Postgres:
    service: Service
    port: int
    root: Path

    def url(self, database: str, driver: str = "psycopg2") -> str:
        """SQLAlchemy URL of a database (driver named: SQLAlchemy 2.1 defaults to psycopg 3)."""
        return f"postgresql+{driver}://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=PG_SUPERUSER,
                                dbname=database, connect_timeout=5)

    def create_database(self, name: str) -> None:
        connection = self.connect()
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def stop(self) -> None:
        self.service.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(databases: tuple[str, ...] = ()) -> Postgres:
    """A throwaway cluster on 127.0.0.1, databases created; :meth:`Postgres.stop` removes it.

    Durability is switched off (``fsync``, ``synchronous_commit``, ``full_page_writes``): the
    cluster lives for one test session on a shared 2-core machine.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise ServerError("PostgreSQL server binaries not found: install the Debian package "
                          "'postgresql' (.ci/run does) or set FLYWHEEL_PG_BINDIR")
    user = None
    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root: the cluster belongs to 'postgres'
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ServerError("running as root, PostgreSQL needs the 'postgres' system user "
                              "(the Debian package creates it)") from exc
        os.chown(root, owner.pw_uid, owner.pw_gid)
        user = "postgres"
    data, log_path = root / "data", root / "postgres.log"
    initdb = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, "--auth=trust",
         "--encoding=UTF8", "--locale=C", "--no-sync"],
        user=user, capture_output=True, text=True)
    if initdb.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise ServerError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
    port = free_port()
    service = start_service(
        "postgres",
        [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(root), "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=200"],
        log_path, user=user, stop_signal=signal.SIGINT)  # SIGINT: postgres' fast shutdown
    postgres = Postgres(service, port, root)
    try:
        wait_until(lambda: postgres.query("postgres", "SELECT 1"), 60, "postgres", (service,))
        for name in databases:
            postgres.create_database(name)
    except BaseException:
        postgres.stop()
        raise
    return postgres


# ------------------------------------------------------------------------------------------------
# MLflow tracking server


@dataclass
class MlflowServer:
    """``mlflow server`` on Postgres, 127.0.0.1, one worker; artifacts proxied by the server
    (``--artifacts-destination``), as an object store behind it would be. :meth:`stop` and
    :meth:`start` again keep the port, so clients see an outage, not a move."""

    backend_uri: str
    artifacts: Path
    log_path: Path
    env: dict[str, str] | None = None
    port: int = field(default_factory=free_port)
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240) -> MlflowServer:
        command = [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend_uri,
                   "--artifacts-destination", self.artifacts.as_uri(), "--serve-artifacts",
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.service = start_service("mlflow", command, self.log_path, env=self.env, url=self.url)
        try:
            wait_until(lambda: urllib.request.urlopen(f"{self.url}/health", timeout=5).status
                       == 200, timeout, "the MLflow server", (self.service,))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def api(self, method: str, path: str, body: Any = None, **query: str) -> Any:
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return http_json(method, f"{self.url}/api/2.0/mlflow/{path.lstrip('/')}{suffix}", body)


# ------------------------------------------------------------------------------------------------
# Airflow


TERMINAL_RUN_STATES = {"success", "failed"}


@dataclass
class AirflowStack:
    """Airflow's components on a Postgres metadata DB, started by :meth:`start`."""

    env: dict[str, str]
    log_dir: Path
    port: int
    services: list[Service] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([str(BIN / "airflow"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise ServerError(f"airflow {' '.join(args)} failed ({done.returncode}):\n"
                              f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return http_json(method, f"{self.url}/api/v2/{path.lstrip('/')}", body)

    def start(self, timeout: float = 300) -> AirflowStack:
        """Migrate the metadata DB, then start api-server, scheduler, dag-processor, triggerer."""
        self.cli("db", "migrate", timeout=timeout)
        airflow = str(BIN / "airflow")
        components = {
            "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        }
        for name, command in components.items():
            self.services.append(start_service(name, command, self.log_dir / f"{name}.log",
                                               env=self.env, url=self.url))
        try:
            wait_until(lambda: self.api("GET", "monitor/health"), timeout, "the Airflow API",
                       tuple(self.services), interval=1)
        except BaseException:
            self.stop()
            raise
        return self

    def check_alive(self) -> None:
        for service in self.services:
            if not service.alive():
                raise ServerError(f"{service.name} exited ({service.process.returncode})\n"
                                  f"{service.log_tail()}")

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> dict:
        """The DAG once the dag-processor has parsed it (import errors fail at once)."""

        def parsed() -> dict | None:
            errors = self.api("GET", "importErrors")["import_errors"]
            if errors:
                raise AssertionError(f"DAG import errors: {errors}")
            return self.api("GET", f"dags/{dag_id}")

        return wait_until(parsed, timeout, f"DAG {dag_id} to be parsed", tuple(self.services),
                          interval=2)

    def ensure_pools(self, dag_id: str, slots: int = 1) -> list[str]:
        """Create every pool a task of ``dag_id`` names that does not exist yet (a task in a
        missing pool is never scheduled). Returns the pools created."""
        tasks = self.api("GET", f"dags/{dag_id}/tasks")["tasks"]
        existing = {p["name"] for p in self.api("GET", "pools?limit=1000")["pools"]}
        created = []
        for pool in sorted({t.get("pool") for t in tasks if t.get("pool")} - existing):
            self.api("POST", "pools", {"name": pool, "slots": slots,
                                       "description": "created by the integration tests"})
            created.append(pool)
        return created

    def trigger(self, dag_id: str, conf: dict, run_id: str | None = None) -> dict:
        """A manual DAG run through the REST API (what the UI's trigger form does)."""
        body: dict[str, Any] = {"conf": conf, "logical_date": None}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api("POST", f"dags/{dag_id}/dagRuns", body)

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.api("GET", f"dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        quoted = urllib.parse.quote(run_id, safe="")
        return self.api("GET", f"dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=1000"
                        )["task_instances"]

    def approve_pending(self, dag_id: str, run_id: str) -> list[str]:
        """Answer every human-in-the-loop request of a run that waits for one: its first option
        (an approval task lists "Approve" first) and its params' defaults. Returns the tasks
        answered."""
        answered = []
        quoted = urllib.parse.quote(run_id, safe="")
        try:
            pending = self.api("GET", f"dags/{dag_id}/dagRuns/{quoted}/hitlDetails"
                                      "?response_received=false")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return answered
            raise
        for detail in pending.get("hitl_details", []):
            ti = detail.get("task_instance", {})
            task_id, map_index = ti.get("task_id"), ti.get("map_index", -1)
            options = detail.get("options") or []
            # answer once the task waits for input, as a person in the UI would: a response
            # that lands while the task is still pausing races the executor's report of that run
            # (Airflow then sees a queued instance reported successful and marks it failed)
            if not options or ti.get("state") not in ANSWERABLE_STATES:
                continue
            params = {k: v.get("value") for k, v in (detail.get("params") or {}).items()}
            self.api("PATCH", f"dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/"
                              f"{map_index}/hitlDetails",
                     {"chosen_options": [options[0]], "params_input": params})
            answered.append(task_id)
        return answered

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float,
                     on_poll: Callable[[dict], None] | None = None, interval: float = 3) -> dict:
        """Poll a run until it succeeds or fails, answering approval requests on the way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            run = self.run(dag_id, run_id)
            if on_poll:
                on_poll(run)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if run["state"] == "running":
                self.approve_pending(dag_id, run_id)
            time.sleep(interval)
        states = {f"{t['task_id']}[{t['map_index']}]": t["state"]
                  for t in self.task_instances(dag_id, run_id)}
        raise ServerError(f"run {run_id} not finished after {timeout:.0f}s; tasks: {states}\n"
                          + "\n".join(s.log_tail(20) for s in self.services))


#: Task instance states in which a human-in-the-loop request may be answered: the pinned Airflow
#: (3.3.2) pauses the task as ``awaiting_input``; ``deferred``, a deferrable operator waiting on
#: its trigger, is accepted too.
ANSWERABLE_STATES = frozenset({"awaiting_input", "deferred"})


def airflow_environment(base: dict[str, str], database_url: str, port: int,
                        mlflow_url: str) -> dict[str, str]:
    """The production settings the integration tier switches on: Postgres metadata DB, the API
    on its own port, MLflow over HTTP. The cycle's and ingest's cron schedules are off (only the
    runs a test triggers exist, and those an Asset event starts: flywheel_promotion), DAGs start
    unpaused, and task heartbeats time out in a minute, not five."""
    return {
        **base,
        "PATH": os.pathsep.join([str(BIN), base.get("PATH", os.environ.get("PATH", ""))]),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "FLYWHEEL_CYCLE_SCHEDULE": "none",
        "FLYWHEEL_INGEST_SCHEDULE": "none",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "MLFLOW_TRACKING_URI": mlflow_url,
    }
