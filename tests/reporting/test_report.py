from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path

from tasks.reporting.plots import pareto_front
from tasks.reporting.report import (
    MLFLOW_UI_ADDRESS,
    mlflow_run_url,
    render,
    report_data,
    to_html,
    write_report,
)

LATENCY = {"latency_p50_ms": 10.0, "latency_p95_ms": 12.5, "ttft_p50_ms": 3.0,
           "latency_hardware": "cpu", "throughput_qps": 80.0, "throughput_batch_size": 16,
           "cost_per_1k_requests": 0.0035, "price_per_device_hour": 1.0}


def cycle_inputs():
    dataset = {"version": "vabc", "n_train": 30, "n_test": 20,
               "funnel": {"records_in_window": 900, "with_feedback": 120, "negative": 50,
                          "positive": 70, "after_dedup": 50, "judged_routing_errors": 7}}
    evaluations = [{"candidate": "s-lora", "mlflow_run_id": "r1", "base_model": "flywheel-llama-s",
                    "base": {"candidate": "base:s", "prompting": "zero-shot", "accuracy": 0.1,
                             "mc_accuracy": 0.2, "macro_f1": 0.02, **LATENCY},
                    "base_icl": {"candidate": "base:s:icl", "prompting": "in-context (k=4)",
                                 "accuracy": 0.3, "macro_f1": 0.2, **LATENCY,
                                 "latency_p95_ms": 40.0},
                    "finetuned": {"candidate": "s-lora", "prompting": "fine-tuned",
                                  "accuracy": 0.6, "mc_accuracy": 0.62, "macro_f1": 0.55,
                                  "confusion": {"banking": {"banking": 5, "travel": 1},
                                                "travel": {"travel": 4, "(none)": 1}},
                                  **LATENCY}}]
    decision = {"verdicts": [{"candidate": "s-lora", "passed": True,
                              "reasons": ["accuracy 0.600 >= min 0.450"]}],
                "winner": "s-lora", "rule": "most accurate"}
    teacher = {"model": "teacher-70b", "n_test": 20, "accuracy": 0.9, "n_traffic_audit": 40,
               "accuracy_interval": [0.77, 0.96], "oracle_accuracy": 0.96,
               "latency_p50_ms": 1800.0, "latency_p95_ms": 3000.0}
    champion = {"version": "2", "candidate": "m-lora",
                "evaluation": {"candidate": "champion:v2", "prompting": "fine-tuned",
                               "accuracy": 0.55, "macro_f1": 0.5, **LATENCY}}
    return dataset, evaluations, decision, teacher, champion


def test_report_shows_funnel_models_gate_registry_and_promotion():
    dataset, evaluations, decision, teacher, champion = cycle_inputs()
    text = render("c1", "router",
                  {"lines_in": 1000, "quarantined": 3, "pii_redacted": {"email": 2, "phone": 1}},
                  {"records_in": 997, "quarantined": 2, "duplicates": 5, "stored": 990},
                  dataset, teacher, evaluations, decision,
                  {"registered": True, "model_name": "flywheel-router", "version": "3",
                   "alias": "challenger"}, champion,
                  {"promoted": True, "version": "3", "previous": "2", "changed": True})
    assert "| records in window" in text and "900" in text
    assert "| judged routing errors" in text  # any count the curate stage adds shows up
    assert "PII values redacted (email 2, phone 1) | 3" in text
    assert "0.900 [0.770, 0.960] (traffic audit, n=40); gold 0.960 (simulation oracle)" in text
    assert "s-lora" in text and "0.600" in text and "PASS" in text and "0.00350" in text
    assert "base:s:icl" in text and "in-context (k=4)" in text
    assert "champion:v2 (m-lora, re-evaluated)" in text
    assert "flywheel-router version 3 with alias `challenger`" in text
    assert "version 3 holds `champion`; version 2 is `previous-champion`" in text
    assert "Base models: flywheel-llama-s" in text  # says which models produced the numbers
    assert "test stand-ins" in text  # and that the tiny ones are not real LLMs
    evaluations[0]["base_model"] = "smollm2-135m-instruct"
    real = render("c1", "router", {"lines_in": 1, "quarantined": 0}, {"records_in": 1,
                  "quarantined": 0, "duplicates": 0, "stored": 1}, dataset, teacher, evaluations,
                  decision, {"registered": False})
    assert "Base models: smollm2-135m-instruct" in real and "stand-ins" not in real
    assert "Scope guard" not in real  # no guard, no sentence about one
    evaluations[0]["finetuned"].update(
        n_test=20, guard_fallbacks=3, scope_guard={"reference_queries": 27, "threshold": 0.4512,
                                                   "budget": 0.05, "neighbours": 5,
                                                   "fallback": "out_of_scope"})
    guarded = render("c1", "router", {"lines_in": 1, "quarantined": 0}, {"records_in": 1,
                     "quarantined": 0, "duplicates": 0, "stored": 1}, dataset, teacher,
                     evaluations, decision, {"registered": False})
    assert ("s-lora sent 3 of 20 test queries to out_of_scope (mean similarity to the 5 nearest "
            "of 27 in-scope training queries below 0.451; 5% budget)") in guarded
    assert "Data alarm" not in guarded
    alarmed = render("c1", "router", {"lines_in": 5, "quarantined": 0}, {
        "records_in": 5, "quarantined": 3, "duplicates": 0, "stored": 2,
        "alarm": "validate c1: 3 of 5 lines invalid"}, dataset, teacher, evaluations, decision,
        {"registered": False})
    assert "**Data alarm:** validate c1: 3 of 5 lines invalid" in alarmed.split("## Data")[0]
    assert "Label space" not in alarmed  # unchanged: no sentence about it
    grown = render("c1", "router", {"lines_in": 1, "quarantined": 0}, {"records_in": 1,
                   "quarantined": 0, "duplicates": 0, "stored": 1},
                   {**dataset, "label_space_change": {"added": ["legal"], "removed": []}},
                   teacher, evaluations, decision, {"registered": False})
    assert "**Label space changed: legal added to the workload's experts." in grown


def test_pareto_front_keeps_only_undominated_models():
    points = [("fast-weak", 5, 0.3), ("slow-strong", 500, 0.9), ("dominated", 600, 0.5),
              ("middle", 50, 0.7)]
    assert pareto_front(points) == ["fast-weak", "slow-strong", "middle"]


def test_write_report_charts_history_and_mlflow(tmp_path, capsys):
    dataset, evaluations, decision, teacher, champion = cycle_inputs()
    home = str(tmp_path)
    ingested = {"lines_in": 10, "quarantined": 0}
    validated = {"records_in": 10, "quarantined": 0, "duplicates": 0, "stored": 10}
    registered = {"registered": True, "model_name": "flywheel-router", "version": "3",
                  "alias": "challenger"}
    write_report("c1", "router", ingested, validated, dataset, teacher, evaluations, decision,
                 registered, champion, None, home=home)
    result = write_report("c2", "router", ingested, validated, dataset, teacher, evaluations,
                          decision, registered, champion,
                          {"promoted": True, "version": "3", "previous": "2", "changed": True},
                          home=home)
    # the task log ends with where the page is and where the cycle run is in the MLflow UI
    last = capsys.readouterr().out.rstrip("\n").splitlines()[-2:]
    assert last[0] == f"report: {result['html_path']}"
    assert last[1].startswith(f"MLflow run: {result['mlflow_run_url']} ")
    assert "flywheel serve mlflow" in last[1]  # the embedded store: how to open it
    assert Path(result["html_path"]).is_absolute()
    assert result["champion"]["version"] == "3" and result["champion"]["accuracy"] == 0.6
    out = tmp_path / "runs" / "c2"
    for name in ("pareto.png", "confusion.png", "funnel.png", "champion_history.png",
                 "report.html"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report.json").read_text())
    # history across cycles from the cycle runs in MLflow: c1 kept v2, c2 promoted v3
    assert [(h["cycle"], h["version"]) for h in report["history"]] == [("c1", "2"), ("c2", "3")]
    assert "## Champion history" in (out / "report.md").read_text()
    from tasks.core import tracking

    mlflow = tracking.configure(tracking.get_paths(home))
    runs = mlflow.search_runs(experiment_names=["flywheel-router"], output_format="list",
                              filter_string="tags.`flywheel.stage` = 'cycle'")
    artifacts = {a.path for r in runs for a in
                 mlflow.MlflowClient().list_artifacts(r.info.run_id)}
    assert {"pareto.png", "champion_history.png", "report.html"} <= artifacts
    c2 = next(r for r in runs if r.data.tags["flywheel.cycle_id"] == "c2")
    assert result["mlflow_run_url"] == (f"{MLFLOW_UI_ADDRESS}/#/experiments/"
                                        f"{c2.info.experiment_id}/runs/{c2.info.run_id}")
    page = (out / "report.html").read_text()
    assert Path(result["html_path"]) == out / "report.html" and "<table" in page
    # a cycle that trained nothing still writes its report, page and run
    failed = write_report("c3", "router", ingested, validated, {"version": "vdef", "n_train": 0,
                          "n_test": 0}, {}, [], {"verdicts": [], "winner": None, "rule": "r"},
                          {"registered": False, "reason": "no winner"}, champion, None,
                          home=home)
    assert failed["winner"] is None and failed["champion"]["version"] == "2"
    assert "no model was trained" in Path(failed["html_path"]).read_text()

    # `flywheel report --cycle-id` renders both pages again from report.json and the charts
    from tasks.cli import main as cli

    before_md = (out / "report.md").read_text()
    (out / "report.html").unlink()
    (out / "report.md").write_text("stale")
    capsys.readouterr()
    assert cli(["report", "--cycle-id", "c2", "--home", home]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    assert (out / "report.md").read_text() == before_md
    again = (out / "report.html").read_text()
    assert again == page and 'src="confusion.png"' in again
    assert cli(["report", "--cycle-id", "c404", "--home", home]) == 1
    assert "the cycle's report task has not run" in capsys.readouterr().out
    (out / "report.json").write_text('{"evaluations": []}')
    assert cli(["report", "--cycle-id", "c2", "--home", home]) == 1
    assert "not a cycle's report" in capsys.readouterr().out


def test_mlflow_run_url_on_a_server_and_on_the_embedded_store():
    assert (mlflow_run_url("https://mlflow.example:5000/", "7", "abc")
            == "https://mlflow.example:5000/#/experiments/7/runs/abc")
    assert (mlflow_run_url("sqlite:////tmp/mlflow.db", "7", "abc")
            == f"{MLFLOW_UI_ADDRESS}/#/experiments/7/runs/abc")


class _Page(HTMLParser):
    """The page's tables (rows of (tag, class, text) cells) and each section's image files."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: list[list[list[tuple[str, str, str]]]] = []
        self.images: dict[str, list[str]] = {}
        self.section = ""
        self.cell: list | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs.get("id", "")
        elif tag == "img":
            self.images.setdefault(self.section, []).append(attrs["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = [tag, attrs.get("class") or "", ""]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[2] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(tuple(self.cell))
            self.cell = None

    def models(self) -> dict[str, list[tuple[str, str, str]]]:
        """The models table's rows by model name (the header row under "model")."""
        table = next(t for t in self.tables if t[0][0][2] == "model")
        return {row[0][2]: row for row in table}


NO_ALARM = {"records_in": 10, "quarantined": 0, "duplicates": 0, "stored": 10}
REGISTERED = {"registered": True, "model_name": "flywheel-router", "version": "3",
              "alias": "challenger"}


def page_of(evaluations, decision, teacher, dataset, champion=None, validated=NO_ALARM,
            registered=REGISTERED, images=None) -> str:
    return to_html(report_data("c1", "router", {"lines_in": 10, "quarantined": 0}, validated,
                               dataset, teacher, evaluations, decision, registered, champion,
                               None, [{"cycle": "c1", "version": "2", "accuracy": 0.55}],
                               images))


def test_html_report_has_tables_badges_charts_beside_their_sections_and_the_alarm():
    dataset, evaluations, decision, teacher, champion = cycle_inputs()
    failing = copy.deepcopy(evaluations[0])
    failing["candidate"] = failing["finetuned"]["candidate"] = "m-lora"
    failing["finetuned"]["accuracy"] = 0.2
    evaluations.append(failing)
    decision["verdicts"].append({"candidate": "m-lora", "passed": False,
                                 "reasons": ["accuracy 0.200 < min 0.450", "p95 too slow"]})
    images = {"accuracy vs p95 latency": "pareto.png", "confusion matrix of s-lora":
              "confusion.png", "data funnel": "funnel.png", "champion history": "history.png"}
    page = page_of(evaluations, decision, teacher, dataset, champion, images=images)
    parsed = _Page(page)
    rows = parsed.models()
    assert {"s-lora", "m-lora", "base:s", "teacher teacher-70b (from its logs)"} <= set(rows)
    assert all(tag == "th" for tag, _, _ in next(iter(rows.values())))  # the header row
    assert rows["s-lora"][2] == ("td", "num", "0.600")  # numbers right-aligned, names not
    assert rows["s-lora"][6] == ("td", "num", "12.5") and "num" not in rows["s-lora"][0][1]
    assert rows["m-lora"][2] == ("td", "num", "0.200")
    # the gate at a glance: a badge per verdict, reasons as a list
    gate = page.split('<section id="gate">')[1].split("</section>")[0]
    assert re.search(r'class="badge fail">FAIL</span>\s*<strong>m-lora</strong>', gate)
    assert re.search(r'class="badge pass">PASS</span>\s*<strong>s-lora</strong>', gate)
    assert "<li>accuracy 0.200 &lt; min 0.450</li>" in gate and "<li>p95 too slow</li>" in gate
    assert parsed.images == {"funnel": ["funnel.png"], "models": ["pareto.png"],
                             "gate": ["confusion.png"], "history": ["history.png"]}
    assert 'class="scroll"' in page and re.search(r"\.scroll\{overflow-x:auto", page)
    assert not re.search(r"(src|href)=\"(https?:)?//|<script|<link", page)  # self-contained
    assert "alarm" not in page.split("<h2>")[0].split("</style>")[1]
    alarmed = page_of(evaluations, decision, teacher, dataset, champion,
                      validated={**NO_ALARM, "alarm": "validate c1: 3 of 5 lines invalid"})
    top = alarmed.split("<h2>")[0]  # above the first section
    assert re.search(r'<div class="alarm"[^>]*>.*validate c1: 3 of 5 lines invalid', top)
    headline = top.split('class="headline"')[1]
    assert "s-lora" in headline and "<code>challenger</code>" in headline
    assert "version 2 (m-lora): accuracy 0.550, p95 12.5 ms" in headline  # champion unchanged


def test_html_report_of_a_cycle_that_trained_nothing_or_measured_nothing():
    dataset, evaluations, decision, teacher, _ = cycle_inputs()
    nothing = {"verdicts": [], "winner": None, "rule": "most accurate"}
    page = page_of([], nothing, {}, {"version": "v0"},
                   registered={"registered": False, "reason": "no winner"})
    headline = page.split('class="headline"')[1].split("</dl>")[0]
    assert "no winner: no model was trained this cycle" in headline
    assert "Nothing registered: no winner." in headline and "none yet" in headline
    assert "No candidate reached the gate." in page and "No model was trained" in page
    assert list(_Page(page).models()) == ["model", "teacher (from its logs)"]
    # measured nothing: no accuracy, no latency, no confusion; the gate failed it
    tuned = evaluations[0]["finetuned"]
    for key in ("accuracy", "latency_p95_ms", "confusion"):
        tuned.pop(key)
    evaluations[0]["finetuned"]["latency_p50_ms"] = None
    evaluations.append({"candidate": "crashed-lora"})  # no figures at all
    failed = {"verdicts": [{"candidate": "s-lora", "passed": False, "reasons": []}],
              "winner": None, "rule": "most accurate"}
    page = page_of(evaluations, failed, teacher, {"version": "v1", "n_test": 20},
                   champion={"version": "2", "candidate": "m-lora",
                             "evaluation": {"candidate": "champion:v2", "accuracy": None}},
                   registered={"registered": False, "reason": "no winner"})
    rows = _Page(page).models()
    assert rows["s-lora"][2] == ("td", "num", "-") and rows["s-lora"][5] == ("td", "num", "-")
    assert [c[2] for c in rows["crashed-lora"][2:11]] == ["-"] * 9
    assert "no winner: no candidate passed the gate" in page
    assert "version 2 (m-lora): accuracy not measured, p95 not measured" in page
    assert re.search(r'badge fail">FAIL</span>\s*<strong>s-lora</strong>', page)


def test_html_report_escapes_names_and_reasons():
    dataset, evaluations, decision, teacher, _ = cycle_inputs()
    evil = "<script>alert(1)</script>"
    evaluations[0]["candidate"] = evil
    decision["verdicts"] = [{"candidate": evil, "passed": False,
                             "reasons": ["<script>steal()</script> & more"]}]
    decision["winner"] = None
    page = page_of(evaluations, decision, teacher, dataset,
                   validated={**NO_ALARM, "alarm": "<img src=x onerror=alert(2)>"})
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;steal()&lt;/script&gt; &amp; more" in page
    assert evil in _Page(page).models()  # still shown, as text
