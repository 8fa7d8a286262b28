"""The cycle's report: the funnel as numbers, each model beside the teacher, the gate, the registry.

Written to ``runs/<cycle>/report.md``, ``report.html`` and ``report.json`` and logged to MLflow as
the cycle's own run, so the same summary is in the task log, on disk and in the MLflow UI.

    flywheel report --cycle-id <cycle>    # render report.md and report.html again from report.json

reads ``runs/<cycle>/report.json`` (what the cycle's ``report`` task recorded) and the charts beside
it, and writes the two pages again (after an upgrade of the template, say); nothing is logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tasks.core.config import MLFLOW_UI_ADDRESS, get_paths
from tasks.core.settings import parse_config

TINY_NOTE = ("The tiny Llama-architecture models this project builds (flywheel-llama-*, "
             "tasks/demo/basemodels.py) are test stand-ins, not production-size LLMs.")


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


def _count(value: int | float | None) -> int | float | str:
    return "-" if value is None else value


# chart names (the keys of write_report's images) and the section each one explains
PARETO_CHART = "accuracy vs p95 latency"
FUNNEL_CHART = "data funnel"
HISTORY_CHART = "champion history"
CONFUSION_CHART = "confusion matrix of {candidate}"
CHART_SECTIONS = {PARETO_CHART: "models", FUNNEL_CHART: "funnel", HISTORY_CHART: "history"}



def chart_section(name: str) -> str:
    """The report section a chart sits beside: funnel, models, gate, history, or other."""
    if name.startswith(CONFUSION_CHART.split("{")[0]):
        return "gate"
    return CHART_SECTIONS.get(name, "other")


@dataclass
class Table:
    """Rows of display strings (or counts) under headers; both renderers read the same one."""

    headers: list[str]
    rows: list[tuple]
    numeric: tuple[int, ...] = ()  # columns of numbers: right-aligned in HTML
    badge: int | None = None  # the column holding a verdict word: a badge in HTML


@dataclass
class ReportData:
    """Everything the report shows, built once by :func:`report_data` for every output."""

    title: str
    alarm: str | None
    headline: list[tuple[str, str]]
    funnel: Table
    dataset_version: str
    n_test: int | str
    models: Table
    models_note: str
    guard: str
    trained: bool
    verdicts: list[dict]  # {"candidate", "passed", "reasons"}
    winner: str | None
    rule: str | None
    registry: list[str]
    history: Table | None
    images: dict[str, str] = field(default_factory=dict)  # chart name -> file, in order
    charts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # section -> charts


def _model_row(label: str, r: dict, gate: str = "-") -> tuple:
    cost = r.get("cost_per_1k_requests")
    qps = r.get("throughput_qps")
    bpb = r.get("general_bits_per_byte")
    return (label, r.get("prompting", "-"), _acc(r.get("accuracy")), _acc(r.get("mc_accuracy")),
            _acc(r.get("macro_f1")), _ms(r.get("latency_p50_ms")), _ms(r.get("latency_p95_ms")),
            _ms(r.get("ttft_p50_ms")), "-" if qps is None else f"{qps:,.1f}",
            "-" if cost is None else f"{cost:.5f}", "-" if bpb is None else f"{bpb:.3f}", gate)


def champion_after(champion: dict | None, promoted: dict | None, evaluations: list[dict],
                   winner: str | None) -> dict:
    """Who serves after this cycle, with accuracy and p95 on this cycle's test set."""
    if promoted and promoted.get("promoted"):
        tuned = next((e.get("finetuned") or {} for e in evaluations
                      if e.get("candidate") == winner), {})
        return {"version": promoted.get("version"), "candidate": winner,
                "accuracy": tuned.get("accuracy"), "latency_p95_ms": tuned.get("latency_p95_ms"),
                "changed": bool(promoted.get("changed"))}
    if champion and champion.get("evaluation"):
        ev = champion["evaluation"]
        return {"version": champion.get("version"), "candidate": champion.get("candidate"),
                "accuracy": ev.get("accuracy"), "latency_p95_ms": ev.get("latency_p95_ms"),
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
        if e.get("finetuned"):
            points.append({"name": e.get("candidate", "?"), "kind": "fine-tuned",
                           "accuracy": e["finetuned"].get("accuracy"),
                           "latency_p95_ms": e["finetuned"].get("latency_p95_ms")})
        for key, kind in (("base", "zero-shot"), ("base_icl", "in-context")):
            if e.get(key):
                points.append({"name": e[key].get("candidate", "?"), "kind": kind,
                               "accuracy": e[key].get("accuracy"),
                               "latency_p95_ms": e[key].get("latency_p95_ms")})
    if champion and champion.get("evaluation"):
        ev = champion["evaluation"]
        points.append({"name": ev.get("candidate", "champion"), "kind": "champion",
                       "accuracy": ev.get("accuracy"), "latency_p95_ms": ev.get("latency_p95_ms")})
    return points


def _winner_text(evaluations: list[dict], verdicts: list[dict], winner: str | None) -> str:
    if winner:
        return winner
    if not evaluations:
        return "no winner: no model was trained this cycle"
    if not verdicts:
        return "no winner: the gate judged no candidate"
    return "no winner: no candidate passed the gate"


def _champion_text(after: dict) -> str:
    if after["version"] is None:
        return "none yet"
    acc, p95 = after["accuracy"], after["latency_p95_ms"]
    return (f"version {after['version']} ({after['candidate'] or '-'}): accuracy "
            f"{'not measured' if acc is None else f'{acc:.3f}'}, p95 "
            f"{'not measured' if p95 is None else f'{p95:,.1f} ms'}"
            + (" (changed this cycle)" if after["changed"] else ""))


def report_data(cycle_id: str, workload_id: str, ingested: dict, validated: dict, dataset: dict,
                teacher: dict, evaluations: list[dict], decision: dict, registered: dict,
                champion: dict | None = None, promoted: dict | None = None,
                history: list[dict] | None = None,
                images: dict[str, str] | None = None) -> ReportData:
    """The report's rows and sentences as plain data, for the Markdown and the HTML alike.

    Any stage's figure may be missing (a cycle whose training failed, a gate that picked nobody,
    a candidate without a measured latency): it shows as ``-``, never as an error.
    """
    evaluations = evaluations or []
    funnel = dataset.get("funnel") or {}
    pii = ingested.get("pii_redacted") or {}
    data_rows = [
        ("lines read from landing files", _count(ingested.get("lines_in"))),
        ("quarantined at ingest (unparseable)", _count(ingested.get("quarantined"))),
        ("PII values redacted (" + ", ".join(f"{k} {v}" for k, v in pii.items()) + ")"
         if pii else "PII values redacted", sum(pii.values())),
        ("records validated", _count(validated.get("records_in"))),
        ("quarantined by validation", _count(validated.get("quarantined"))),
        ("duplicates skipped", _count(validated.get("duplicates"))),
        ("stored", _count(validated.get("stored"))),
    ]
    # the curate stage's funnel, whatever counts it reports, in its order
    data_rows += [(name.replace("_", " "), _count(value)) for name, value in funnel.items()]
    data_rows.append(("train / test", f"{dataset.get('n_train', '-')} / "
                                      f"{dataset.get('n_test', '-')}"))
    verdict_list = [{"candidate": v.get("candidate", "?"), "passed": bool(v.get("passed")),
                     "reasons": list(v.get("reasons") or [])}
                    for v in decision.get("verdicts") or []]
    verdicts = {v["candidate"]: v for v in verdict_list}
    teacher_label = " ".join(filter(None, ("teacher", teacher.get("model"), "(from its logs)")))
    model_rows = [(teacher_label, "logged", teacher_accuracy_text(teacher), "-", "-",
                   _ms(teacher.get("latency_p50_ms")), _ms(teacher.get("latency_p95_ms")),
                   "-", "-", "-", "-", "-")]
    for e in evaluations:
        for key in ("base", "base_icl"):
            if e.get(key):
                model_rows.append(_model_row(e[key].get("candidate", "?"), e[key]))
        verdict = verdicts.get(e.get("candidate", "?"), {})
        model_rows.append(_model_row(e.get("candidate", "?"), e.get("finetuned") or {},
                                     "PASS" if verdict.get("passed") else "fail"))
    if champion and champion.get("evaluation"):
        ev = champion["evaluation"]
        model_rows.append(_model_row(f"{ev.get('candidate', 'champion')} "
                                     f"({champion.get('candidate')}, re-evaluated)",
                                     ev, "champion"))
    first = (evaluations[0].get("finetuned") or {}) if evaluations else {}
    price = first.get("price_per_device_hour")
    models_note = (
        "accuracy: exact match of the generated expert (what the agent gets); mc acc: multiple "
        "choice by log-likelihood. Latency at batch 1 after warm-up; q/s at batch "
        f"{first.get('throughput_batch_size', '-')}; cost per 1,000 requests at "
        f"{price if price is not None else '-'} per device-hour from that throughput. "
        f"{model_note(evaluations)} Hardware: {first.get('latency_hardware', '-')}. The "
        "teacher's latency comes from its logs; its accuracy from experts' labels on a random "
        "sample of its traffic (the traffic audit, with a 95% interval), never from its own "
        "thumbs-up answers. bits/byte: the forgetting check, general text scored by each causal "
        f"model and its base ({first.get('general_text_docs') or 0} documents; lower is better, "
        "a rise over the base is what fine-tuning made it forget).")
    registry = []
    if registered.get("registered"):
        registry.append(f"Registered {registered.get('model_name')} version "
                        f"{registered.get('version')} with alias `{registered.get('alias')}`.")
    else:
        registry.append(f"Nothing registered: {registered.get('reason')}.")
    if promoted and promoted.get("promoted"):
        registry.append(f"Approved and promoted: version {promoted.get('version')} holds "
                        "`champion`" + (f"; version {promoted['previous']} is "
                                        "`previous-champion`." if promoted.get("previous")
                                        else "."))
    elif registered.get("registered"):
        registry.append("The challenger waits for approval in the DAG flywheel_promotion (the "
                        "cycle does not wait for it).")
    winner = decision.get("winner")
    after = champion_after(champion, promoted, evaluations, winner)
    images = dict(images or {})
    charts: dict[str, list[tuple[str, str]]] = {}
    for name, path in images.items():
        charts.setdefault(chart_section(name), []).append((name, path))
    return ReportData(
        title=f"Flywheel cycle {cycle_id} (workload {workload_id})",
        alarm=validated.get("alarm") or None,
        headline=[("winner", _winner_text(evaluations, verdict_list, winner)),
                  ("registry", " ".join(registry)),
                  ("champion after this cycle", _champion_text(after)),
                  *([("label space", label_space_text(dataset))]
                    if dataset.get("label_space_change") else [])],
        funnel=Table(["stage", "records"], data_rows, numeric=(1,)),
        dataset_version=str(dataset.get("version") or "-"),
        n_test=dataset.get("n_test", "-"),
        models=Table(["model", "prompting", "accuracy", "mc acc", "macro-F1", "p50 ms", "p95 ms",
                      "TTFT p50", "q/s", "cost/1k", "bits/byte", "gate"], model_rows,
                     numeric=tuple(range(2, 11)), badge=11),
        models_note=models_note, guard=guard_text(evaluations), trained=bool(evaluations),
        verdicts=verdict_list, winner=winner, rule=decision.get("rule"), registry=registry,
        history=Table(["cycle", "champion", "candidate", "accuracy", "p95 ms"],
                      [(h.get("cycle", "-"), f"v{h['version']}" if h.get("version") else "-",
                        h.get("candidate") or "-", _acc(h.get("accuracy")),
                        _ms(h.get("latency_p95_ms"))) for h in history],
                      numeric=(3, 4)) if history else None,
        images=images, charts=charts)


def label_space_text(dataset: dict[str, Any]) -> str:
    """What changed in the workload's experts since the previous dataset version."""
    added = (dataset.get("label_space_change") or {}).get("added") or []
    return (f"changed: {', '.join(added)} added to the workload's experts. The frozen test "
            f"split grows to include {'it' if len(added) == 1 else 'them'}; a champion trained "
            f"before cannot name {'it' if len(added) == 1 else 'them'} (see its per-expert "
            f"scores), so it is compared on the new label space as it is.")


def to_markdown(data: ReportData) -> str:
    """The report as Markdown (also readable as plain text in a terminal or task log)."""
    from tabulate import tabulate

    def table(t: Table) -> str:
        return tabulate(t.rows, headers=t.headers, tablefmt="github")

    lines = [
        f"# {data.title}", "",
        *([f"**Data alarm:** {data.alarm}", ""] if data.alarm else []),
        "## Data funnel", "", table(data.funnel), "",
        f"Dataset version {data.dataset_version}.", "",
        *[line for label, text in data.headline if label == "label space"
          for line in (f"**Label space {text}**", "")],
        f"## Models on the frozen test split ({data.n_test} queries)", "", table(data.models), "",
        data.models_note, "",
        *([data.guard, ""] if data.guard else []),
        "## Gate", "",
    ]
    for v in data.verdicts:
        lines.append(f"- {v['candidate']}: {'PASS' if v['passed'] else 'FAIL'} - "
                     + "; ".join(v["reasons"]))
    lines += [f"- winner: {data.winner or 'none'}"
              + (f" ({data.rule})" if data.rule else ""), "", "## Registry", "", *data.registry]
    if data.history:
        lines += ["", "## Champion history", "", table(data.history)]
    if data.images:
        lines += ["", "## Charts", ""] + [f"![{name}]({path})"
                                          for name, path in data.images.items()]
    return "\n".join(lines) + "\n"


def to_html(data: ReportData) -> str:
    """The report as a self-contained page (``templates/report.html.j2``): inline CSS, charts
    by relative file name, every value escaped."""
    import re

    import jinja2
    from markupsafe import Markup, escape

    def code(text: str) -> Markup:
        """Escape, then show `backticked` names (aliases) as code."""
        return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["code"] = code
    return env.get_template("report.html.j2").render(data=data)


def render(cycle_id: str, workload_id: str, ingested: dict, validated: dict, dataset: dict,
           teacher: dict, evaluations: list[dict], decision: dict, registered: dict,
           champion: dict | None = None, promoted: dict | None = None,
           history: list[dict] | None = None, images: dict[str, str] | None = None) -> str:
    """The report as Markdown: ``to_markdown(report_data(...))``."""
    return to_markdown(report_data(cycle_id, workload_id, ingested, validated, dataset, teacher,
                                   evaluations, decision, registered, champion, promoted,
                                   history, images))


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run: on the tracking server itself when it is one, else where
    ``flywheel serve mlflow`` shows the local store."""
    base = (tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://"))
            else MLFLOW_UI_ADDRESS)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def champion_history(workload_id: str, paths) -> list[dict]:
    """Champion after each earlier cycle, from the cycle runs logged to MLflow (oldest first)."""
    from tasks.core import tracking

    mlflow = tracking.configure(paths)
    if mlflow.get_experiment_by_name(tracking.experiment_name(workload_id)) is None:
        return []
    runs = mlflow.search_runs(experiment_names=[tracking.experiment_name(workload_id)],
                              filter_string="tags.`flywheel.stage` = 'cycle'",
                              order_by=["attributes.start_time ASC"], output_format="list")
    out = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        # cycle runs logged before the tags kept the champion in params
        tags = {**{f"flywheel.{k}": v for k, v in run.data.params.items()}, **tags}
        out.append({"cycle": tags.get("flywheel.cycle_id", run.info.run_name),
                    "version": tags.get("flywheel.champion_version") or None,
                    "candidate": tags.get("flywheel.champion_candidate") or None,
                    "accuracy": metrics.get("champion_accuracy"),
                    "latency_p95_ms": metrics.get("champion_latency_p95_ms")})
    return out


#: The line the report task prints with its cycle's id (read by tasks.stack.cycle).
REPORT_MARKER = "flywheel-cycle-report: "


def write_report(cycle_id: str, workload_id: str, ingested: dict, validated: dict, dataset: dict,
                 teacher: dict, evaluations: list[dict], decision: dict, registered: dict,
                 champion: dict | None = None, promoted: dict | None = None,
                 home: str | None = None) -> dict:
    """Render, chart, print, save and log the report; returns where it went and the headline.

    The task log ends with the page's path and the cycle run's address in the MLflow UI.
    """
    from tasks.core import tracking
    from tasks.reporting import plots

    paths = get_paths(home)
    out = paths.runs / cycle_id
    out.mkdir(parents=True, exist_ok=True)
    evaluations = evaluations or []
    after = champion_after(champion, promoted, evaluations, decision.get("winner"))
    history = champion_history(workload_id, paths)
    history = [h for h in history if h["cycle"] != cycle_id] + [{"cycle": cycle_id, **after}]
    images = {PARETO_CHART: plots.pareto(
        model_points(teacher, evaluations, champion), out / "pareto.png",
        f"cycle {cycle_id}: accuracy vs p95 latency").name}
    winner = next((e for e in evaluations if e.get("candidate") == decision.get("winner")), None)
    confusion = ((winner.get("finetuned") or {}).get("confusion") if winner else None)
    if winner and confusion:
        images[CONFUSION_CHART.format(candidate=winner["candidate"])] = plots.confusion(
            confusion, out / "confusion.png", f"{winner['candidate']}: gold vs predicted").name
    if dataset.get("funnel"):
        images[FUNNEL_CHART] = plots.funnel(dataset["funnel"], out / "funnel.png",
                                            f"funnel, dataset {dataset.get('version')}").name
    images[HISTORY_CHART] = plots.history(history, out / "champion_history.png",
                                          f"champion of {workload_id} per cycle").name
    data = report_data(cycle_id, workload_id, ingested, validated, dataset, teacher, evaluations,
                       decision, registered, champion, promoted, history, images)
    text = to_markdown(data)
    print(text)
    summary = {"cycle_id": cycle_id, "workload_id": workload_id, "ingested": ingested,
               "validated": validated, "dataset": dataset, "teacher": teacher,
               "evaluations": evaluations, "champion_before": champion, "decision": decision,
               "registered": registered, "promoted": promoted, "champion": after,
               "history": history, "images": images}
    html_path = (out / "report.html").resolve()
    (out / "report.md").write_text(text)
    html_path.write_text(to_html(data))
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    with tracking.run(workload_id, run_name=f"{cycle_id}/cycle",
                      tags={"flywheel.cycle_id": cycle_id, "flywheel.stage": "cycle"},
                      paths=paths) as active:
        import mlflow

        funnel = dataset.get("funnel") or {}
        mlflow.log_metrics({f"funnel.{k}": float(v) for k, v in funnel.items()
                            if isinstance(v, int | float)})
        quarantined = [n for n in (ingested.get("quarantined"), validated.get("quarantined"))
                       if n is not None]
        mlflow.log_metrics({k: v for k, v in (
            ("records_in", ingested.get("lines_in")),
            ("quarantined", sum(quarantined) if quarantined else None),
            ("stored", validated.get("stored")), ("n_train", dataset.get("n_train")),
            ("n_test", dataset.get("n_test"))) if v is not None})
        mlflow.log_params({"dataset_version": dataset.get("version") or "",
                           "winner": decision.get("winner") or "none"})
        # tags, not params: a later approval (tasks.registry.promotion) changes who serves after it
        mlflow.set_tags({"flywheel.champion_version": after["version"] or "",
                         "flywheel.champion_candidate": after["candidate"] or ""})
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
        tracking_uri = mlflow.get_tracking_uri()
        run_id, experiment_id = active.info.run_id, active.info.experiment_id
    run_url = mlflow_run_url(tracking_uri, experiment_id, run_id)
    print(f"{REPORT_MARKER}{cycle_id}")  # how `flywheel cycle` knows which run was its own
    print(f"report: {html_path}")
    if tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow run: {run_url}")
    else:  # a local store: visible once the embedded UI runs
        print(f"MLflow run: {run_url} (run {run_id} in experiment {experiment_id}; "
              "start the UI with `flywheel serve mlflow`)")
    return {"report_path": str(out / "report.md"), "html_path": str(html_path),
            "mlflow_run_url": run_url, "winner": decision.get("winner"),
            "registered": registered, "promoted": promoted, "champion": after}


class ReportCommand(BaseModel):
    """Settings of ``flywheel report``."""

    cycle_id: str = Field(min_length=1, description=(
        "The cycle whose runs/<cycle>/report.json is rendered again."))
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")


def load_report(cycle_id: str, home: str | None = None) -> dict:
    """A finished cycle's report as it stands now: ``report.json`` (what its report task
    recorded, never rewritten) with the outcomes decided since in their own files
    (:mod:`tasks.core.outcomes`: ``registered.json``, ``promoted.json``), and who serves after it.

    Raises:
        FileNotFoundError: the cycle has no report.json (its report task has not run).
        ValueError: report.json is not a cycle's report.
    """
    from tasks.core.outcomes import read_outcome

    source = get_paths(home).runs / cycle_id / "report.json"
    if not source.is_file():
        raise FileNotFoundError(f"no {source}: the cycle's report task has not run")
    try:
        summary = json.loads(source.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not valid JSON ({exc.msg})") from exc
    if not isinstance(summary, dict) or not isinstance(summary.get("decision"), dict):
        raise ValueError(f"{source} is not a cycle's report (no gate decision in it)")
    registered = read_outcome(cycle_id, "registered", home)
    if registered is not None:
        summary["registered"] = registered
    promoted = read_outcome(cycle_id, "promoted", home)
    if promoted is not None:
        summary["promoted"] = promoted
        after = champion_after(summary.get("champion_before"), promoted,
                               summary.get("evaluations") or [], summary["decision"].get("winner"))
        summary["champion"] = after
        history = summary.get("history") or []
        if history and history[-1].get("cycle") == cycle_id:
            summary["history"] = [*history[:-1], {"cycle": cycle_id, **after}]
    summary["report_path"] = str(source)
    return summary


def record_promotion(cycle_id: str, workload_id: str, home: str | None = None) -> bool:
    """After an approval: the cycle's report pages rendered again with its ``promoted.json``,
    and the MLflow cycle run tagged with who serves now (False: the cycle left no report)."""
    from tasks.core import tracking

    paths = get_paths(home)
    if not (paths.runs / cycle_id / "report.json").is_file():
        return False
    render_again(cycle_id, home)
    after = load_report(cycle_id, home)["champion"]
    mlflow = tracking.configure(paths)
    runs = mlflow.search_runs(experiment_names=[tracking.experiment_name(workload_id)],
                              filter_string=f"tags.`flywheel.cycle_id` = '{cycle_id}' and "
                                            "tags.`flywheel.stage` = 'cycle'",
                              output_format="list")
    client = mlflow.MlflowClient()
    for run in runs:  # tags, not params: a promotion changes who serves after the cycle
        client.set_tag(run.info.run_id, "flywheel.champion_version", after["version"] or "")
        client.set_tag(run.info.run_id, "flywheel.champion_candidate", after["candidate"] or "")
        for key, value in (("champion_accuracy", after["accuracy"]),
                           ("champion_latency_p95_ms", after["latency_p95_ms"])):
            if value is not None:
                client.log_metric(run.info.run_id, key, value, step=1)
    return True


def render_again(cycle_id: str, home: str | None = None) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` of a finished cycle, from :func:`load_report`.

    Raises:
        FileNotFoundError: the cycle has no report.json (its report task has not run).
        ValueError: report.json is not a cycle's report.
    """
    out = get_paths(home).runs / cycle_id
    summary = load_report(cycle_id, home)
    images = {name: file for name, file in (summary.get("images") or {}).items()
              if (out / file).is_file()}  # charts deleted since are left out, not linked
    data = report_data(cycle_id, summary.get("workload_id") or "?",
                       summary.get("ingested") or {}, summary.get("validated") or {},
                       summary.get("dataset") or {}, summary.get("teacher") or {},
                       summary.get("evaluations") or [], summary["decision"],
                       summary.get("registered") or {}, summary.get("champion_before"),
                       summary.get("promoted"), summary.get("history"), images)
    (out / "report.md").write_text(to_markdown(data))
    (out / "report.html").write_text(to_html(data))
    return out / "report.md", (out / "report.html").resolve()


def main(argv: list[str] | None = None) -> int:
    config = parse_config(ReportCommand, argv, "flywheel report", __doc__)
    try:
        markdown, page = render_again(config.cycle_id, config.home)
    except (FileNotFoundError, ValueError) as exc:
        print(f"flywheel report: {exc}")
        return 1
    print(f"report: {page}\n(and {markdown})")
    return 0
