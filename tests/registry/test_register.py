from __future__ import annotations

import json

import pytest

from tasks.core import tracking
from tasks.registry.register import PromotionRefused, aliases, champion_accuracy, register_winner


def training_run(home, tmp_path, name: str, workload: str = "router") -> str:
    """An MLflow run holding an adapter artifact, as the fine-tune stage leaves one."""
    with tracking.run(workload, run_name=name, paths=tracking.get_paths(home)) as active:
        return active.info.run_id


def fake_model(tmp_path, name: str):
    """Folders standing in for a base model and an adapter (registration only copies them)."""
    base, adapter = tmp_path / f"{name}-base", tmp_path / f"{name}-adapter"
    base.mkdir(exist_ok=True)
    adapter.mkdir(exist_ok=True)
    (base / "config.json").write_text("{}")
    (adapter / "adapter_config.json").write_text("{}")
    # the label space the fine-tune stage records beside every adapter it trains
    (adapter / "flywheel_training.json").write_text(json.dumps({"labels": ["hr", "it"]}))
    return str(base), str(adapter)


def evaluation(name: str, run_id: str, accuracy: float, base_model_path: str = "base",
               adapter_dir: str | None = None) -> dict:
    tuned = {"accuracy": accuracy, "macro_f1": accuracy, "latency_p50_ms": 5.0,
             "latency_p95_ms": 9.0, "ttft_p50_ms": 2.0, "cost_per_1k_requests": 0.001,
             "base_model_path": base_model_path, "adapter_dir": adapter_dir}
    return {"candidate": name, "base_model": "flywheel-llama-s", "mlflow_run_id": run_id,
            "dataset_version": "v1", "finetuned": tuned, "base": {"accuracy": 0.1}}


def decision(name: str, passed: bool = True) -> dict:
    return {"winner": name, "rule": "most accurate",
            "verdicts": [{"candidate": name, "passed": passed,
                          "reasons": ["accuracy ok", "latency ok"]},
                         {"candidate": "other", "passed": False,
                          "reasons": ["accuracy 0.100 < min 0.500"]}]}


def register_one(home, tmp_path, name: str, accuracy: float, cycle: str,
                 workload: str = "router") -> dict:
    base, adapter = fake_model(tmp_path, name)
    ev = evaluation(name, training_run(home, tmp_path, name, workload), accuracy, base, adapter)
    return register_winner(decision(name), [ev], workload, cycle, home=home)


def test_every_winner_waits_as_challenger_and_retries_are_idempotent(tmp_path):
    home = str(tmp_path)
    base, adapter = fake_model(tmp_path, "a")
    first = evaluation("a", training_run(home, tmp_path, "a"), 0.9, base, adapter)
    registered = register_winner(decision("a"), [first], "router", "c1", home=home)
    # even the first model ever is not served before approval
    assert registered["alias"] == "challenger" and registered["version"] == "1"
    assert registered["source"].startswith("models:/")
    again = register_winner(decision("a"), [first], "router", "c1", home=home)
    assert again["version"] == "1" and again["alias"] == "challenger"
    assert aliases("router", home) == {"challenger": "1"}
    assert champion_accuracy("router", home) is None

    client = tracking.configure(tracking.get_paths(home)).MlflowClient()
    version = client.get_model_version("flywheel-router", "1")
    assert version.tags["test_accuracy"] == "0.9"
    assert version.tags["gate"] == "passed"
    assert version.tags["gate_reasons"] == "accuracy ok; latency ok"
    assert version.tags["cost_per_1k_requests"] == "0.001"
    assert "Gate: PASSED - accuracy ok; latency ok" in version.description
    assert "other: FAIL - accuracy 0.100 < min 0.500" in version.description
    # the version is the pyfunc model, with base and adapter packaged as its artifacts
    import mlflow

    local = mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path / "dl"))
    from pathlib import Path

    assert (Path(local) / "MLmodel").is_file()
    assert (Path(local) / "artifacts" / "adapter" / "adapter_config.json").is_file()
    assert (Path(local) / "artifacts" / "base_model" / "config.json").is_file()


def test_no_winner_registers_nothing_and_a_failed_verdict_is_refused(tmp_path):
    result = register_winner({"winner": None, "verdicts": []}, [], "router", "c", str(tmp_path))
    assert result == {"registered": False, "reason": "no candidate passed the gate"}
    ev = evaluation("a", "run", 0.9)
    with pytest.raises(PromotionRefused, match="verdict failed"):
        register_winner(decision("a", passed=False), [ev], "router", "c", str(tmp_path))


def test_flywheel_register_registers_a_finished_cycles_winner_once(tmp_path, capsys):
    """`flywheel register --cycle-id` reads the cycle's report.json: a winner the cycle did not
    register is registered and recorded; run again, it names the version instead; a decision
    re-made by `flywheel gate --out` is honoured; a missing or malformed report is refused."""
    import json

    from tasks.cli import main as cli
    from tasks.core.config import get_paths

    home = str(tmp_path / "home")
    base, adapter = fake_model(tmp_path, "m")
    ev = evaluation("m", training_run(home, tmp_path, "m", "cli"), 0.8, base, adapter)
    folder = get_paths(home).runs / "c9"
    folder.mkdir(parents=True)
    report = {"workload_id": "cli", "evaluations": [ev],
              "decision": {"winner": None, "rule": "r", "verdicts": [
                  {"candidate": "m", "passed": False, "reasons": ["accuracy 0.8 < min 0.9"]}]},
              "registered": {"registered": False, "reason": "no candidate passed the gate"}}
    (folder / "report.json").write_text(json.dumps(report))

    assert cli(["register", "--cycle-id", "c9", "--home", home]) == 0
    assert "nothing registered: no candidate passed the gate" in capsys.readouterr().out

    relaxed = tmp_path / "decision.json"  # `flywheel gate --min-accuracy 0.7 --out ...`
    relaxed.write_text(json.dumps(decision("m")))
    args = ["register", "--cycle-id", "c9", "--home", home, "--decision", str(relaxed)]
    assert cli(args) == 0
    assert "flywheel-cli version 1 registered (alias challenger)" in capsys.readouterr().out
    # recorded in its own file: the report task's report.json is never rewritten
    assert json.loads((folder / "report.json").read_text()) == report
    recorded = json.loads((folder / "registered.json").read_text())
    assert recorded["registered"] and recorded["candidate"] == "m"
    from tasks.reporting.report import load_report

    assert load_report("c9", home)["registered"]["version"] == recorded["version"]
    assert cli(args) == 0  # again: named, not registered twice
    assert "version 1 was registered by the cycle already" in capsys.readouterr().out

    assert cli(["register", "--cycle-id", "nope", "--home", home]) == 1
    assert "the cycle's report task has not run" in capsys.readouterr().out
    relaxed.write_text(json.dumps({**decision("ghost")}))
    assert cli(args) == 1
    assert "'ghost' has no evaluation" in capsys.readouterr().out
    relaxed.write_text("[1, 2")
    assert cli(args) == 1
    assert "is not valid JSON" in capsys.readouterr().out
