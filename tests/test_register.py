from __future__ import annotations

from tasks import tracking
from tasks.register import champion_accuracy, register_winner


def training_run(home, tmp_path, name: str) -> str:
    """An MLflow run holding an adapter artifact, as the fine-tune stage leaves one."""
    adapter = tmp_path / name
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with tracking.run("router", run_name=name, paths=tracking.get_paths(home)) as active:
        import mlflow

        mlflow.log_artifacts(str(adapter), artifact_path="adapter")
        return active.info.run_id


def evaluation(name: str, run_id: str, accuracy: float) -> dict:
    tuned = {"accuracy": accuracy, "macro_f1": accuracy, "latency_p50_ms": 5.0,
             "latency_p95_ms": 9.0, "ttft_p50_ms": 2.0}
    return {"candidate": name, "base_model": "flywheel-llama-s", "mlflow_run_id": run_id,
            "dataset_version": "v1", "finetuned": tuned, "base": {"accuracy": 0.1}}


def decision(name: str) -> dict:
    return {"winner": name, "verdicts": [{"candidate": name, "passed": True,
                                          "reasons": ["accuracy ok", "latency ok"]}]}


def test_first_winner_is_champion_next_is_challenger_and_retries_are_idempotent(tmp_path):
    home = str(tmp_path)
    first = evaluation("a", training_run(home, tmp_path, "a"), 0.9)
    registered = register_winner(decision("a"), [first], "router", "c1", home=home)
    assert registered["alias"] == "champion" and registered["version"] == "1"
    assert registered["source"].endswith("/adapter")
    again = register_winner(decision("a"), [first], "router", "c1", home=home)
    assert again["version"] == "1" and again["alias"] == "champion"
    assert champion_accuracy("router", home) == 0.9

    second = evaluation("b", training_run(home, tmp_path, "b"), 0.95)
    registered = register_winner(decision("b"), [second], "router", "c2", home=home)
    assert registered["alias"] == "challenger" and registered["version"] == "2"

    client = tracking.configure(tracking.get_paths(home)).MlflowClient()
    version = client.get_model_version("flywheel-router", "2")
    assert version.tags["test_accuracy"] == "0.95"
    assert version.tags["gate"] == "passed"
    assert "accuracy ok" in version.description
    assert client.get_model_version_by_alias("flywheel-router", "champion").version in ("1", 1)


def test_no_winner_registers_nothing(tmp_path):
    result = register_winner({"winner": None, "verdicts": []}, [], "router", "c", str(tmp_path))
    assert result == {"registered": False, "reason": "no candidate passed the gate"}
