"""The cycle's report: the funnel as numbers, each model beside the teacher, the gate, the registry.

Written to ``runs/<cycle>/report.md`` and ``report.json`` and logged to MLflow as the cycle's own
run, so the same summary is in the task log, on disk and in the MLflow UI.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.config import get_paths

MODEL_NOTE = ("Models are the tiny offline Llama-architecture models this project builds "
              "(tasks/basemodels.py), not production-size LLMs; latency measured on this machine.")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def render(cycle_id: str, workload_id: str, ingested: dict, validated: dict, dataset: dict,
           teacher: dict, evaluations: list[dict], decision: dict, registered: dict) -> str:
    """The report as Markdown (also readable as plain text in a terminal or task log)."""
    from tabulate import tabulate

    funnel = dataset.get("funnel", {})
    pii = ingested.get("pii_redacted") or {}
    data_rows = [
        ("lines read from landing files", ingested["lines_in"]),
        ("quarantined at ingest (unparseable)", ingested["quarantined"]),
        ("PII values redacted (" + ", ".join(f"{k} {v}" for k, v in pii.items()) + ")"
         if pii else "PII values redacted", sum(pii.values())),
        ("records validated", validated["records_in"]),
        ("quarantined by validation", validated["quarantined"]),
        ("duplicates skipped", validated["duplicates"]),
        ("stored", validated["stored"]),
        ("records in window", funnel.get("records_in_window", "-")),
        ("with feedback", funnel.get("with_feedback", "-")),
        ("negative feedback", funnel.get("negative", "-")),
        ("positive feedback (labelled)", funnel.get("positive", "-")),
        ("ground truth after de-dup", funnel.get("after_dedup", "-")),
        ("train / test", f"{dataset['n_train']} / {dataset['n_test']}"),
    ]
    verdicts = {v["candidate"]: v for v in decision["verdicts"]}
    oracle = teacher.get("oracle_accuracy")
    teacher_acc = f"{teacher['accuracy']:.3f}" + (
        f" (gold: {oracle:.3f}, simulation oracle)" if oracle is not None else "")
    model_rows = [(f"teacher {teacher.get('model') or ''} (from its logs)", teacher_acc, "-",
                   _ms(teacher.get("latency_p50_ms")), _ms(teacher.get("latency_p95_ms")), "-")]
    for e in evaluations:
        base, tuned = e["base"], e["finetuned"]
        model_rows.append((f"{base['candidate']} (zero-shot)", f"{base['accuracy']:.3f}",
                           f"{base['macro_f1']:.3f}", _ms(base["latency_p50_ms"]),
                           _ms(base["latency_p95_ms"]), "-"))
        verdict = verdicts.get(e["candidate"], {})
        model_rows.append((f"{e['candidate']} (fine-tuned)", f"{tuned['accuracy']:.3f}",
                           f"{tuned['macro_f1']:.3f}", _ms(tuned["latency_p50_ms"]),
                           _ms(tuned["latency_p95_ms"]),
                           "PASS" if verdict.get("passed") else "fail"))
    hardware = evaluations[0]["finetuned"]["latency_hardware"] if evaluations else "-"
    lines = [
        f"# Flywheel cycle {cycle_id} (workload {workload_id})", "",
        "## Data funnel", "", tabulate(data_rows, headers=["stage", "records"], tablefmt="github"),
        "", f"Dataset version {dataset['version']}.", "",
        f"## Models on the frozen test split ({dataset['n_test']} queries)", "",
        tabulate(model_rows, headers=["model", "accuracy", "macro-F1", "p50 ms", "p95 ms", "gate"],
                 tablefmt="github"), "",
        f"{MODEL_NOTE} Hardware: {hardware}.", "", "## Gate", "",
    ]
    for v in decision["verdicts"]:
        lines.append(f"- {v['candidate']}: {'PASS' if v['passed'] else 'FAIL'} - "
                     + "; ".join(v["reasons"]))
    lines += [f"- winner: {decision.get('winner') or 'none'} ({decision['rule']})", "",
              "## Registry", ""]
    if registered.get("registered"):
        lines.append(f"Registered {registered['model_name']} version {registered['version']} "
                     f"with alias `{registered['alias']}`.")
    else:
        lines.append(f"Nothing registered: {registered.get('reason')}.")
    return "\n".join(lines) + "\n"


def write_report(cycle_id: str, workload_id: str, ingested: dict, validated: dict, dataset: dict,
                 teacher: dict, evaluations: list[dict], decision: dict, registered: dict,
                 home: str | None = None) -> dict:
    """Render, print, save and log the report; returns where it went and the headline numbers."""
    from tasks import tracking

    paths = get_paths(home)
    text = render(cycle_id, workload_id, ingested, validated, dataset, teacher, evaluations,
                  decision, registered)
    print(text)
    out = paths.runs / cycle_id
    out.mkdir(parents=True, exist_ok=True)
    summary = {"cycle_id": cycle_id, "workload_id": workload_id, "ingested": ingested,
               "validated": validated, "dataset": dataset, "teacher": teacher,
               "evaluations": evaluations, "decision": decision, "registered": registered}
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    with tracking.run(workload_id, run_name=f"{cycle_id}/cycle",
                      tags={"flywheel.cycle_id": cycle_id, "flywheel.stage": "cycle"},
                      paths=paths):
        import mlflow

        funnel = dataset.get("funnel", {})
        mlflow.log_metrics({f"funnel.{k}": float(v) for k, v in funnel.items()
                            if isinstance(v, int | float)})
        mlflow.log_metrics({"records_in": ingested["lines_in"],
                            "quarantined": ingested["quarantined"] + validated["quarantined"],
                            "stored": validated["stored"], "n_train": dataset["n_train"],
                            "n_test": dataset["n_test"]})
        mlflow.log_params({"dataset_version": dataset["version"],
                           "winner": decision.get("winner") or "none"})
        mlflow.log_metrics({f"pii.{kind}": n
                            for kind, n in (ingested.get("pii_redacted") or {}).items()})
        mlflow.log_artifact(str(out / "report.md"))
        mlflow.log_artifact(str(out / "report.json"))
        # the great-expectations result (JSON, and Data Docs HTML where made) beside the report
        for key in ("validation_path", "validation_html_path"):
            if validated.get(key) and Path(validated[key]).is_file():
                mlflow.log_artifact(validated[key], artifact_path="validation")
    return {"report_path": str(out / "report.md"), "winner": decision.get("winner"),
            "registered": registered}
