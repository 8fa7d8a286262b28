"""The champion serves anywhere: ``mlflow models serve`` on the registry alias answers HTTP
clients with expert names, and the model loads in a fresh virtual environment built from its own
requirements alone (the project's code travels inside the model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.config import get_paths, local_environment
from tasks.demo.clinc150 import EXPERTS
from tests.integration.servers import free_port, start_service, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKLOAD = "served"
QUERIES = ["how do i freeze my card", "book a flight to paris", "what is my credit score"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> dict:
    """An encoder router registered and promoted in its own home (the shipped MiniLM with a
    fresh, seeded head: routes are valid, not good; quality is not what is tested here)."""
    import shutil

    from tasks.core.tracking import registered_model_name
    from tasks.evaluation.encoder_router import resolve_encoder
    from tasks.registry.register import promote, register_winner
    from tests.registry.test_register import decision, evaluation, training_run
    from tests.serving.test_serving import write_label_space

    root = tmp_path_factory.mktemp("served")
    home = str(root / "home")
    encoder = shutil.copytree(resolve_encoder("all-MiniLM-L6-v2"), root / "minilm")
    write_label_space(encoder)  # as a trained classifier's folder has it
    encoder = str(encoder)
    ev = {**evaluation("minilm", training_run(home, root, "minilm", WORKLOAD), 0.6, encoder),
          "family": "encoder"}
    registered = register_winner(decision("minilm"), [ev], WORKLOAD, "c1", home=home)
    promote(WORKLOAD, registered["version"], home=home)
    env = {**os.environ, **local_environment(get_paths(home), inherit=False)}
    # `mlflow models serve` starts `uvicorn` by name: this environment's, as an activated one
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {"root": root, "env": env,
            "uri": f"models:/{registered_model_name(WORKLOAD)}@champion"}


def test_mlflow_models_serve_answers_http_clients_with_expert_names(champion) -> None:
    import httpx

    port = free_port()
    server = start_service(
        "mlflow models serve",
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
         champion["uri"], "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        champion["root"] / "serve.log", env=champion["env"], cwd=champion["root"])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/ping", timeout=5).status_code == 200, 240,
                   "the scoring server", (server,))
        with httpx.Client(base_url=url, timeout=120) as client:
            answer = client.post("/invocations", json={"inputs": QUERIES})
            assert answer.status_code == 200, answer.text
            routed = answer.json()["predictions"]
            assert len(routed) == len(QUERIES) and set(routed) <= set(EXPERTS)

            # bad bodies: a clear 4xx, or the routes, never a traceback or a 500
            mixed = client.post("/invocations", json={"inputs": ["a query", 7]})
            if mixed.status_code == 200:  # MLflow's schema casts 7 to "7": routed as text
                assert len(mixed.json()["predictions"]) == 2
            else:
                assert 400 <= mixed.status_code < 500, mixed.text[:500]
            for body, reason in (({"inputs": []}, None),
                                 ({"inputs": ["q"] * 10_000}, "at most 1,000"),
                                 ({"nothing": "here"}, None)):
                refused = client.post("/invocations", json=body)
                shown = str(body)[:60]
                assert 400 <= refused.status_code < 500, (shown, refused.text[:500])
                assert refused.json().get("message"), (shown, refused.text[:500])
                if reason:
                    assert reason in refused.json()["message"], refused.text[:500]
            garbled = client.post("/invocations", content=b"{not json",
                                  headers={"Content-Type": "application/json"})
            assert 400 <= garbled.status_code < 500
            assert client.post("/invocations", json={"inputs": QUERIES}).json()[
                "predictions"] == routed  # still serving after the bad ones
        assert '" 500' not in (champion["root"] / "serve.log").read_text()  # no server error
    finally:
        server.stop()
    assert not server.alive()


def test_the_model_loads_in_a_fresh_environment_from_its_own_requirements(champion) -> None:
    """A virtual environment with nothing but the model's requirements.txt (from the package
    registries this machine reaches) loads the champion and routes; ``tasks`` is imported from
    the model's own code folder, not from this checkout."""
    import mlflow

    root = champion["root"]
    mlflow.set_tracking_uri(champion["env"]["MLFLOW_TRACKING_URI"])
    model = Path(mlflow.artifacts.download_artifacts(champion["uri"], dst_path=str(root / "m")))
    venv = root / "fresh-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--progress-bar", "off",
                              "-r", str(model / "requirements.txt")],
                             capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    script = ("import json, sys, mlflow\n"
              f"m = mlflow.pyfunc.load_model({str(model)!r})\n"
              f"routes = m.predict({QUERIES!r})\n"
              "import tasks\n"
              "print(json.dumps({'routes': routes, 'tasks': tasks.__file__}))\n")
    clean = {k: v for k, v in champion["env"].items() if k != "PYTHONPATH"}
    ran = subprocess.run([str(python), "-c", script], capture_output=True, text=True,
                         cwd=root, env=clean, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert len(result["routes"]) == len(QUERIES) and set(result["routes"]) <= set(EXPERTS)
    assert Path(result["tasks"]).resolve().is_relative_to(model.resolve())
