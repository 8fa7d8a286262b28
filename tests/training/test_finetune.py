"""Training tests on the tiny base model: transformers' Trainer on DeepSpeed, under torchrun, really
trains each method and family.

The tiny models have no chat template, so they get the plain router prompt (a real instruct model
gets its chat template, see tasks/core/prompts.py); ``max_seq_len=128`` leaves room for either."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.demo.clinc150 import EXPERTS, FALLBACK_EXPERT
from tasks.training.catalog import CandidateSpec, Hyperparameters
from tasks.training.finetune import FinetuneConfig, finetune, launch_command


def write_dataset(folder: Path, n_train: int = 96, n_test: int = 33) -> Path:
    """A small curated-dataset folder from CLINC150's train split (the stage's input contract)."""
    import random

    from tasks.demo.clinc150 import examples

    pool = [e for e in examples() if e.split == "train"]
    random.Random(0).shuffle(pool)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", pool[:n_train]), ("test", pool[n_train:n_train + n_test])):
        (folder / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": f"{name}-{i}", "query": e.query, "expert": e.expert}) + "\n"
            for i, e in enumerate(rows)))
    (folder / "manifest.json").write_text(json.dumps({
        "version": "vtest", "digest": "0" * 64, "workload_id": "router",
        "experts": list(EXPERTS), "fallback_expert": FALLBACK_EXPERT}))
    return folder


def test_launch_command_uses_a_launcher(tmp_path):
    command = launch_command(tmp_path / "job.json", "torchrun", 4)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node" in command and "4" in command
    assert command[-3:] == ["-m", "tasks.training.worker", str(tmp_path / "job.json")] or \
        command[-2:] == ["tasks.training.worker", str(tmp_path / "job.json")]


def test_causal_rows_mask_the_prompt_and_shorten_the_query_never_the_answer(xs_base_model):
    from transformers import AutoTokenizer

    from tasks.core.prompts import answer_ids, prompt_ids
    from tasks.demo.clinc150 import EXPERTS
    from tasks.training.worker import causal_rows

    tokenizer = AutoTokenizer.from_pretrained(xs_base_model)
    short = {"query": "what is my balance", "expert": "banking"}
    long = {"query": " ".join(["please tell me about the weather in paris"] * 20),
            "expert": "travel"}
    fixed = len(prompt_ids(tokenizer, "", EXPERTS)) + len(answer_ids(tokenizer, "travel"))
    max_len = fixed + 6
    rows = causal_rows([short, long], tokenizer, max_len, EXPERTS)
    answer = answer_ids(tokenizer, "banking")
    assert rows[0]["input_ids"] == prompt_ids(tokenizer, short["query"], EXPERTS) + answer
    assert rows[0]["labels"] == [-100] * (len(rows[0]["input_ids"]) - len(answer)) + answer
    # the long query lost its tail; the template's start and the whole answer are still there
    ids, labels = rows[1]["input_ids"], rows[1]["labels"]
    assert fixed < len(ids) <= max_len
    assert ids[-len(answer_ids(tokenizer, "travel")):] == answer_ids(tokenizer, "travel")
    assert ids[:5] == prompt_ids(tokenizer, long["query"], EXPERTS)[:5]
    assert [t for t in labels if t != -100] == answer_ids(tokenizer, "travel")
    with pytest.raises(ValueError, match="raise max_seq_len"):
        causal_rows([short], tokenizer, fixed - 4, EXPERTS)


def test_epoch_order_is_seeded_grouped_by_length_and_covers_every_row():
    import random

    from tasks.training.worker import epoch_order

    lengths = [random.Random(i).randint(5, 60) for i in range(200)]
    first = epoch_order(lengths, 8, seed=0, epoch=0)
    assert sorted(first) == list(range(200))
    assert first == epoch_order(lengths, 8, seed=0, epoch=0)  # what a resumed job relies on
    assert first != epoch_order(lengths, 8, seed=0, epoch=1)
    assert first != epoch_order(lengths, 8, seed=1, epoch=0)

    def padded(order):
        batches = [order[i:i + 8] for i in range(0, len(order), 8)]
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    shuffled = random.Random(0).sample(range(200), 200)
    assert padded(first) < 0.8 * padded(shuffled)  # batches of similar lengths pad less


def test_only_a_checkpoint_with_its_record_counts_as_resumable(tmp_path):
    from tasks.training.worker import STATE_FILE, latest_checkpoint

    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (4, 8, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-4" / STATE_FILE).write_text("{}")
    (tmp_path / "checkpoint-8" / STATE_FILE).write_text("{}")
    # checkpoint-12 is what a killed attempt was still writing
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-8"


@pytest.mark.slow
def test_lora_training_through_deepspeed_lowers_loss_and_changes_weights(tmp_path, xs_base_model):
    from safetensors.torch import load_file

    from tasks.core import tracking

    dataset = write_dataset(tmp_path / "dataset")
    spec = CandidateSpec(name="xs-lora", base_model=str(xs_base_model),
                         hyperparameters=Hyperparameters(learning_rate=2e-2, batch_size=16,
                                                         epochs=40, max_steps=40, max_seq_len=128))
    result = finetune(FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=str(dataset),
                                     home=str(tmp_path), cycle_id="t1"))

    assert result.steps == 40
    assert result.final_loss < 0.9 * result.first_loss, (result.first_loss, result.final_loss)
    weights = load_file(Path(result.adapter_dir) / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b, "adapter has no LoRA B matrices"
    # LoRA starts B at zero: any non-zero B means training moved the adapter
    assert any(float(w.abs().max()) > 0 for w in lora_b)
    assert (Path(result.adapter_dir) / "adapter_config.json").is_file()

    mlflow = tracking.configure(tracking.get_paths(str(tmp_path)))
    run = mlflow.MlflowClient().get_run(result.mlflow_run_id)
    assert run.data.params["dataset_digest"] == "0" * 64
    assert run.data.params["zero_stage"] == "2"
    assert run.data.params["base_model"] == str(xs_base_model)
    for key in ("tokens_per_second", "peak_memory_mb", "train_seconds"):
        assert run.data.metrics[key] > 0
    # the curve was logged by the worker while it trained, one point per optimizer step
    history = mlflow.MlflowClient().get_metric_history(result.mlflow_run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 41))
    assert json.loads((Path(result.adapter_dir).parent / "train_metrics.json").read_text())[
        "live_logging"] is True
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.mlflow_run_id,
                                                                      "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts


@pytest.mark.slow
@pytest.mark.parametrize(("method", "deepspeed_config", "learning_rate", "loss_ratio"), [
    ("full", "ds_zero3_offload.json", 3e-3, 0.9),
    # a soft prompt is a few hundred parameters on this 48-wide model: it learns, slowly (2-3%
    # off an epoch's loss in 15 steps at 0.03; at 0.3 the loss rose on some builds of the base),
    # so the test also checks that it moved away from where it started
    ("prompt_tuning", "ds_zero2.json", 0.03, 0.995),
    ("p_tuning", "ds_zero0.json", 1e-2, 0.995),
])
def test_other_methods_train_through_deepspeed(tmp_path, xs_base_model, method, deepspeed_config,
                                               learning_rate, loss_ratio):
    from safetensors.torch import load_file

    dataset = write_dataset(tmp_path / "dataset", n_train=48)
    spec = CandidateSpec(name=f"xs-{method}", base_model=str(xs_base_model), method=method,
                         deepspeed_config=deepspeed_config,
                         hyperparameters=Hyperparameters(learning_rate=learning_rate,
                                                         batch_size=16, epochs=40, max_steps=15,
                                                         checkpoint_every=0, max_seq_len=128))
    result = finetune(FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=str(dataset),
                                     home=str(tmp_path), cycle_id="m", track=False))
    assert result.steps == 15
    # one batch's loss is noisy (batches are grouped by length, so their mix changes); an
    # epoch's mean covers the same 48 rows: compare the first epoch (3 steps) with the last
    losses = json.loads((Path(result.adapter_dir).parent / "train_metrics.json").read_text()
                        )["losses"]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < loss_ratio * first, losses
    weights_dir = Path(result.adapter_dir)
    if method == "full":
        assert weights_dir.name == "model" and result.artifact_path == "model"
        assert result.trainable_parameters == result.total_parameters
        trained = load_file(weights_dir / "model.safetensors")
        base = load_file(Path(xs_base_model) / "model.safetensors")
        changed = [k for k in base if k in trained and not (trained[k] == base[k]).all()]
        assert changed, "full SFT left every weight as it was"
        assert all(t.numel() > 0 for t in trained.values())  # ZeRO-3 gathered before saving
    else:
        from peft import get_peft_model_state_dict

        from tasks.training.worker import TrainJob, build_model

        assert result.trainable_parameters < result.total_parameters
        prompt = load_file(weights_dir / "adapter_model.safetensors")
        assert any("prompt" in k for k in prompt), sorted(prompt)
        # the same job's untrained soft prompt (same seed, same initialisation)
        job = TrainJob.model_validate_json((weights_dir.parent / "job.json").read_text())
        untrained = get_peft_model_state_dict(build_model(job)[0])
        assert prompt.keys() == untrained.keys()
        assert max(float((prompt[k] - untrained[k]).abs().max()) for k in prompt) > 1e-3
    info = json.loads((weights_dir / "flywheel_training.json").read_text())
    assert info["base_model_path"] == str(xs_base_model) and info["method"] == method


@pytest.mark.slow
def test_two_cpu_ranks_share_each_epoch(tmp_path, xs_base_model):
    """Two gloo ranks under torchrun, as several GPUs would run: each reads half of an epoch's
    batches (accelerate counts DeepSpeed's CPU ranks only when told, see
    tasks.training.worker.configure_cpu_ranks) and only rank 0 writes."""
    dataset = write_dataset(tmp_path / "dataset", n_train=64)
    spec = CandidateSpec(name="xs-two-ranks", base_model=str(xs_base_model),
                         hyperparameters=Hyperparameters(learning_rate=2e-2, batch_size=8,
                                                         epochs=40, max_steps=8,
                                                         checkpoint_every=0, max_seq_len=128))
    result = finetune(FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=str(dataset),
                                     home=str(tmp_path), cycle_id="r2", track=False, nproc=2))
    metrics = json.loads((Path(result.adapter_dir).parent / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["micro_batches_per_epoch"] == 4
    assert result.steps == 8 and metrics["epochs"] == pytest.approx(2.0)  # 8 batches, 2 ranks
    assert len(set(metrics["batch_digests"][:4])) == 4
    assert result.final_loss < result.first_loss


@pytest.mark.slow
def test_a_causal_backbone_with_a_classification_head_trains_as_the_encoder_family(
        tmp_path, xs_base_model):
    """The encoder family is backbone-agnostic: the tiny Llama through
    AutoModelForSequenceClassification (a ``score`` head on the last token) trains with LoRA on
    its linear layers and the head in full, and the serving loader predicts labels with it."""
    from tasks.evaluation.encoder_router import load_classifier, predict

    dataset = write_dataset(tmp_path / "dataset", n_train=96)
    spec = CandidateSpec(name="xs-classifier", base_model=str(xs_base_model), family="encoder",
                         method="lora", deepspeed_config="ds_zero0.json",
                         hyperparameters=Hyperparameters(learning_rate=1e-2, batch_size=16,
                                                         epochs=40, max_steps=40,
                                                         checkpoint_every=0,
                                                         # as for the causal family: this tiny,
                                                         # briefly pre-trained base stays at chance
                                                         # with LoRA on linears alone
                                                         modules_to_save=["norm",
                                                                          "embed_tokens"]))
    result = finetune(FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=str(dataset),
                                     home=str(tmp_path), cycle_id="c", track=False))
    assert result.steps == 40
    assert result.final_loss < 0.7 * result.first_loss, (result.first_loss, result.final_loss)
    metrics = json.loads((Path(result.adapter_dir).parent / "train_metrics.json").read_text())
    assert metrics["lora_target_modules"] == "all-linear"  # BERT's layer names are not there
    adapter_config = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    assert "score" in adapter_config["modules_to_save"]

    docs = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]
    model, tokenizer, labels = load_classifier(result.base_model_path, result.adapter_dir)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    predicted = predict(model, tokenizer, labels, docs)
    assert set(predicted) <= set(labels)
    gold = [d["expert"] for d in docs]
    accuracy = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
    majority = max(gold.count(label) for label in set(gold)) / len(gold)
    assert accuracy > majority + 0.1, (accuracy, majority)


@pytest.mark.slow
def test_training_pool_is_created_once_and_then_kept(airflow_db):
    import subprocess
    import sys

    from tasks.training.finetune import TRAINING_POOL, ensure_training_pool

    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "pools", "delete", TRAINING_POOL], capture_output=True)
    assert ensure_training_pool(slots=2) == 2
    assert ensure_training_pool(slots=5) == 2  # an existing pool keeps the size it was given
    listed = subprocess.run([airflow, "pools", "get", TRAINING_POOL, "-o", "json"],
                            capture_output=True, text=True, check=True)
    assert int(json.loads(listed.stdout)[0]["slots"]) == 2


def test_training_processes_build_no_comm_op_and_share_one_ninja(monkeypatch):
    """shm_comm (used only by inference tensor parallelism) is not built for training, and a
    process whose PATH finds another ninja first still uses the environment's: two ninja versions
    hash build commands differently, and each would rebuild what the other cached."""
    import os
    import shutil
    import sys

    import deepspeed.ops
    from deepspeed.comm.torch import build_shm_op

    from tasks.training.worker import prepare_deepspeed_ops

    env_ninja = Path(sys.executable).parent / "ninja"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, "deepspeed_shm_comm", True)
    prepare_deepspeed_ops({"zero_optimization": {"stage": 2}})
    assert build_shm_op() is None
    if env_ninja.is_file():
        assert shutil.which("ninja") == str(env_ninja)
    # compiled ops are cached per environment, not in a folder shared across venvs
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix) / "var" / "torch_extensions")
    prepare_deepspeed_ops({})  # idempotent: the environment's folder is not stacked up
    assert os.environ["PATH"].count(str(env_ninja.parent)) == (
        1 if env_ninja.is_file() else 0)

    # a config that asks for tensor parallelism keeps the op available
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, "deepspeed_shm_comm", True)
    prepare_deepspeed_ops({"tensor_parallel": {"autotp_size": 2}})
    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is True

