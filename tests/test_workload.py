"""Workload files: found by id, a user's before the shipped one, each mistake named by path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import EXPERTS, FALLBACK_EXPERT, ROUTE_TOOL
from tasks.core.workload import (
    WORKLOADS_ENV,
    WorkloadError,
    list_workloads,
    load_workload,
    read_workload,
)

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
