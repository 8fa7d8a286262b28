"""The cycle driven through the UIs in a real (headless) browser, as a reviewer drives it.

On the integration tier's servers: the Airflow UI's trigger dialog starts ``flywheel_cycle`` with
gate thresholds typed into its params form; the cycle ends once its winner is registered, and the
Asset it updates starts a ``flywheel_promotion`` run that waits for a reviewer (the cycle does
not); the promotion is approved on the UI's *Required Actions* page; then the MLflow UI shows the
registered model's version with alias ``champion`` and its gate tags, and the cycle's rendered
report shows its models table. REST is only used to observe (when to look, and what the run's conf
holds), never to act.

Screenshots (with each page's HTML and text) are kept for every step under the pytest temporary
folder and copied to ``$FLYWHEEL_TEST_ARTIFACTS/ui-browser`` when that is set; the path is printed.

Sizes are the cycle test's: a day of simulated traffic, the test-only base model, ten training
steps, no in-context baseline. The thresholds typed are chosen to pass on that tiny model (the
point is that what a person types reaches the gate, not the model's quality).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.integration.browser import Browser, chromium_paths
from tests.integration.conftest import DAG_ID, missing_prerequisite
from tests.integration.servers import ANSWERABLE_STATES, AirflowStack, MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_ID = "ui-browser"
PROMOTION_DAG = "flywheel_promotion"
#: typed into the params form; both differ from the DAG's defaults (0.70 and 1000 ms)
THRESHOLDS = {"min_accuracy": 0.0, "max_p95_latency_ms": 45000}
#: how long the cycle may take to finish and its challenger to ask for approval, and then how
#: long the promotion may take (2 loaded cores)
TO_APPROVAL_S = 1200
AFTER_APPROVAL_S = 600
UI_TIMEOUT_S = 90
#: MLflow's alias chip reads "@ champion" (a no-break space after the @)
ALIAS_CHAMPION = ".//span[normalize-space(translate(., '\u00a0', ' '))='@ champion']"


def _smallest_conf(stack: AirflowStack, base_model: Path, home: Path) -> dict:
    """Every param of the DAG at its default, except the sizes that keep the run short.

    The form's ``candidates`` field takes catalog names only (one string a line); a whole entry
    (here: the test-only base model's folder) can only go through the dialog's Configuration
    JSON, which needs every param the form should still show.
    """
    from tasks.core.config import Paths
    from tasks.demo.simulate import gold_labels

    params = stack.api("GET", f"dags/{DAG_ID}/details")["params"]
    conf = {name: spec.get("value") for name, spec in params.items()}
    candidate = {"name": "xs-lora", "base_model": str(base_model), "method": "lora",
                 "hyperparameters": {"learning_rate": 0.02, "batch_size": 16, "epochs": 1}}
    conf.update(candidates=[candidate], max_accuracy_drop=1.0, max_drop_vs_teacher=None,
                window_days=3, latency_queries=5, max_train_steps=10, icl_examples=0,
                auto_approve=False, sme_review="simulated",
                gold_labels=str(gold_labels(Paths(home))))
    return conf


def _task_states(stack: AirflowStack, run_id: str, dag_id: str = DAG_ID) -> dict[str, str]:
    return {f"{t['task_id']}[{t['map_index']}]": t["state"]
            for t in stack.task_instances(dag_id, run_id)}


def trigger_from_form(browser: Browser, stack: AirflowStack, conf: dict) -> None:
    """Open the DAG's page, fill the trigger dialog (JSON for the candidate, form fields for the
    thresholds, the run id), press Trigger and wait for the UI to confirm."""
    from selenium.webdriver.common.by import By

    browser.open(f"{stack.url}/dags/{DAG_ID}", DAG_ID)
    browser.wait_for_text("Schedule", UI_TIMEOUT_S)
    browser.shot("airflow-dag-page")
    browser.click(browser.button("Trigger"))
    dialog = browser.wait(lambda: next(iter(browser.visible(
        "//*[@role='dialog'][.//*[contains(text(), 'Trigger Dag')]]")), None),
        UI_TIMEOUT_S, "the trigger dialog")
    browser.wait(lambda: dialog.find_elements(By.NAME, "element_min_accuracy"), UI_TIMEOUT_S,
                 "the params form (field min_accuracy)")
    browser.shot("trigger-dialog-defaults")

    # the dialog's sections are one accordion: opening one closes the other
    browser.expand("Advanced Options", within=dialog)
    run_id = browser.wait(lambda: next(iter(dialog.find_elements(By.NAME, "dagRunId")), None),
                          UI_TIMEOUT_S, "the Run ID field")
    browser.fill(run_id, RUN_ID)
    editor = browser.wait(lambda: next(iter(browser.visible(
        ".//*[contains(@class, 'monaco-editor')]//*[contains(@class, 'view-lines')]", dialog)),
        None), UI_TIMEOUT_S, "the Configuration JSON editor")
    browser.paste(editor, json.dumps(conf, indent=2))
    # the form takes the JSON over when the editor loses focus, here to the params section
    browser.expand("Run Parameters", within=dialog)

    def form_took_json() -> bool:
        field = dialog.find_element(By.NAME, "element_max_train_steps")
        return field.get_attribute("value") == str(conf["max_train_steps"])

    browser.wait(form_took_json, UI_TIMEOUT_S, "the form to show the pasted JSON's values")
    # the candidates param is typed (items: string or object), so the form shows an entry as JSON
    shown = dialog.text.replace("\xa0", " ")
    assert "[object Object]" not in shown, "the candidates field shows [object Object]"
    assert re.search(rf'"name":\s*"{re.escape(conf["candidates"][0]["name"])}"', shown), shown
    for name, value in THRESHOLDS.items():
        field = browser.wait(lambda n=name: next(iter(browser.visible(
            f".//input[@name='element_{n}']", dialog)), None), UI_TIMEOUT_S, f"field {name}")
        browser.fill(field, str(value))
    browser.click(browser.wait_for_text("Trigger Dag", UI_TIMEOUT_S, within=dialog))  # blur

    def typed() -> bool:
        return all(float(dialog.find_element(By.NAME, f"element_{n}").get_attribute("value"))
                   == float(v) for n, v in THRESHOLDS.items())

    browser.wait(typed, UI_TIMEOUT_S, f"the form fields to hold {THRESHOLDS}")
    browser.shot("trigger-dialog-filled")
    submit = browser.wait(lambda: next((b for b in browser.visible(
        ".//button[normalize-space(.)='Trigger']", dialog) if b.is_enabled()), None),
        UI_TIMEOUT_S, "the dialog's enabled Trigger button (a param the form rejects "
                      "disables it)")
    browser.click(submit)
    run_page = f"/dags/{DAG_ID}/runs/{urllib.parse.quote(RUN_ID)}"

    def confirmed() -> bool:
        # the UI confirms with a toast and then opens the new run's page; under load the toast
        # can come and go between two polls, so landing on the run's page counts as well
        return (browser.driver.current_url.split("?")[0].endswith(run_page)
                or bool(browser.visible("//*[contains(text(), 'Dag Run Triggered')]")))

    browser.wait(confirmed, UI_TIMEOUT_S, f"the UI to confirm the trigger (toast or {run_page})")
    run = stack.run(DAG_ID, RUN_ID)  # and the server holds it, triggered by hand
    assert run["run_type"] == "manual", run
    browser.shot("triggered")


def registered_version(stack: AirflowStack, run_id: str) -> str:
    """The version the cycle's register task put in the registry (its XCom, read over REST)."""
    quoted = urllib.parse.quote(run_id, safe="")
    entry = stack.api("GET", f"dags/{DAG_ID}/dagRuns/{quoted}/taskInstances/register/"
                             "xcomEntries/return_value")
    value = entry["value"]
    value = json.loads(value) if isinstance(value, str) else value
    assert value.get("registered"), f"the cycle registered nothing: {value}"
    return str(value["version"])


def wait_for_approval_request(stack: AirflowStack, version: str, timeout: float
                              ) -> tuple[str, dict]:
    """The flywheel_promotion run (started by the cycle's Asset event) that asks a reviewer
    about ``version``, and its pending approval (REST, read only)."""
    deadline = time.monotonic() + timeout
    subject = f"version {version} to champion?"
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        stack.check_alive()
        for run in stack.api("GET", f"dags/{PROMOTION_DAG}/dagRuns?limit=100")["dag_runs"]:
            seen[run["dag_run_id"]] = f"{run['run_type']}:{run['state']}"
            if run["state"] != "running":
                continue
            quoted = urllib.parse.quote(run["dag_run_id"], safe="")
            pending = stack.api("GET", f"dags/{PROMOTION_DAG}/dagRuns/{quoted}/hitlDetails"
                                       "?response_received=false").get("hitl_details", [])
            for detail in pending:
                if (detail["task_instance"]["task_id"] == "approve"
                        and subject in detail["subject"]
                        and detail["task_instance"].get("state") in ANSWERABLE_STATES):
                    return run["dag_run_id"], detail
        time.sleep(5)
    raise AssertionError(f"no {PROMOTION_DAG} run asked about version {version} in "
                         f"{timeout:.0f}s; its runs: {seen}")


def approve_in_ui(browser: Browser, stack: AirflowStack, run_id: str, subject: str) -> None:
    """From the Required Actions list, open the promotion run's approval and press Approve."""
    browser.open(f"{stack.url}/required_actions?response_received=false", "Required Action")
    link = browser.wait_for_text(subject, UI_TIMEOUT_S)
    browser.shot("required-actions-pending")
    browser.click(link)
    browser.button("Approve", timeout=UI_TIMEOUT_S)
    browser.wait_for_text("passed the gate", UI_TIMEOUT_S)
    browser.shot("approval-form")
    browser.click(browser.button("Approve"))

    def answered() -> bool:
        # a toast confirms; under load it can come and go between two polls, so the server
        # holding the response counts as well
        if browser.visible("//*[contains(text(), 'response successful')]"):
            return True
        done = stack.api("GET", f"dags/{PROMOTION_DAG}/dagRuns/"
                                f"{urllib.parse.quote(run_id, safe='')}"
                                "/hitlDetails?response_received=true").get("hitl_details", [])
        return any(d["task_instance"]["task_id"] == "approve" for d in done)

    browser.wait(answered, UI_TIMEOUT_S, "the UI to confirm the approval (toast or response)")
    browser.shot("approved")


def wait_for_run_end(stack: AirflowStack, run_id: str, timeout: float,
                     dag_id: str = DAG_ID) -> dict:
    """Poll the run until it ends, answering nothing (the approval is the UI's job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        run = stack.run(dag_id, run_id)
        if run["state"] in {"success", "failed"}:
            return run
        time.sleep(5)
    raise AssertionError(f"{dag_id} run {run_id} not finished after {timeout:.0f}s; "
                         f"tasks: {_task_states(stack, run_id, dag_id)}")


def champion_in_mlflow_ui(browser: Browser, mlflow: MlflowServer, model: str, version: str,
                          keys: tuple[str, ...]) -> dict[str, str]:
    """Open the registered model's page, check that version's row holds alias ``champion``, open
    the version and read the values of tags ``keys`` from its tags table."""
    browser.open(f"{mlflow.url}/#/models/{urllib.parse.quote(model)}", model)
    row = browser.wait(lambda: next(iter(browser.visible(
        f"//*[self::tr or @role='row'][.//a[normalize-space(.)='Version {version}']]")), None),
        UI_TIMEOUT_S,
        f"version {version}'s row in the versions table")
    browser.wait(lambda: browser.visible(ALIAS_CHAMPION, row), UI_TIMEOUT_S,
                 f"alias chip '@ champion' in version {version}'s row")
    # the assistant side panel only hides the page in screenshots; absent in other versions
    for close in browser.visible("//button[@aria-label='Close']"
                                 "[contains(@data-component-id, 'assistant')]"):
        close.click()
    browser.shot("mlflow-model-page")
    browser.click(row.find_element("xpath", f".//a[normalize-space(.)='Version {version}']"))
    browser.wait_for_text(f"Version {version}", UI_TIMEOUT_S)

    def tag_values() -> dict[str, str] | None:
        cells = {key: browser.visible(f"//*[self::tr or @role='row']"
                                      f"[*[1][normalize-space(.)='{key}']]/*[2]") for key in keys}
        if all(cells.values()):
            return {key: found[0].text.strip() for key, found in cells.items()}
        return None

    values = browser.wait(tag_values, UI_TIMEOUT_S, f"tags {keys} in the version's tags table")
    browser.wait(lambda: browser.visible(ALIAS_CHAMPION), UI_TIMEOUT_S,
                 "alias chip '@ champion' on the version's page")
    browser.shot("mlflow-version-page")
    return values


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Browser:
    if chromium_paths() is None:
        missing_prerequisite("Chromium not found: `apt-get install chromium chromium-driver` "
                             "(.ci/run does) or set FLYWHEEL_CHROMIUM and FLYWHEEL_CHROMEDRIVER")
    artifacts = tmp_path_factory.mktemp("ui-browser")
    session = Browser(artifacts)
    yield session
    session.close()
    where = [artifacts]
    if target := os.environ.get("FLYWHEEL_TEST_ARTIFACTS"):
        copy = Path(target) / "ui-browser"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(artifacts, copy)
        where.append(copy)
    # shown on success too: output captured in a fixture is dropped when the tests pass
    line = f"browser screenshots ({len(session.shots)}): {' and '.join(map(str, where))}"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


@pytest.fixture(scope="module")
def ui_cycle(browser: Browser, airflow_stack: AirflowStack, integration_home: Path,
             xs_base_model: Path) -> dict:
    """One cycle triggered and approved in the Airflow UI; returns the finished run and timings."""
    from tasks.core.config import Paths

    landing = Paths(integration_home).landing
    if not landing.is_dir() or not any(landing.iterdir()):  # alone, not after the cycle test
        from tasks.demo.simulate import SimulateConfig, simulate

        simulate(SimulateConfig(seed=11, days=1, records_per_day=1200, feedback_rate=0.3,
                                start_date=dt.date.today() - dt.timedelta(days=1),
                                home=str(integration_home)))
    seconds = {}
    started = time.monotonic()
    trigger_from_form(browser, airflow_stack, _smallest_conf(airflow_stack, xs_base_model,
                                                             integration_home))
    seconds["trigger"] = time.monotonic() - started
    # the cycle ends without anyone approving anything
    run = wait_for_run_end(airflow_stack, RUN_ID, TO_APPROVAL_S)
    seconds["cycle"] = time.monotonic() - started
    assert run["state"] == "success", (run, _task_states(airflow_stack, RUN_ID))
    version = registered_version(airflow_stack, RUN_ID)
    promotion_id, request = wait_for_approval_request(airflow_stack, version, TO_APPROVAL_S)
    seconds["to_approval"] = time.monotonic() - started
    cycle_while_pending = airflow_stack.run(DAG_ID, RUN_ID)["state"]
    approve_in_ui(browser, airflow_stack, promotion_id, request["subject"])
    promotion = wait_for_run_end(airflow_stack, promotion_id, AFTER_APPROVAL_S, PROMOTION_DAG)
    seconds["promotion"] = time.monotonic() - started
    browser.open(f"{airflow_stack.url}/dags/{DAG_ID}/runs/{urllib.parse.quote(RUN_ID)}",
                 RUN_ID)
    browser.wait_for_text("report", UI_TIMEOUT_S)
    browser.shot(f"airflow-run-{run['state']}")
    (browser.artifacts / "seconds.json").write_text(json.dumps(seconds, indent=2))
    print(f"ui cycle: {seconds}", flush=True)
    return {"run": run, "approval": request, "seconds": seconds, "version": version,
            "promotion_id": promotion_id, "promotion": promotion,
            "cycle_while_pending": cycle_while_pending}


def test_run_triggered_and_approved_in_the_ui_succeeds(ui_cycle, airflow_stack):
    run = ui_cycle["run"]
    assert run["state"] == "success", (run, _task_states(airflow_stack, RUN_ID))
    assert run["run_type"] == "manual"
    # the cycle had ended while its challenger's approval was still pending in the other DAG
    assert ui_cycle["cycle_while_pending"] == "success"
    assert "approve[-1]" not in _task_states(airflow_stack, RUN_ID)
    promotion = ui_cycle["promotion"]
    assert promotion["state"] == "success"
    assert promotion["run_type"] == "asset_triggered"  # started by the cycle's Asset event
    # the approval was answered (by the UI: nothing in this module answers it over REST)
    quoted = urllib.parse.quote(ui_cycle["promotion_id"], safe="")
    details = airflow_stack.api("GET", f"dags/{PROMOTION_DAG}/dagRuns/{quoted}/hitlDetails"
                                )["hitl_details"]
    approve = next(d for d in details if d["task_instance"]["task_id"] == "approve")
    assert approve["response_received"] is True
    assert approve["chosen_options"] == ["Approve"]
    states = _task_states(airflow_stack, ui_cycle["promotion_id"], PROMOTION_DAG)
    assert states["promote[-1]"] == "success"
    assert states["auto_approve[-1]"] == "skipped"


def test_run_conf_carries_the_thresholds_typed_in_the_form(ui_cycle, airflow_stack):
    conf = airflow_stack.run(DAG_ID, RUN_ID)["conf"]
    for name, value in THRESHOLDS.items():
        assert conf[name] == pytest.approx(value), (name, conf)
    defaults = airflow_stack.api("GET", f"dags/{DAG_ID}/details")["params"]
    for name in THRESHOLDS:  # really changed from what the form showed first
        assert conf[name] != pytest.approx(defaults[name]["value"]), name
    assert conf["auto_approve"] is False
    assert [c["name"] for c in conf["candidates"]] == ["xs-lora"]


def test_mlflow_ui_shows_the_champion_with_its_gate_tags(ui_cycle, browser, mlflow_server):
    from tasks.core.config import run_folder_name
    from tasks.core.tracking import registered_model_name

    model = registered_model_name("router")
    found = mlflow_server.api("GET", "registered-models/alias", name=model, alias="champion")
    version = found["model_version"]
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert tags.get("cycle_id") == run_folder_name(RUN_ID), f"champion is not this run's: {tags}"
    keys = ("gate", "gate_reasons", "cycle_id", "candidate", "approved_by")
    shown = champion_in_mlflow_ui(browser, mlflow_server, model, version["version"], keys)
    for key in keys:  # what the page shows is what the registry holds
        assert shown[key] == tags[key], (key, shown[key], tags[key])
    assert shown["gate"] == "passed"
    assert shown["candidate"] == "xs-lora"
    # the latency threshold typed in the trigger form is the one the gate applied
    assert f"{THRESHOLDS['max_p95_latency_ms']:.1f} ms" in shown["gate_reasons"], shown


def test_the_cycle_report_renders_as_a_page_with_the_models_table(ui_cycle, browser,
                                                                  integration_home):
    """The cycle's report.html, opened in the browser: a real table holds the teacher's and the
    candidate's rows (numbers in their own right-aligned cells), the gate shows badges, and the
    charts are loaded images."""
    from tasks.core.config import run_folder_name

    page = integration_home / "runs" / run_folder_name(RUN_ID) / "report.html"
    assert page.is_file(), f"no report at {page}"
    browser.open(page.as_uri(), "Models on the frozen test split")
    rows = browser.wait(lambda: browser.visible("//section[@id='models']//table//tr[td]"),
                        UI_TIMEOUT_S, "the models table's rows")
    texts = [row.text for row in rows]
    assert any(t.startswith("teacher") for t in texts), texts
    candidate = next((row for row in rows if row.text.startswith("xs-lora")), None)
    assert candidate is not None, texts
    numbers = candidate.find_elements("xpath", "./td[@class='num']")
    assert numbers and numbers[0].value_of_css_property("text-align") in {"right", "end"}
    assert float(numbers[0].text) >= 0  # the accuracy, a number in its own cell
    assert browser.visible("//section[@id='gate']//span[contains(@class, 'badge')]")
    images = browser.visible("//img")
    assert images and all(browser.driver.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in images)
    browser.shot("cycle-report")
