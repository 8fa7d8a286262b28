"""Open the embedded state in its UIs, bound to 127.0.0.1 only.

    flywheel serve airflow    # Airflow UI and API on http://127.0.0.1:8080 (SQLite, LocalExecutor)
    flywheel serve mlflow     # MLflow UI on http://127.0.0.1:5000 (the same SQLite store)

Both read the home the demo wrote (``$FLYWHEEL_HOME``). Stop with Ctrl-C.

Before the components start, the DAGs are serialized into the metadata database, so the UI shows
the demo's runs from its first page load, and each DAG's state is printed: in the embedded setup a
DAG is active from its first parse (``flywheel_ingest`` every 15 minutes, ``flywheel_cycle``
nightly at 02:00 UTC), and a DAG switched off in the UI stays off.

Airflow runs as its four components (api-server, scheduler, dag-processor, triggerer) rather than
``airflow standalone``, because standalone also starts log servers that listen on every interface;
here the components share one machine and read task logs from disk, so those are skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.core.config import (
    MLFLOW_UI_HOST,
    MLFLOW_UI_PORT,
    get_paths,
    local_environment,
    mlflow_artifact_root,
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0] not in {"airflow", "mlflow"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    paths = get_paths()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **local_environment(paths)}
    # child processes that call `airflow ...` by name find this environment's
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    if argv[0] == "mlflow":
        command = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri",
                   env["MLFLOW_TRACKING_URI"], "--default-artifact-root",
                   mlflow_artifact_root(paths), "--host", MLFLOW_UI_HOST,
                   "--port", str(MLFLOW_UI_PORT)]
        print("$", " ".join(command), flush=True)
        os.execve(command[0], command, env)
    airflow = str(bin_dir / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    for line in prepare_dags(airflow, env):
        print(line, flush=True)
    from tasks.training.finetune import ensure_training_pool

    os.environ.update(env)  # the pool command talks to this home's metadata database
    ensure_training_pool()  # without the pool the scheduler never runs a finetune task
    return run_airflow(airflow, env)


def prepare_dags(airflow: str, env: dict[str, str]) -> list[str]:
    """Serialize the DAGs into the metadata database now (the UI lists a DAG and its runs only
    once it is serialized; the dag-processor would take a minute) and say which are active."""
    import json

    subprocess.run([airflow, "dags", "reserialize"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listed = subprocess.run([airflow, "dags", "list", "--output", "json"], env=env, check=True,
                            capture_output=True, text=True).stdout
    # the CLI prints warnings to stdout before its JSON
    table = next((line for line in listed.splitlines() if line.startswith("[")), "[]")
    lines = []
    for dag in sorted(json.loads(table), key=lambda d: d["dag_id"]):
        paused = str(dag.get("is_paused")).lower() == "true"
        lines.append(f"  {dag['dag_id']}: " + (
            f"paused (switch it on in the UI, or: airflow dags unpause {dag['dag_id']})"
            if paused else "active"))
    return ["DAGs:", *lines]


def run_airflow(airflow: str, env: dict[str, str]) -> int:
    """Start Airflow's components, stop them all (by PID) when one exits or on Ctrl-C/SIGTERM."""
    components = [
        [airflow, "api-server", "--host", "127.0.0.1", "--port", env["AIRFLOW__API__PORT"]],
        [airflow, "scheduler", "--skip-serve-logs"],
        [airflow, "dag-processor"],
        [airflow, "triggerer", "--skip-serve-logs"],
    ]
    processes = [subprocess.Popen(command, env=env) for command in components]
    print(f"Airflow UI: http://127.0.0.1:{env['AIRFLOW__API__PORT']} (Ctrl-C stops it)",
          flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(p.poll() is None for p in processes):
        time.sleep(0.5)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return 0 if stopping else 1
