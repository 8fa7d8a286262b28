"""Evaluate a router model on the frozen test split: lm-eval accuracy, per-expert F1, latency.

    flywheel evaluate --candidate llama-s-lora --base-model-path DIR --adapter-dir DIR \
        --dataset-dir ~/.flywheel/datasets/router/v1a2b3c

Accuracy comes from lm-evaluation-harness running the task folder ``tasks/evaluation/
flywheel_routing`` (multiple choice over the experts, by log-likelihood). Each sample's prediction
gives per-expert precision/recall/F1, macro-F1 and the confusion matrix. Latency is measured the
same way for every model: warm-up, then one query at a time through ``generate`` with a streamer
that stamps each token, giving time to first token and total time, p50 and p95.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.config import EXPERTS, get_paths
from tasks.settings import parse_config

TASK_DIR = Path(__file__).resolve().parent / "evaluation" / "flywheel_routing"
ROUTING_TASK = "flywheel_routing"


class EvaluateConfig(BaseModel):
    """Settings of one evaluation."""

    candidate: str = Field(min_length=1, description="Name shown in reports (candidate or base).")
    base_model_path: str = Field(description="Base model folder (or hub id).")
    adapter_dir: str | None = Field(None, description="LoRA adapter folder; none = base model.")
    dataset_dir: str = Field(description="Curated dataset version folder (test.jsonl inside).")
    workload_id: str = Field("router", min_length=1, description="Workload the model serves.")
    cycle_id: str = Field("manual", min_length=1, description="Cycle (DAG run) this belongs to.")
    mlflow_run_id: str | None = Field(None, description="Log into this run (e.g. the training's).")
    batch_size: int = Field(32, ge=1, le=4096, description="lm-eval batch size.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N test queries.")
    latency_queries: int = Field(40, ge=1, le=100000, description="Queries timed one at a time.")
    latency_warmup: int = Field(5, ge=0, le=1000, description="Untimed queries before timing.")
    threads: int = Field(2, ge=1, le=256, description="CPU threads for inference.")
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")
    track: bool = Field(True, description="Log metrics to MLflow.")


class ExpertScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class EvaluateResult(BaseModel):
    candidate: str
    base_model_path: str
    adapter_dir: str | None
    dataset_version: str
    n_test: int
    accuracy: float
    macro_f1: float
    per_expert: dict[str, ExpertScores]
    confusion: dict[str, dict[str, int]]
    latency_p50_ms: float
    latency_p95_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    latency_hardware: str
    eval_seconds: float
    mlflow_run_id: str | None = None


def write_task_config(dataset_dir: Path, work_dir: Path) -> Path:
    """A run-local YAML that includes the repo's task and points it at this test split."""
    import yaml

    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "include": str(TASK_DIR / f"{ROUTING_TASK}.yaml"),
        "task": ROUTING_TASK,
        "dataset_kwargs": {"data_files": {"test": str((dataset_dir / "test.jsonl").resolve())}},
    }
    path = work_dir / f"{ROUTING_TASK}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return work_dir


def run_lm_eval(config: EvaluateConfig, task_dir: Path) -> list[dict]:
    """Run the routing task through ``lm_eval.simple_evaluate``; returns its logged samples."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    # add_bos_token: score the prompt exactly as training and serving tokenise it
    model_args = {"pretrained": config.base_model_path, "dtype": "float32",
                  "add_bos_token": True}
    if config.adapter_dir:
        model_args["peft"] = config.adapter_dir
    results = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=[ROUTING_TASK],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=config.batch_size, device="cpu", limit=config.limit, log_samples=True,
        random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    return results["samples"][ROUTING_TASK]


def score_samples(samples: list[dict]) -> tuple[list[str], list[str]]:
    """Gold and predicted experts from lm-eval's multiple-choice samples."""
    from tasks.evaluation.flywheel_routing.utils import choices

    gold, predicted = [], []
    for sample in samples:
        options = choices(sample["doc"])
        scores = [resp[0] for resp in sample["filtered_resps"]]
        gold.append(sample["doc"]["expert"])
        predicted.append(options[max(range(len(scores)), key=scores.__getitem__)])
    return gold, predicted


def classification_report(gold: list[str], predicted: list[str], labels: list[str]
                          ) -> tuple[float, float, dict[str, ExpertScores], dict]:
    """Accuracy, macro-F1 (over experts present in gold), per-expert scores, confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    present = [label for label in labels if label in set(gold)]
    p, r, f, s = precision_recall_fscore_support(gold, predicted, labels=present,
                                                 zero_division=0)
    per_expert = {label: ExpertScores(precision=float(p[i]), recall=float(r[i]), f1=float(f[i]),
                                      support=int(s[i])) for i, label in enumerate(present)}
    matrix = confusion_matrix(gold, predicted, labels=labels)
    confusion = {g: {p_: int(matrix[i, j]) for j, p_ in enumerate(labels) if matrix[i, j]}
                 for i, g in enumerate(labels) if matrix[i].sum()}
    accuracy = sum(g == p_ for g, p_ in zip(gold, predicted, strict=True)) / max(1, len(gold))
    macro_f1 = float(sum(f) / len(f)) if len(f) else 0.0
    return accuracy, macro_f1, per_expert, confusion


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def measure_latency(base_model_path: str, adapter_dir: str | None, queries: list[str],
                    warmup: int, threads: int) -> dict[str, float]:
    """Batch-size-1 latency of answering each query, as the agent would call the model.

    One ``generate`` call per query with a streamer that stamps each token as it is produced:
    the first stamp after the prompt is the time to first token, the last is the total.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    from tasks.prompts import format_prompt

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or base_model_path)
    model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
        if model.peft_config["default"].peft_type == "LORA":  # soft prompts cannot be merged
            model = model.merge_and_unload()  # as served
    model.eval()
    max_new = max(len(tokenizer(" " + e, add_special_tokens=False)["input_ids"])
                  for e in EXPERTS) + 1

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.calls = 0

        def put(self, value) -> None:
            self.calls += 1
            if self.calls > 1:  # the first put() is the prompt itself
                self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    ttft, total = [], []
    with torch.inference_mode():
        for i, query in enumerate(queries[:warmup] + queries):
            inputs = tokenizer(format_prompt(query), return_tensors="pt")
            stamps = Stamps()
            start = time.perf_counter()
            model.generate(**inputs, max_new_tokens=max_new, do_sample=False, streamer=stamps,
                           pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            end = time.perf_counter()
            if i < warmup:
                continue
            ttft.append(((stamps.times[0] if stamps.times else end) - start) * 1000)
            total.append((end - start) * 1000)
    return {"latency_p50_ms": statistics.median(total), "latency_p95_ms": _percentile(total, 0.95),
            "ttft_p50_ms": statistics.median(ttft), "ttft_p95_ms": _percentile(ttft, 0.95)}


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu:{platform.machine()} x{torch.get_num_threads()} threads"


def evaluate(config: EvaluateConfig) -> EvaluateResult:
    """Accuracy and latency of one model on the dataset's frozen test split."""
    paths = get_paths(config.home)
    dataset_dir = Path(config.dataset_dir)
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    slug = config.candidate.replace(":", "_").replace("/", "_")
    work_dir = paths.runs / config.cycle_id / "eval" / slug
    started = time.perf_counter()
    samples = run_lm_eval(config, write_task_config(dataset_dir, work_dir / "lm_eval_task"))
    gold, predicted = score_samples(samples)
    accuracy, macro_f1, per_expert, confusion = classification_report(gold, predicted,
                                                                      list(EXPERTS))
    test_queries = [json.loads(line)["query"] for line in
                    (dataset_dir / "test.jsonl").read_text().splitlines() if line]
    latency = measure_latency(config.base_model_path, config.adapter_dir,
                              test_queries[: config.latency_queries], config.latency_warmup,
                              config.threads)
    result = EvaluateResult(
        candidate=config.candidate, base_model_path=config.base_model_path,
        adapter_dir=config.adapter_dir, dataset_version=manifest["version"], n_test=len(gold),
        accuracy=accuracy, macro_f1=macro_f1, per_expert=per_expert, confusion=confusion,
        latency_hardware=hardware(), eval_seconds=time.perf_counter() - started, **latency)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = zip(samples, gold, predicted, strict=True)
    (work_dir / "predictions.jsonl").write_text("".join(
        json.dumps({"id": s["doc"].get("id"), "query": s["doc"]["query"], "gold": g,
                    "predicted": p}) + "\n" for s, g, p in rows))
    if config.track:
        result.mlflow_run_id = _log_to_mlflow(config, result, work_dir)
    (work_dir / "evaluate_result.json").write_text(result.model_dump_json(indent=1))
    return result


def _log_to_mlflow(config: EvaluateConfig, result: EvaluateResult, work_dir: Path) -> str:
    from tasks import tracking

    tags = None if config.mlflow_run_id else {
        "flywheel.cycle_id": config.cycle_id, "flywheel.candidate": config.candidate,
        "flywheel.stage": "evaluate"}
    with tracking.run(config.workload_id, run_name=f"{config.cycle_id}/{config.candidate}",
                      run_id=config.mlflow_run_id, tags=tags,
                      paths=get_paths(config.home)) as active:
        import mlflow

        mlflow.log_metrics({
            "test_accuracy": result.accuracy, "test_macro_f1": result.macro_f1,
            "latency_p50_ms": result.latency_p50_ms, "latency_p95_ms": result.latency_p95_ms,
            "ttft_p50_ms": result.ttft_p50_ms, "ttft_p95_ms": result.ttft_p95_ms,
            "n_test": result.n_test,
            **{f"f1.{expert}": s.f1 for expert, s in result.per_expert.items()}})
        mlflow.set_tags({"flywheel.latency_hardware": result.latency_hardware,
                         "flywheel.eval_dataset_version": result.dataset_version})
        mlflow.log_dict(result.confusion, "evaluation/confusion.json")
        mlflow.log_artifact(str(work_dir / "predictions.jsonl"), artifact_path="evaluation")
        return active.info.run_id


def main(argv: list[str] | None = None) -> int:
    config = parse_config(EvaluateConfig, argv, "flywheel evaluate", __doc__)
    r = evaluate(config)
    print(f"{r.candidate}: accuracy {r.accuracy:.3f}, macro-F1 {r.macro_f1:.3f} on {r.n_test} "
          f"test queries; latency p50 {r.latency_p50_ms:.1f} ms, p95 {r.latency_p95_ms:.1f} ms "
          f"({r.latency_hardware})")
    return 0


class TeacherBaseline(BaseModel):
    """The model in production, judged from its own logs on the same test split."""

    model: str | None
    n_test: int
    accuracy: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    oracle_accuracy: float | None = Field(
        None, description="Against the simulator's gold labels (simulation only).")
    note: str


def teacher_baseline(dataset_dir: str, home: str | None = None) -> TeacherBaseline:
    """Accuracy of the teacher's logged routes on the test split, and its logged latency.

    Until SME review exists, curated labels *are* the teacher's thumbs-up routes, so its accuracy
    against them is 1.0 by construction; where the traffic simulator's gold labels exist, its true
    accuracy on the same queries is given beside it, marked as a simulation oracle.
    """
    import pandas as pd

    from tasks.validate import load_store

    paths = get_paths(home)
    test = pd.read_json(Path(dataset_dir) / "test.jsonl", lines=True)
    store = load_store(str(paths.home))
    logged = store[store["id"].isin(test["id"])].drop_duplicates("id").set_index("id")
    joined = test.join(logged[["route", "latency_ms", "model"]], on="id", how="inner")
    accuracy = float((joined["route"] == joined["expert"]).mean()) if len(joined) else 0.0
    oracle = None
    truth_files = sorted(paths.simulator.glob("truth-*.parquet"))
    if truth_files:
        truth = pd.concat([pd.read_parquet(f, columns=["id", "gold_expert"]) for f in truth_files])
        with_gold = joined.join(truth.drop_duplicates("id").set_index("id"), on="id",
                                how="inner")
        if len(with_gold):
            oracle = float((with_gold["route"] == with_gold["gold_expert"]).mean())
    latency = joined["latency_ms"].astype(float)
    return TeacherBaseline(
        model=str(joined["model"].mode().iloc[0]) if len(joined) else None, n_test=len(joined),
        accuracy=accuracy,
        latency_p50_ms=float(latency.median()) if len(joined) else None,
        latency_p95_ms=float(latency.quantile(0.95)) if len(joined) else None,
        oracle_accuracy=oracle,
        note="latency from the teacher's logs; accuracy vs curated labels (its own thumbs-up "
             "routes) and, in simulation, vs gold labels")


def evaluate_candidate(trained: dict, dataset_dir: str, workload_id: str, cycle_id: str,
                       latency_queries: int = 40, home: str | None = None,
                       limit: int | None = None) -> dict:
    """Evaluate a fine-tuned candidate and, beside it, its base model zero-shot.

    Returns ``{"candidate", "base_model", "finetuned": EvaluateResult, "base": EvaluateResult}``
    as JSON-ready dicts (for XCom).
    """
    if trained.get("family") == "encoder":  # a classifier: no lm-eval, same result shape
        from tasks.encoder_router import evaluate_encoder_candidate

        return evaluate_encoder_candidate(trained, dataset_dir, workload_id, cycle_id,
                                          latency_queries, home, limit)
    common = dict(base_model_path=trained["base_model_path"], dataset_dir=dataset_dir,
                  workload_id=workload_id, cycle_id=cycle_id, latency_queries=latency_queries,
                  home=home, limit=limit)
    # full SFT writes a whole model (in adapter_dir), evaluated as a base model of its own
    weights = ({"base_model_path": trained["adapter_dir"], "adapter_dir": None}
               if trained.get("method") == "full" else {"adapter_dir": trained["adapter_dir"]})
    tuned = evaluate(EvaluateConfig(candidate=trained["candidate"],
                                    mlflow_run_id=trained.get("mlflow_run_id"),
                                    **{**common, **weights}))
    base = evaluate(EvaluateConfig(candidate=f"base:{trained['base_model']}", **common))
    return {"candidate": trained["candidate"], "base_model": trained["base_model"],
            "mlflow_run_id": tuned.mlflow_run_id, "dataset_version": tuned.dataset_version,
            "finetuned": tuned.model_dump(mode="json"), "base": base.model_dump(mode="json")}
