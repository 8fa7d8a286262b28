"""One flywheel cycle of one workload on the embedded stack, from the command line.

    flywheel cycle --workload-id desk --workloads-dir ./workloads          # nobody reviews
    flywheel cycle --workload-id desk --workloads-dir ./workloads --approve # and promote it
    flywheel cycle --workload-id desk --window-days 30 --conf '{"teacher_labels": "train"}'

Runs the DAG ``flywheel_cycle`` for real (``airflow dags test`` against this home's embedded
Airflow: SQLite, no scheduler needed) on whatever the landing folder holds, prints each task as it
finishes, a running task's progress every few seconds (a fine-tune's step, loss and time left),
and then the cycle's report. Candidates and gate thresholds come from the workload's file unless
``--conf`` names them. With ``--approve``, a challenger the gate passed is promoted at once
(``flywheel_promotion`` with ``auto_approve``); without, it waits as ``challenger`` for a reviewer
(the MLflow UI, or ``flywheel registry``).

Review: ``skip`` (the default here) curates from user feedback and the teacher's labels alone;
``ui`` needs the Airflow UI and a running scheduler (``make airflow-ui``), where the review waits
in *Required actions*; between cycles, ``flywheel review export`` / ``import`` lets experts label
the queue in a spreadsheet instead. ``simulated`` is the demo's (it reads the simulator's gold
labels, which real logs never have).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.core.config import Paths, get_paths, local_environment
from tasks.core.settings import parse_config
from tasks.core.workload import Name, load_workload
from tasks.reporting.report import REPORT_MARKER, load_report

#: lines of the Airflow log worth showing live (the rest goes to the log file)
TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)")
TASK_DONE = re.compile(r"\[DAG TEST\] end task task_id=(\S+) map_index=(-?\d+)")
NOTICE = re.compile(r"(new_state=(failed|up_for_retry)|ERROR|Traceback|Marking run)")
#: a tqdm progress bar, as the fine-tune worker and lm-eval print it, e.g.
#: ``train minilm-router-lora:  15%|#5   | 120/800 [00:30<02:50, 4.00it/s, loss=0.412]``
BAR = re.compile(r"(?:(?P<desc>[^|]*?):\s*)?\d+%\|[^|]*\|\s*(?P<n>[\d.]+[kMGT]?)/"
                 r"(?P<total>[\d.]+[kMGT]?)\s*\[[^<\]]*<(?P<eta>[^,\]]*)(?P<rest>[^\]]*)\]")
#: seconds between two progress lines of one task in the terminal
PROGRESS_EVERY = 5.0


class CycleConfig(BaseModel):
    """Settings of ``flywheel cycle``."""

    workload_id: Name = Field("router", description="Which agent's logs to learn from (its "
                                                    "workload file <workload_id>.yaml)")
    workloads_dir: str | None = Field(None, description=(
        "Folder of workload files (default $FLYWHEEL_WORKLOADS; the shipped ones are found too)"))
    sme_review: Literal["skip", "ui", "simulated"] = Field(
        "skip", description="Who reviews the judge's flags this cycle: nobody ('skip'), experts "
                            "in the Airflow UI ('ui', needs a running scheduler), or the "
                            "demo's simulated SME ('simulated')")
    window_days: int = Field(7, ge=1, le=3650, description="Use records from the last N days")
    approve: bool = Field(False, description="Promote a challenger the gate passed at once")
    conf: dict[str, Any] = Field({}, description=(
        "More DAG params as JSON (e.g. candidates, thresholds, teacher_labels); they win over "
        "the workload file"))
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME)")


def _task_label(task_id: str, map_index: str) -> str:
    return task_id if map_index == "-1" else f"{task_id}[{map_index}]"


def _duration(text: str) -> str | None:
    """tqdm's ``[H:]MM:SS`` as ``3m10s`` or ``1h02m``; None when unknown (``?``)."""
    parts = text.strip().split(":")
    if not all(part.isdigit() for part in parts):
        return None
    hours, rest = divmod(sum(int(part) * 60**i for i, part in enumerate(reversed(parts))), 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _describe(bar: re.Match[str]) -> str:
    """One progress bar state in words: ``train minilm-router-lora 120/800 loss 0.412 eta
    2m50s``."""
    words = [(bar["desc"] or "").strip() or "progress", f"{bar['n']}/{bar['total']}"]
    if loss := re.search(r"\bloss=([^,\s]+)", bar["rest"]):
        words.append(f"loss {loss[1]}")
    if bar["n"] != bar["total"] and (eta := _duration(bar["eta"])):
        words.append(f"eta {eta}")
    return " ".join(words)


class LiveEcho:
    """Which lines of ``airflow dags test`` the terminal shows; the log file keeps them all.

    Under ``dags test`` every task runs inside the airflow process, one at a time, so what it and
    its subprocesses print arrives here raw among Airflow's own log lines, progress bars included
    (the fine-tune worker's steps, loss and time left; lm-eval's requests). Without them a
    fine-tune of several minutes would look stuck. A bar refreshes often, so a task's progress is
    shown at most once every ``every`` seconds; the latest state held back is shown when the task
    ends, before its ``done`` line.
    """

    def __init__(self, every: float = PROGRESS_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self.task = "airflow"  # the running task, from its [DAG TEST] start line
        self.shown_at: dict[str, float] = {}
        self.held: dict[str, str] = {}

    def __call__(self, line: str) -> list[str]:
        """The terminal lines for one line of Airflow's output (usually none)."""
        if started := TASK_START.search(line):
            self.task = _task_label(*started.groups())
            return []
        if done := TASK_DONE.search(line):
            label = _task_label(*done.groups())
            return [*self.flush(label), f"  {time.strftime('%H:%M:%S')} done: {label}"]
        if NOTICE.search(line):
            return ["  " + line.rstrip()[:160]]
        bar = BAR.search(line)
        if bar is None or bar["n"] == "0":  # a bar just opened says nothing yet
            return []
        text = f"  {time.strftime('%H:%M:%S')} {self.task} {_describe(bar)}"
        now = self.clock()
        if now - self.shown_at.get(self.task, -math.inf) < self.every:
            self.held[self.task] = text
            return []
        self.shown_at[self.task] = now
        self.held.pop(self.task, None)
        return [text]

    def flush(self, task: str | None = None) -> list[str]:
        """The progress lines held back: ``task``'s, or every task's (the run is over)."""
        tasks = list(self.held) if task is None else [task]
        return [self.held.pop(t) for t in tasks if t in self.held]


def run_airflow(args: list[str], env: dict[str, str], log_path: Path, show: bool,
                cycles: list[str] | None = None) -> int:
    """Run the ``airflow`` CLI of this environment, logging everything; with ``show``, the
    terminal gets each task's progress and end as it happens (:class:`LiveEcho`)."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    echo = LiveEcho()
    with log_path.open("a") as log:
        log.write(f"\n$ airflow {' '.join(args)}\n")
        # text mode reads a carriage return as a line end: each refresh of a bar is a line
        process = subprocess.Popen([airflow, *args], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if cycles is not None and line.startswith(REPORT_MARKER):
                cycles.append(line[len(REPORT_MARKER):].strip())
            if show:
                for shown in echo(line):
                    print(shown, flush=True)
        code = process.wait()
    for shown in echo.flush():
        print(shown, flush=True)
    return code


def prepare_airflow(paths: Paths, log_path: Path) -> dict[str, str]:
    """The embedded stack's environment, with Airflow's metadata database migrated."""
    env = {**os.environ, **local_environment(paths)}
    os.environ.update(env)
    if run_airflow(["db", "migrate"], env, log_path, show=False) != 0:
        raise RuntimeError(f"airflow db migrate failed; see {log_path}")
    return env


def run_cycle(conf: dict[str, Any], env: dict[str, str], paths: Paths, log_path: Path
              ) -> dict[str, Any] | None:
    """One ``flywheel_cycle`` run with ``conf``; its report, or None when the run failed."""
    print(f"  airflow dags test flywheel_cycle (full log: {log_path})")
    cycles: list[str] = []  # the cycle id its report task prints
    code = run_airflow(["dags", "test", "flywheel_cycle", "--conf", json.dumps(conf)], env,
                       log_path, show=True, cycles=cycles)
    if code != 0 or not cycles:
        print(f"\nthe cycle failed (exit {code}); see {log_path}", file=sys.stderr)
        return None
    return load_report(cycles[-1], str(paths.home))


def promote_challenger(report: dict[str, Any], workload_id: str, env: dict[str, str],
                       log_path: Path) -> dict[str, Any] | None:
    """Run ``flywheel_promotion`` with ``auto_approve`` on the challenger the cycle registered;
    the report as the promotion rewrote it (None when the promotion run failed)."""
    promotion = {"workload_id": workload_id, "version": report["registered"]["version"],
                 "auto_approve": True}
    print(f"  airflow dags test flywheel_promotion (version {promotion['version']})")
    if run_airflow(["dags", "test", "flywheel_promotion", "--conf", json.dumps(promotion)], env,
                   log_path, show=True) != 0:
        print(f"\nthe promotion failed; see {log_path}", file=sys.stderr)
        return None
    # the promotion DAG's last task rendered the report again with its promoted.json
    home = Path(report["report_path"]).parent.parent.parent  # <home>/runs/<cycle>/report.json
    return load_report(report["cycle_id"], str(home))


def cycle(config: CycleConfig) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # show each step as it happens, even when piped
    workload = load_workload(config.workload_id, config.workloads_dir)  # fail before Airflow
    paths = get_paths(config.home)
    log_path = paths.home / "cycle-airflow.log"
    print(f"Flywheel home: {paths.home}; workload {workload.workload_id}: "
          f"{len(workload.experts)} experts ({', '.join(workload.expert_names)})")
    env = prepare_airflow(paths, log_path)
    conf = {"workload_id": config.workload_id, "sme_review": config.sme_review,
            "window_days": config.window_days, **config.conf}
    if config.workloads_dir:
        conf["workloads_dir"] = str(Path(config.workloads_dir).expanduser().resolve())
    report = run_cycle(conf, env, paths, log_path)
    if report is None:
        return 1
    if config.approve and report["registered"].get("registered"):
        report = promote_challenger(report, config.workload_id, env, log_path)
        if report is None:
            return 1
    print("\n" + Path(report["report_path"]).with_name("report.md").read_text())
    print(f"Charts and HTML report: {Path(report['report_path']).parent}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from tasks.core.workload import WorkloadError

    config = parse_config(CycleConfig, argv, "flywheel cycle",
                          __doc__.split("\n\n")[0] if __doc__ else None)
    try:
        return cycle(config)
    except (WorkloadError, RuntimeError) as exc:
        print(f"flywheel cycle: {exc}", file=sys.stderr)
        return 2
