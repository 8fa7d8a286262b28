"""The demo: simulated router traffic, then several flywheel cycles through Airflow, with the
reference agent serving the champion between them.

    make demo                      # or: flywheel demo --cycles 3 --days 4

1. converts (or reuses) the real base models the candidates fine-tune
(:mod:`tasks.training.pretrained`),
2. simulates ``--days + --cycles - 1`` days of the teacher's logs and feedback, and holds back all
   but the first ``--days``: one more day is released before each later cycle,
3. prepares the embedded Airflow (SQLite),
4. for each cycle: (from the second on) the reference agent (:mod:`tasks.serving.agent`) routes
   ``--agent-queries`` CLINC150 queries with the current champion through MLflow pyfunc and logs
   them to the landing folder, and simulated users rate some of those answers (from the gold
   labels, as the traffic simulator rates the teacher's); then ``airflow dags test
   flywheel_cycle`` runs every task for real, and ``airflow dags test flywheel_promotion`` decides
   on the challenger it registered, with ``auto_approve`` so the approval does not wait for a
   person (a scheduler would start that run from the cycle's Asset event),
5. prints each cycle's report and, at the end, a per-cycle table: dataset, winner, champion,
   its accuracy and p95 latency, and the agent's own routing accuracy (simulation oracle).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tasks.core.clock import now_iso
from tasks.core.config import get_paths
from tasks.core.settings import parse_config
from tasks.demo.simulate import gold_labels
from tasks.stack.cycle import prepare_airflow, promote_challenger, run_cycle


class DemoConfig(BaseModel):
    days: int = Field(4, ge=1, le=60, description="Days of traffic before the first cycle.")
    cycles: int = Field(3, ge=1, le=20, description="Flywheel cycles to run in a row.")
    records_per_day: int = Field(2500, ge=100, le=100000, description="Agent requests per day.")
    seed: int = Field(0, ge=0, description="Simulator seed.")
    candidates: list[str] = Field(["minilm-router-lora"], description=(
        "Candidates from the catalog (the SmolLM2 ones train 10x slower here per step; "
        "make bench-quality measures them)."))
    teacher_labels: Literal["off", "train"] = Field("train", description=(
        "Curation: add the teacher's routes of unrated records to the training split ('off': "
        "curated labels only)."))
    max_teacher_labelled: int | None = Field(4000, ge=1, description=(
        "Curation: at most this many teacher-labelled training rows (none: all of them)."))
    # The gate runs with the DAG's own thresholds: the demo never lowers them.
    min_speedup: float | None = Field(10.0, gt=0, description=(
        "Gate: minimum teacher p95 / candidate p95 (teacher from its logs); the talk's question "
        "is a student at a tenth of the teacher's latency."))
    icl_examples: int = Field(4, ge=0, le=32, description="In-context baseline examples.")
    max_train_steps: int | None = Field(800, ge=1, description=(
        "Cap training steps, cycle 1 (none: the catalog's epochs; 800 steps of 16 are about 3 "
        "epochs of 610 curated + 4,000 teacher-labelled points, where the catalog's 10 would "
        "take a cycle past its budget)."))
    later_max_train_steps: int | None = Field(800, ge=1, description=(
        "Cap training steps in later cycles (none: the catalog's epochs)."))
    agent_queries: int = Field(300, ge=0, le=100000, description=(
        "Queries the agent routes with the champion before each later cycle."))
    agent_feedback_rate: float = Field(0.5, ge=0, le=1, description=(
        "Share of the agent's answers simulated users rate."))
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")


def _move_dated(source: Path, target: Path, moves) -> list[str]:
    """Move the JSONL files of ``source`` whose name holds a date for which ``moves(date)`` is
    true into ``target``; returns their names."""
    target.mkdir(parents=True, exist_ok=True)
    moved = []
    for path in sorted(source.glob("*.jsonl")):
        found = re.search(r"(\d{4}-\d{2}-\d{2})", path.name)
        if found and moves(dt.date.fromisoformat(found.group(1))):
            path.rename(target / path.name)
            moved.append(path.name)
    return moved


def _hold_back(paths, first_day: dt.date, days: int) -> Path:
    """Move landing files dated after the first ``days`` days to a holding folder."""
    held = paths.simulator / "held"
    cutoff = first_day + dt.timedelta(days=days - 1)
    _move_dated(paths.landing, held, lambda day: day > cutoff)
    return held


def _release(paths, held: Path, until: dt.date) -> list[str]:
    """Move held files dated up to ``until`` back into the landing folder."""
    return _move_dated(held, paths.landing, lambda day: day <= until)


def _agent_turn(config: DemoConfig, paths, cycle: int) -> dict:
    """The agent routes fresh queries with the champion; simulated users rate some answers."""
    import statistics

    import numpy as np

    from tasks.core.files import write_bytes_atomic
    from tasks.demo.clinc150 import examples
    from tasks.demo.simulate import SimulateConfig
    from tasks.serving.agent import route_and_log

    users = SimulateConfig()  # the same rating behaviour the teacher's users have
    rng = np.random.default_rng([config.seed, 11, cycle])
    pool = examples()
    picks = rng.choice(len(pool), size=config.agent_queries, replace=False)
    chosen = [pool[int(i)] for i in picks]
    result = route_and_log([e.query for e in chosen], home=str(paths.home),
                           client_id="demo-agent")
    events, correct = [], 0
    for example, routed in zip(chosen, result.routed, strict=True):
        right = routed.expert == example.expert
        correct += right
        if rng.random() >= config.agent_feedback_rate:
            continue
        p_negative = users.p_negative_if_right if right else users.p_negative_if_wrong
        events.append({"kind": "feedback", "id": routed.id, "source": "user",
                       "timestamp": now_iso(z=True),
                       "rating": -1 if rng.random() < p_negative else 1})
    write_bytes_atomic(paths.landing / f"router-agent-feedback-cycle{cycle}.jsonl",
                       "".join(json.dumps(e) + "\n" for e in events).encode())
    return {"model": result.model, "queries": len(chosen), "ratings": len(events),
            "oracle_accuracy": correct / max(1, len(chosen)),
            "p50_ms": statistics.median(r.latency_ms for r in result.routed)}


def _table(rows: list[dict]) -> str:
    from tabulate import tabulate

    def f(value, spec):
        return "-" if value is None else format(value, spec)

    return tabulate(
        [(r["cycle"], r["dataset"], r["train_test"], r["student"], f(r["student_acc"], ".3f"),
          f(r["student_p95"], ".1f"), r["teacher"], f(r["teacher_p95"], ".0f"),
          r["winner"] or "none", r["champion"], f(r["accuracy"], ".3f"), f(r["p95_ms"], ".1f"),
          r["agent"], f(r["seconds"], ".0f"))
         for r in rows],
        headers=["cycle", "dataset", "train/test", "best student", "its acc", "its p95 ms",
                 "teacher acc (traffic audit)", "teacher p95 ms", "gate winner",
                 "champion after", "champion acc", "champion p95 ms",
                 "agent before the cycle (oracle acc, p50)", "wall s"],
        tablefmt="github")


def _cycle_row(report: dict) -> dict:
    """The per-cycle table's figures from a cycle's ``report.json``."""
    students = [e for e in report.get("evaluations") or [] if e.get("finetuned")]
    best = max(students, key=lambda e: e["finetuned"]["accuracy"], default=None)
    teacher = report.get("teacher") or {}
    interval = teacher.get("accuracy_interval")
    teacher_text = "-" if teacher.get("accuracy") is None else (
        f"{teacher['accuracy']:.3f}"
        + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
        + f" n={teacher.get('n_traffic_audit') or 0}")
    return {"student": best["candidate"] if best else "-",
            "student_acc": best["finetuned"]["accuracy"] if best else None,
            "student_p95": best["finetuned"]["latency_p95_ms"] if best else None,
            "teacher": teacher_text, "teacher_p95": teacher.get("latency_p95_ms")}


def demo(config: DemoConfig) -> int:
    from tasks.demo.simulate import SimulateConfig, simulate
    from tasks.training.catalog import select_candidates
    from tasks.training.finetune import check_base_models

    sys.stdout.reconfigure(line_buffering=True)  # show each step as it happens, even when piped
    started = time.perf_counter()
    paths = get_paths(config.home)
    print(f"Flywheel home: {paths.home}")

    print("\n[1/4] base models (converted or built once, cached)")
    specs = select_candidates(config.candidates)
    for spec in specs:
        print(f"  {spec.name}: {spec.base_model} -> "
              f"{check_base_models([spec], home=paths.home)[spec.name]}")

    total_days = config.days + config.cycles - 1
    print(f"\n[2/4] simulating {total_days} days of router traffic (the teacher's logs); "
          f"{config.days} land now, one more before each later cycle")
    start = dt.date.today() - dt.timedelta(days=total_days)
    sim = simulate(SimulateConfig(seed=config.seed, days=total_days, start_date=start,
                                  records_per_day=config.records_per_day, home=str(paths.home)))
    held = _hold_back(paths, start, config.days)
    print(f"  {sim.records} records, {sim.feedback_inline + sim.feedback_late} ratings "
          f"({sim.negatives} negative), {sim.malformed} malformed, {sim.duplicates} duplicates "
          f"-> {paths.landing} (later days held in {held})")

    print("\n[3/4] Airflow: metadata database (SQLite)")
    log_path = paths.home / "demo-airflow.log"
    try:
        env = prepare_airflow(paths, log_path)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1

    rows: list[dict] = []
    for cycle in range(1, config.cycles + 1):
        cycle_started = time.perf_counter()
        print(f"\n[4/4] cycle {cycle} of {config.cycles}")
        agent = "-"
        if cycle > 1:
            released = _release(paths, held, start + dt.timedelta(days=config.days + cycle - 2))
            print(f"  released {', '.join(released) or 'nothing'}")
            if config.agent_queries:
                from tasks.registry.register import champion_version

                if champion_version("router", str(paths.home)) is None:
                    print("  no champion yet: the agent has nothing to serve")
                else:
                    turn = _agent_turn(config, paths, cycle)
                    agent = (f"{turn['model']}: {turn['oracle_accuracy']:.3f}, "
                             f"{turn['p50_ms']:.1f} ms")
                    print(f"  agent routed {turn['queries']} queries with {turn['model']} "
                          f"(accuracy {turn['oracle_accuracy']:.3f} vs gold labels, simulation "
                          f"oracle; p50 {turn['p50_ms']:.1f} ms); users rated {turn['ratings']}")
        steps = config.max_train_steps if cycle == 1 else config.later_max_train_steps
        conf = {"candidates": config.candidates, "min_speedup": config.min_speedup,
                "icl_examples": config.icl_examples, "max_train_steps": steps,
                "teacher_labels": config.teacher_labels,
                "max_teacher_labelled": (config.max_teacher_labelled
                                         if config.teacher_labels == "train" else None),
                "window_days": total_days + 2, "auto_approve": True,
                # the simulator knows every query's gold expert: the demo's stand-in for people
                "sme_review": "simulated", "gold_labels": str(gold_labels(paths))}
        report = run_cycle(conf, env, paths, log_path)
        if report is None:
            print(f"Cycle {cycle} failed", file=sys.stderr)
            return 1
        if report["registered"].get("registered"):
            report = promote_challenger(report, "router", env, log_path)
            if report is None:
                print(f"Promotion after cycle {cycle} failed", file=sys.stderr)
                return 1
        report_path = Path(report["report_path"])
        print("\n" + report_path.with_name("report.md").read_text())
        champion = report["champion"]
        rows.append({
            "cycle": cycle, "dataset": report["dataset"]["version"],
            "train_test": f"{report['dataset']['n_train']}/{report['dataset']['n_test']}",
            "winner": report["decision"].get("winner"),
            "champion": (f"v{champion['version']} {champion['candidate']}"
                         + (" (new)" if champion.get("changed") else "")
                         if champion.get("version") else "none"),
            "accuracy": champion.get("accuracy"), "p95_ms": champion.get("latency_p95_ms"),
            "agent": agent, "seconds": time.perf_counter() - cycle_started,
            **_cycle_row(report)})
        print(f"Charts and HTML report: {report_path.parent}")

    print("\nPer cycle: the best fine-tuned student and the champion on that cycle's frozen "
          "test set (p95 at batch 1 on this machine's CPU), beside the teacher (accuracy graded "
          "by experts on a random sample of its traffic, with a 95% interval; p95 from its "
          "logs). Models: " + ", ".join(f"{s.name} ({s.base_model})" for s in specs) + ".\n")
    print(_table(rows))
    print(f"\nDemo wall time: {time.perf_counter() - started:.0f} s")
    print("Open the same state in the UIs:\n"
          "  make airflow-ui   # http://127.0.0.1:8080  (DAGs flywheel_cycle and "
          "flywheel_promotion, their runs and logs)\n"
          "  make mlflow-ui    # http://127.0.0.1:5000  (experiment flywheel-router, registered "
          "model flywheel-router, aliases champion / previous-champion)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return demo(parse_config(DemoConfig, argv, "flywheel demo", __doc__))
