"""Workload files: found by id, a user's before the shipped one, each mistake named by path."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tasks.core.config import ROUTE_TOOL
from tasks.core.workload import (
    WORKLOADS_ENV,
    WorkloadError,
    list_workloads,
    load_workload,
    read_workload,
)
from tasks.demo.clinc150 import EXPERTS, FALLBACK_EXPERT

HELPDESK = """\
workload_id: helpdesk
description: IT helpdesk triage
experts:
  - {name: hardware, description: "Laptops, screens, docks"}
  - {name: accounts, description: "Passwords, access, SSO"}
  - {name: other, description: "Anything else"}
fallback_expert: other
decision: {kind: function_name}
teacher_models: [gpt-large]
prompt: "Triage the ticket.\\n{expert_list}"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_the_shipped_router_is_the_demo_label_space():
    router = load_workload("router")
    assert router.expert_names == EXPERTS
    assert router.fallback_expert == FALLBACK_EXPERT
    assert (router.decision.kind, router.decision.tool) == ("tool_call", ROUTE_TOOL)
    assert all(e.description for e in router.experts)
    assert "router" in list_workloads()


def test_a_users_workload_by_setting_and_its_prompt(tmp_path, monkeypatch):
    write(tmp_path, "helpdesk.yaml", HELPDESK)
    monkeypatch.setenv(WORKLOADS_ENV, str(tmp_path))
    helpdesk = load_workload("helpdesk")
    assert helpdesk.expert_names == ("hardware", "accounts", "other")
    assert helpdesk.teacher_models == ["gpt-large"]
    assert helpdesk.system_prompt() == (
        "Triage the ticket.\n- hardware: Laptops, screens, docks\n"
        "- accounts: Passwords, access, SSO\n- other: Anything else")
    assert set(list_workloads()) >= {"router", "helpdesk"}
    # the user's file of the shipped id shadows the shipped one
    write(tmp_path, "router.yml", HELPDESK.replace("helpdesk", "router"))
    assert load_workload("router").expert_names == ("hardware", "accounts", "other")
    assert list_workloads()["router"] == tmp_path / "router.yml"


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace("name: accounts", "name: hardware"), "duplicate expert names: hardware"),
    (lambda t: t.split("experts:")[0] + "experts: []\nfallback_expert: null\n",
     "experts: List should have at least 1 item"),
    (lambda t: t + "colour: blue\n", "colour: Extra inputs are not permitted"),
    (lambda t: t.replace("fallback_expert: other", "fallback_expert: nobody"),
     "fallback_expert 'nobody' is not one of the experts"),
    (lambda t: t.replace("name: other", "name: 'other expert'"), "must match"),
    (lambda t: t.replace("workload_id: helpdesk", "workload_id: desk"),
     "differs from the file's name 'helpdesk'"),
    (lambda t: t.replace("{kind: function_name}", "{kind: tool_call, tool: null}"),
     "needs 'tool' and 'argument'"),
    (lambda t: t.replace("{expert_list}", "no placeholder"), "must contain {experts}"),
    (lambda t: "- just\n- a list\n", "expected a mapping"),
    (lambda t: "experts: [unclosed\n", "not YAML"),
])
def test_a_malformed_file_is_named_with_its_problem(tmp_path, change, message):
    path = write(tmp_path, "helpdesk.yaml", change(HELPDESK))
    with pytest.raises(WorkloadError) as error:
        read_workload(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_an_unknown_workload_says_where_it_looked(tmp_path):
    with pytest.raises(WorkloadError, match=f"no workload file for 'billing' in {tmp_path}"):
        load_workload("billing", folder=tmp_path)
    with pytest.raises(WorkloadError, match="must match"):
        load_workload("../router", folder=tmp_path)


def test_stage_settings_take_the_label_space_from_the_file(tmp_path):
    from tasks.curation.curate import CurateConfig
    from tasks.curation.judge import JudgeConfig
    from tasks.curation.review import ReviewConfig

    write(tmp_path, "helpdesk.yaml", HELPDESK)
    for settings in (CurateConfig, JudgeConfig, ReviewConfig):
        config = settings(workload_id="helpdesk", workloads_dir=str(tmp_path))
        assert config.experts == ["hardware", "accounts", "other"]
        assert config.fallback_expert == "other"
    # a caller may name them instead (a one-off run), but never a fallback outside them
    assert CurateConfig(experts=["a", "b"]).fallback_expert is None
    with pytest.raises(ValueError, match="fallback_expert 'c' is not one of the experts"):
        CurateConfig(experts=["a", "b"], fallback_expert="c")
    with pytest.raises(ValueError, match="no workload file for 'nope'"):
        CurateConfig(workload_id="nope", workloads_dir=str(tmp_path))


def test_cycle_settings_run_conf_then_file_then_dag_default(tmp_path):
    from tasks.core.workload import cycle_params

    write(tmp_path, "helpdesk.yaml", HELPDESK + "candidates: [minilm-router-lora]\n"
                                                "gate: {min_accuracy: 0.8, min_speedup: 5}\n")
    dag_defaults = {"workload_id": "helpdesk", "workloads_dir": str(tmp_path),
                    "candidates": ["smollm2-router-lora"], "min_accuracy": 0.7,
                    "max_p95_latency_ms": 1000.0, "min_speedup": None}
    chosen = cycle_params({**dag_defaults, "min_accuracy": 0.9}, {"min_accuracy": 0.9})
    assert chosen["candidates"] == ["minilm-router-lora"]  # the file's, the run named none
    assert chosen["min_accuracy"] == 0.9  # the run's own
    assert chosen["min_speedup"] == 5  # the file's
    assert chosen["max_p95_latency_ms"] == 1000.0  # the file is silent: the DAG's default
    shipped = cycle_params({**dag_defaults, "workload_id": "router", "workloads_dir": None}, {})
    assert shipped["candidates"] == ["minilm-router-lora", "smollm2-router-lora"]


@pytest.mark.parametrize("kind", ["tool_call", "function_name", "content"])
def test_each_decision_kind_is_read_back_from_a_logged_response(kind):
    from tasks.core.records import RecordError, make_request, make_response, route_of
    from tasks.core.workload import Decision

    decision = Decision(kind=kind, tool="handoff", argument="team") if kind == "tool_call" \
        else Decision(kind=kind)
    response = make_response("accounts", "call-1", decision)
    assert route_of(response, decision) == "accounts"
    request = make_request("I cannot log in", ["hardware", "accounts"], decision)
    if kind == "function_name":
        assert [t["function"]["name"] for t in request["tools"]] == ["hardware", "accounts"]
    if kind == "content":
        assert "tools" not in request
        with pytest.raises(RecordError, match="no tool call naming a function"):
            route_of(response, Decision(kind="function_name"))


def test_ingest_reads_each_workloads_decision_and_validation_its_experts(tmp_path):
    """Two workloads in one batch: each record's route read as its own file says, checked
    against its own experts; a record of a workload without a file is quarantined, not lost."""
    import json

    from tasks.core.records import make_request, make_response
    from tasks.core.workload import Decision
    from tasks.ingest.landing import IngestConfig, ingest
    from tasks.ingest.store import load_store
    from tasks.ingest.validate import ValidateConfig, validate

    folder = tmp_path / "workloads"
    folder.mkdir()
    write(folder, "helpdesk.yaml", HELPDESK)
    home = tmp_path / "home"
    (home / "landing").mkdir(parents=True)
    desk = Decision(kind="function_name")

    def line(rid, workload, expert, decision=None):
        return json.dumps({"id": rid, "timestamp": "2026-11-20T09:00:00Z",
                           "workload_id": workload, "client_id": "c", "model": "m",
                           "request": make_request(f"question {rid}", decision=decision),
                           "response": make_response(expert, f"call-{rid}", decision),
                           "latency_ms": 100.0}) + "\n"

    (home / "landing" / "mixed.jsonl").write_text(
        line("r1", "router", "banking") + line("h1", "helpdesk", "accounts", desk)
        + line("h2", "helpdesk", "banking", desk) + line("u1", "unknown", "banking"))
    ingest(IngestConfig(home=str(home), run_id="b1", workloads_dir=str(folder)))
    result = validate(ValidateConfig(home=str(home), run_id="b1", workloads_dir=str(folder),
                                     on_excess="flag"))
    stored = load_store(str(home))
    assert dict(zip(stored["id"], stored["route"], strict=True)) == {"r1": "banking",
                                                                     "h1": "accounts"}
    assert result.stored == 2 and result.quarantined == 2  # h2: not a helpdesk expert; u1


def test_flywheel_cycle_refuses_an_unknown_workload_before_starting_airflow(tmp_path, capsys):
    from tasks.stack.cycle import main

    assert main(["--workload-id", "nope", "--workloads-dir", str(tmp_path),
                 "--home", str(tmp_path / "home")]) == 2
    assert "no workload file for 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "home" / "airflow").exists()


def test_a_yes_no_setting_is_a_switch_on_the_command_line():
    from tasks.core.settings import parse_config
    from tasks.stack.cycle import CycleConfig

    assert parse_config(CycleConfig, ["--approve"], "flywheel cycle").approve is True
    assert parse_config(CycleConfig, ["--approve", "false"], "flywheel cycle").approve is False
    assert parse_config(CycleConfig, [], "flywheel cycle").approve is False
    with pytest.raises(SystemExit):  # a bad value is refused with the reason, not taken as true
        parse_config(CycleConfig, ["--approve", "maybe"], "flywheel cycle")


#: Every sub-command that reads workload files, with its settings model (ingest and validate read
#: every workload's file). finetune, evaluate and register take a workload id too, but read the
#: label space their dataset or model version recorded, never a workload file.
READS_WORKLOAD_FILES = {
    "review": "tasks.curation.review:ReviewConfig",
    "review export": "tasks.curation.review:ExportConfig",
    "review import": "tasks.curation.review:ImportConfig",
    "review status": "tasks.curation.review:StatusConfig",
    "cycle": "tasks.stack.cycle:CycleConfig",
    "curate": "tasks.curation.curate:CurateConfig",
    "attribute": "tasks.curation.judge:JudgeConfig",
    "ingest": "tasks.ingest.landing:IngestConfig",
    "validate": "tasks.ingest.validate:ValidateConfig",
    "agent": "tasks.serving.agent:AgentConfig",
}


@pytest.mark.parametrize("command", list(READS_WORKLOAD_FILES))
def test_every_command_that_reads_workload_files_takes_workloads_dir(command, tmp_path):
    from tasks.core.settings import build_parser

    module, _, name = READS_WORKLOAD_FILES[command].partition(":")
    model = getattr(importlib.import_module(module), name)
    parser = build_parser(model, f"flywheel {command}")
    assert parser.parse_args(["--workloads-dir", str(tmp_path)]).workloads_dir == str(tmp_path)
