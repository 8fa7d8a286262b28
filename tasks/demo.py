"""The demo: a few days of simulated router traffic, then one flywheel cycle through Airflow.

    make demo                      # or: flywheel demo --days 3

1. builds (or reuses) the offline base models,
2. simulates ``--days`` of agent logs and feedback into the landing folder,
3. prepares the embedded Airflow (SQLite) and runs the DAG ``flywheel_cycle`` with
   ``airflow dags test`` (every task runs for real; the full log goes to a file),
4. prints the cycle's report and where to open the Airflow and MLflow UIs on the same state.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.config import get_paths, local_environment
from tasks.settings import parse_config

#: lines of the Airflow log worth showing live (the rest goes to the log file)
TASK_DONE = re.compile(r"\[DAG TEST\] end task task_id=(\S+) map_index=(-?\d+)")
PROGRESS = re.compile(r"(new_state=(failed|up_for_retry)|ERROR|Traceback|Marking run)")


class DemoConfig(BaseModel):
    days: int = Field(4, ge=1, le=60, description="Days of traffic to simulate (ending yesterday).")
    records_per_day: int = Field(2500, ge=100, le=100000, description="Agent requests per day.")
    seed: int = Field(0, ge=0, description="Simulator seed.")
    candidates: list[str] = Field(["llama-s-lora", "llama-m-lora"],
                                  description="Candidates from the catalog.")
    # thresholds for the tiny offline models (a few million parameters, ~500 training points);
    # the DAG's own defaults (0.70, 1000 ms) are meant for real candidates
    min_accuracy: float = Field(0.45, ge=0, le=1, description="Gate: minimum accuracy.")
    max_p95_latency_ms: float = Field(250.0, gt=0, description="Gate: maximum p95 latency (ms).")
    max_train_steps: int | None = Field(None, ge=1, description="Cap training steps (quick run).")
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")


def _run_airflow(args: list[str], env: dict[str, str], log_path: Path, show: bool) -> int:
    """Run the ``airflow`` CLI of this environment, logging everything, echoing progress lines."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    with log_path.open("a") as log:
        log.write(f"\n$ airflow {' '.join(args)}\n")
        process = subprocess.Popen([airflow, *args], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if not show:
                continue
            if done := TASK_DONE.search(line):
                task_id, index = done.groups()
                label = task_id if index == "-1" else f"{task_id}[{index}]"
                print(f"  {time.strftime('%H:%M:%S')} done: {label}", flush=True)
            elif PROGRESS.search(line):
                print("  " + line.rstrip()[:160], flush=True)
        return process.wait()


def demo(config: DemoConfig) -> int:
    from tasks.basemodels import ensure_base_model
    from tasks.catalog import select_candidates
    from tasks.simulate import SimulateConfig, simulate

    sys.stdout.reconfigure(line_buffering=True)  # show each step as it happens, even when piped
    started = time.perf_counter()
    paths = get_paths(config.home)
    env = {**os.environ, **local_environment(paths)}
    os.environ.update(env)
    print(f"Flywheel home: {paths.home}")

    print("\n[1/4] base models (built once, cached by recipe)")
    for spec in select_candidates(config.candidates):
        print(f"  {spec.base_model}: {ensure_base_model(spec.base_model, home=paths.home)}")

    print(f"\n[2/4] simulating {config.days} days of router traffic")
    start = dt.date.today() - dt.timedelta(days=config.days)
    sim = simulate(SimulateConfig(seed=config.seed, days=config.days, start_date=start,
                                  records_per_day=config.records_per_day, home=str(paths.home)))
    print(f"  {sim.records} records, {sim.feedback_inline + sim.feedback_late} ratings "
          f"({sim.negatives} negative), {sim.malformed} malformed, {sim.duplicates} duplicates "
          f"-> {paths.landing}")

    print("\n[3/4] Airflow: metadata database (SQLite)")
    log_path = paths.home / "demo-airflow.log"
    if _run_airflow(["db", "migrate"], env, log_path, show=False) != 0:
        print(f"airflow db migrate failed; see {log_path}", file=sys.stderr)
        return 1

    conf = {"candidates": config.candidates, "min_accuracy": config.min_accuracy,
            "max_p95_latency_ms": config.max_p95_latency_ms,
            "max_train_steps": config.max_train_steps, "window_days": config.days + 2}
    print(f"\n[4/4] airflow dags test flywheel_cycle (full log: {log_path})")
    cycle_started = time.time()
    code = _run_airflow(["dags", "test", "flywheel_cycle", "--conf", json.dumps(conf)], env,
                        log_path, show=True)
    reports = [p for p in paths.runs.glob("*/report.md") if p.stat().st_mtime >= cycle_started]
    if code != 0 or not reports:
        print(f"\nThe cycle failed (exit {code}); see {log_path}", file=sys.stderr)
        return 1
    print("\n" + reports[0].read_text())
    print(f"Demo wall time: {time.perf_counter() - started:.0f} s")
    print("Open the same state in the UIs:\n"
          "  make airflow-ui   # http://127.0.0.1:8080  (DAG flywheel_cycle, its runs and logs)\n"
          "  make mlflow-ui    # http://127.0.0.1:5000  (experiment flywheel-router, registered "
          "model flywheel-router)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return demo(parse_config(DemoConfig, argv, "flywheel demo", __doc__))
