"""The cycle's report: the funnel as numbers, each model beside the teacher, the gate, the registry.

Written to ``runs/<cycle>/report.md`` and ``report.json`` and logged to MLflow as the cycle's own
run, so the same summary is in the task log, on disk and in the MLflow UI.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.config import get_paths

TINY_NOTE = ("The tiny Llama-architecture models this project builds (flywheel-llama-*, "
             "tasks/basemodels.py) are test stand-ins, not production-size LLMs.")


def model_note(evaluations: list[dict]) -> str:
    """What the models are, true for whichever ran: real pretrained bases, or the tiny builds."""
    bases = sorted({e.get("base_model") or "?" for e in evaluations})
    note = f"Base models: {', '.join(bases) or '-'}; latency measured on this machine."
    if any(b.startswith("flywheel-llama") for b in bases):
        note += " " + TINY_NOTE
    return note


def guard_text(evaluations: list[dict]) -> str:
    """What each fine-tuned model's scope guard did on the test split (empty: no guards)."""
    parts = []
    for e in evaluations:
        tuned = e.get("finetuned") or {}
        guard = tuned.get("scope_guard")
        if guard:
            k = guard.get("neighbours") or 1  # guards described before the field: the nearest
            near = "the nearest" if k == 1 else f"the {k} nearest"
            parts.append(f"{e['candidate']} sent {tuned.get('guard_fallbacks') or 0} of "
                         f"{tuned.get('n_test')} test queries to {guard['fallback']} (mean "
                         f"similarity to {near} of {guard['reference_queries']} in-scope "
                         f"training queries below {guard['threshold']:.3f}; "
                         f"{guard['budget']:.0%} budget)")
    return ("Scope guard: " + "; ".join(parts) + ". Its time is inside the latency."
            if parts else "")


def teacher_accuracy_text(teacher: dict) -> str:
    """The teacher's accuracy as the gate reads it: graded by experts on the traffic audit."""
    n = teacher.get("n_traffic_audit") or 0
    interval = teacher.get("accuracy_interval")
    text = "-" if teacher.get("accuracy") is None else f"{teacher['accuracy']:.3f}"
    if teacher.get("accuracy") is not None and interval:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    text += f" (traffic audit, n={n})"
    oracle = teacher.get("oracle_accuracy")
    if oracle is not None:
        text += f"; gold {oracle:.3f} (simulation oracle)"
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _model_row(label: str, r: dict, gate: str = "-") -> tuple:
    cost = r.get("cost_per_1k_requests")
    qps = r.get("throughput_qps")
    bpb = r.get("general_bits_per_byte")
    return (label, r.get("prompting", "-"), _acc(r["accuracy"]), _acc(r.get("mc_accuracy")),
            _acc(r.get("macro_f1")), _ms(r.get("latency_p50_ms")), _ms(r.get("latency_p95_ms")),
            _ms(r.get("ttft_p50_ms")), "-" if qps is None else f"{qps:,.1f}",
            "-" if cost is None else f"{cost:.5f}", "-" if bpb is None else f"{bpb:.3f}", gate)


def champion_after(champion: dict | None, promoted: dict | None, evaluations: list[dict],
                   winner: str | None) -> dict:
    """Who serves after this cycle, with accuracy and p95 on this cycle's test set."""
    if promoted and promoted.get("promoted"):
        tuned = next((e["finetuned"] for e in evaluations if e["candidate"] == winner), {})
        return {"version": promoted["version"], "candidate": winner,
                "accuracy": tuned.get("accuracy"), "latency_p95_ms": tuned.get("latency_p95_ms"),
                "changed": bool(promoted.get("changed"))}
    if champion and champion.get("evaluation"):
        ev = champion["evaluation"]
        return {"version": champion["version"], "candidate": champion.get("candidate"),
                "accuracy": ev["accuracy"], "latency_p95_ms": ev["latency_p95_ms"],
                "changed": False}
    return {"version": None, "candidate": None, "accuracy": None, "latency_p95_ms": None,
            "changed": False}


def model_points(teacher: dict, evaluations: list[dict], champion: dict | None) -> list[dict]:
    """Every model of the cycle as a point for the accuracy-vs-latency chart."""
    points = []
    if teacher.get("accuracy") is not None:
        points.append({"name": f"teacher {teacher.get('model') or ''}".strip(),
                       "kind": "teacher", "accuracy": teacher["accuracy"],
                       "latency_p95_ms": teacher.get("latency_p95_ms")})
    for e in evaluations:
        points.append({"name": e["candidate"], "kind": "fine-tuned",
                       "accuracy": e["finetuned"]["accuracy"],
                       "latency_p95_ms": e["finetuned"]["latency_p95_ms"]})
        if e.get("base"):
            points.append({"name": e["base"]["candidate"], "kind": "zero-shot",
                           "accuracy": e["base"]["accuracy"],
                           "latency_p95_ms": e["base"]["latency_p95_ms"]})
        if e.get("base_icl"):
            points.append({"name": e["base_icl"]["candidate"], "kind": "in-context",
                           "accuracy": e["base_icl"]["accuracy"],
                           "latency_p95_ms": e["base_icl"]["latency_p95_ms"]})
    if champion and champion.get("evaluation"):
        ev = champion["evaluation"]
        points.append({"name": ev["candidate"], "kind": "champion", "accuracy": ev["accuracy"],
                       "latency_p95_ms": ev["latency_p95_ms"]})
    return points


def render(cycle_id: str, workload_id: str, ingested: dict, validated: dict, dataset: dict,
           teacher: dict, evaluations: list[dict], decision: dict, registered: dict,
           champion: dict | None = None, promoted: dict | None = None,
           history: list[dict] | None = None, images: dict[str, str] | None = None) -> str:
    """The report as Markdown (also readable as plain text in a terminal or task log)."""
    from tabulate import tabulate

    funnel = dataset.get("funnel") or {}
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
    ]
    # the curate stage's funnel, whatever counts it reports, in its order
    data_rows += [(name.replace("_", " "), value) for name, value in funnel.items()]
    data_rows.append(("train / test", f"{dataset['n_train']} / {dataset['n_test']}"))
    verdicts = {v["candidate"]: v for v in decision["verdicts"]}
    model_rows = [(f"teacher {teacher.get('model') or ''} (from its logs)", "logged",
                   teacher_accuracy_text(teacher), "-", "-", _ms(teacher.get("latency_p50_ms")),
                   _ms(teacher.get("latency_p95_ms")), "-", "-", "-", "-", "-")]
    for e in evaluations:
        if e.get("base"):
            model_rows.append(_model_row(e["base"]["candidate"], e["base"]))
        if e.get("base_icl"):
            model_rows.append(_model_row(e["base_icl"]["candidate"], e["base_icl"]))
        verdict = verdicts.get(e["candidate"], {})
        model_rows.append(_model_row(e["candidate"], e["finetuned"],
                                     "PASS" if verdict.get("passed") else "fail"))
    if champion and champion.get("evaluation"):
        model_rows.append(_model_row(f"{champion['evaluation']['candidate']} "
                                     f"({champion.get('candidate')}, re-evaluated)",
                                     champion["evaluation"], "champion"))
    first = evaluations[0]["finetuned"] if evaluations else {}
    hardware = first.get("latency_hardware", "-")
    price = first.get("price_per_device_hour")
    lines = [
        f"# Flywheel cycle {cycle_id} (workload {workload_id})", "",
        *([f"**Data alarm:** {validated['alarm']}", ""] if validated.get("alarm") else []),
        "## Data funnel", "", tabulate(data_rows, headers=["stage", "records"], tablefmt="github"),
        "", f"Dataset version {dataset['version']}.", "",
        f"## Models on the frozen test split ({dataset['n_test']} queries)", "",
        tabulate(model_rows, headers=["model", "prompting", "accuracy", "mc acc", "macro-F1",
                                      "p50 ms", "p95 ms", "TTFT p50", "q/s", "cost/1k",
                                      "bits/byte", "gate"],
                 tablefmt="github"), "",
        "accuracy: exact match of the generated expert (what the agent gets); mc acc: multiple "
        "choice by log-likelihood. Latency at batch 1 after warm-up; q/s at batch "
        f"{first.get('throughput_batch_size', '-')}; cost per 1,000 requests at "
        f"{price if price is not None else '-'} per device-hour from that throughput. "
        f"{model_note(evaluations)} Hardware: {hardware}. The teacher's latency comes from its "
        "logs; its accuracy from experts' labels on a random sample of its traffic (the traffic "
        "audit, with a 95% interval), never from its own thumbs-up answers. "
        "bits/byte: the forgetting check, general text scored by each causal model and its base "
        f"({first.get('general_text_docs') or 0} documents; lower is better, a rise over the "
        "base is what fine-tuning made it forget).", "",
        *([guard_text(evaluations), ""] if guard_text(evaluations) else []),
        "## Gate", "",
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
    if promoted and promoted.get("promoted"):
        lines.append(f"Approved and promoted: version {promoted['version']} holds `champion`"
                     + (f"; version {promoted['previous']} is `previous-champion`."
                        if promoted.get("previous") else "."))
    elif registered.get("registered"):
        lines.append("Not promoted in this run: the challenger waits for approval.")
    if history:
        lines += ["", "## Champion history", "", tabulate(
            [(h["cycle"], f"v{h['version']}" if h.get("version") else "-",
              h.get("candidate") or "-", _acc(h.get("accuracy")), _ms(h.get("latency_p95_ms")))
             for h in history],
            headers=["cycle", "champion", "candidate", "accuracy", "p95 ms"], tablefmt="github")]
    if images:
        lines += ["", "## Charts", ""] + [f"![{name}]({path})" for name, path in images.items()]
    return "\n".join(lines) + "\n"


def champion_history(workload_id: str, paths) -> list[dict]:
    """Champion after each earlier cycle, from the cycle runs logged to MLflow (oldest first)."""
    from tasks import tracking

    mlflow = tracking.configure(paths)
    if mlflow.get_experiment_by_name(tracking.experiment_name(workload_id)) is None:
        return []
    runs = mlflow.search_runs(experiment_names=[tracking.experiment_name(workload_id)],
                              filter_string="tags.`flywheel.stage` = 'cycle'",
                              order_by=["attributes.start_time ASC"], output_format="list")
    out = []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        out.append({"cycle": run.data.tags.get("flywheel.cycle_id", run.info.run_name),
                    "version": params.get("champion_version") or None,
                    "candidate": params.get("champion_candidate") or None,
                    "accuracy": metrics.get("champion_accuracy"),
                    "latency_p95_ms": metrics.get("champion_latency_p95_ms")})
    return out


def _html(markdown_text: str, title: str) -> str:
    """A self-contained page: the Markdown report as preformatted text, charts as images."""
    import html
    import re

    images = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", markdown_text)
    text = re.sub(r"!\[[^\]]*\]\([^)]+\)\n?", "", markdown_text)
    figures = "".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">'
                      f"<figcaption>{html.escape(alt)}</figcaption></figure>"
                      for alt, src in images)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}"
            "img{max-width:100%}</style></head><body>"
            f"<pre>{html.escape(text)}</pre>{figures}</body></html>\n")


def write_report(cycle_id: str, workload_id: str, ingested: dict, validated: dict, dataset: dict,
                 teacher: dict, evaluations: list[dict], decision: dict, registered: dict,
                 champion: dict | None = None, promoted: dict | None = None,
                 home: str | None = None) -> dict:
    """Render, chart, print, save and log the report; returns where it went and the headline."""
    from tasks import plots, tracking

    paths = get_paths(home)
    out = paths.runs / cycle_id
    out.mkdir(parents=True, exist_ok=True)
    after = champion_after(champion, promoted, evaluations, decision.get("winner"))
    history = champion_history(workload_id, paths)
    history = [h for h in history if h["cycle"] != cycle_id] + [{"cycle": cycle_id, **after}]
    images = {"accuracy vs p95 latency": plots.pareto(
        model_points(teacher, evaluations, champion), out / "pareto.png",
        f"cycle {cycle_id}: accuracy vs p95 latency").name}
    winner = next((e for e in evaluations if e["candidate"] == decision.get("winner")), None)
    if winner and winner["finetuned"].get("confusion"):
        images[f"confusion matrix of {winner['candidate']}"] = plots.confusion(
            winner["finetuned"]["confusion"], out / "confusion.png",
            f"{winner['candidate']}: gold vs predicted").name
    if dataset.get("funnel"):
        images["data funnel"] = plots.funnel(dataset["funnel"], out / "funnel.png",
                                             f"funnel, dataset {dataset['version']}").name
    images["champion history"] = plots.history(history, out / "champion_history.png",
                                               f"champion of {workload_id} per cycle").name
    text = render(cycle_id, workload_id, ingested, validated, dataset, teacher, evaluations,
                  decision, registered, champion, promoted, history, images)
    print(text)
    summary = {"cycle_id": cycle_id, "workload_id": workload_id, "ingested": ingested,
               "validated": validated, "dataset": dataset, "teacher": teacher,
               "evaluations": evaluations, "champion_before": champion, "decision": decision,
               "registered": registered, "promoted": promoted, "champion": after,
               "history": history}
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(_html(text, f"Flywheel cycle {cycle_id}"))
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    with tracking.run(workload_id, run_name=f"{cycle_id}/cycle",
                      tags={"flywheel.cycle_id": cycle_id, "flywheel.stage": "cycle"},
                      paths=paths):
        import mlflow

        funnel = dataset.get("funnel") or {}
        mlflow.log_metrics({f"funnel.{k}": float(v) for k, v in funnel.items()
                            if isinstance(v, int | float)})
        mlflow.log_metrics({"records_in": ingested["lines_in"],
                            "quarantined": ingested["quarantined"] + validated["quarantined"],
                            "stored": validated["stored"], "n_train": dataset["n_train"],
                            "n_test": dataset["n_test"]})
        mlflow.log_params({"dataset_version": dataset["version"],
                           "winner": decision.get("winner") or "none",
                           "champion_version": after["version"] or "",
                           "champion_candidate": after["candidate"] or ""})
        mlflow.log_metrics({k: v for k, v in (
            ("champion_accuracy", after["accuracy"]),
            ("champion_latency_p95_ms", after["latency_p95_ms"])) if v is not None})
        mlflow.log_metrics({f"pii.{kind}": n
                            for kind, n in (ingested.get("pii_redacted") or {}).items()})
        for name in ("report.md", "report.html", "report.json", *images.values()):
            mlflow.log_artifact(str(out / name))
        # the great-expectations result (JSON, and Data Docs HTML where made) beside the report
        for key in ("validation_path", "validation_html_path"):
            if validated.get(key) and Path(validated[key]).is_file():
                mlflow.log_artifact(validated[key], artifact_path="validation")
    return {"report_path": str(out / "report.md"), "winner": decision.get("winner"),
            "registered": registered, "promoted": promoted, "champion": after}
