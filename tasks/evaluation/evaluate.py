"""Evaluate a router model on the frozen test split: lm-eval accuracy, per-expert F1, latency, cost.

    flywheel evaluate --candidate llama-s-lora --base-model-path DIR --adapter-dir DIR \
        --dataset-dir ~/.flywheel/datasets/router/v1a2b3c

Accuracy comes from lm-evaluation-harness, in one ``simple_evaluate`` call over two declarative
tasks of ``tasks/evaluation/flywheel_routing``: free generation with exact match of the expert's
name (``flywheel_routing_gen``: what the agent gets when it serves the model, so this is the
``accuracy`` the gate reads) and multiple choice by log-likelihood (``flywheel_routing``: reported
beside it as ``mc_accuracy``). The generated predictions give per-expert precision/recall/F1,
macro-F1 and the confusion matrix. With ``--icl-examples K`` the same two tasks run with the K
nearest train examples (MiniLM embeddings, cosine) solved before each prompt: the in-context
baseline of a base model.

With ``--general-text-docs N`` a regression task runs on the same loaded model right after
(``tasks/evaluation/flywheel_regression``): the bits per byte of N general-text documents, so a
candidate that forgot what its base model knew shows it (``forgetting_bpb`` = candidate minus base).

Latency and cost follow one protocol for every model (:mod:`tasks.serving.router` decodes for both):
warm-up, then the first ``latency_queries`` test queries one at a time through ``generate`` with a
streamer that stamps each token (time to first token and total, p50 and p95), then the same
queries in batches of ``throughput_batch_size`` for a throughput figure; cost per 1,000 requests is
``price_per_device_hour / 3600 / throughput * 1000``. The hardware is recorded with the numbers.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tasks.core.config import get_paths
from tasks.core.prompts import NO_EXPERT
from tasks.core.settings import parse_config
from tasks.core.workload import manifest_experts, recorded_label_space
from tasks.evaluation.scoring import (  # noqa: F401  (the evaluation's settings and result live there)
    LATENCY_QUERIES,
    EvaluateConfig,
    EvaluateResult,
    ExpertScores,
    classification_report,
    correctness,
    cost_per_1k_requests,
    hardware,
    log_evaluation,
    percentile,
)

TASK_DIR = Path(__file__).resolve().parent / "flywheel_routing"
ROUTING_TASK = "flywheel_routing"
GEN_TASK = "flywheel_routing_gen"
ICL_TASK = "flywheel_routing_icl"
ICL_GEN_TASK = "flywheel_routing_icl_gen"
GENERAL_TASK = "flywheel_general_text"
REGRESSION_DIR = Path(__file__).resolve().parent / "flywheel_regression"


def write_task_config(dataset_dir: Path, work_dir: Path, test_file: Path | None = None,
                      icl: bool = False, general_file: Path | None = None,
                      max_gen_toks: int | None = None) -> Path:
    """Run-local YAMLs that include the repo's tasks and point them at this test split (and, with
    ``general_file``, the forgetting check at that file); ``max_gen_toks`` overrides the
    generation task's answer length (:func:`answer_tokens`).

    Returns the folder to pass as lm-eval's ``include_path`` (it holds only these YAMLs).
    """
    import yaml

    work_dir.mkdir(parents=True, exist_ok=True)
    test_file = (test_file or dataset_dir / "test.jsonl").resolve()
    tasks = [(TASK_DIR, task, test_file)
             for task in ((ICL_TASK, ICL_GEN_TASK) if icl else (ROUTING_TASK, GEN_TASK))]
    if general_file is not None:
        tasks.append((REGRESSION_DIR, GENERAL_TASK, general_file.resolve()))
    for folder, task, data in tasks:
        config = {"include": str(folder / f"{task}.yaml"), "task": task,
                  "dataset_kwargs": {"data_files": {"test": str(data)}}}
        if task in (GEN_TASK, ICL_GEN_TASK) and max_gen_toks:
            config["generation_kwargs"] = {"until": ["\n"], "do_sample": False,
                                           "max_gen_toks": max_gen_toks}
        (work_dir / f"{task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return work_dir


def write_general_text(out: Path, docs: int, source: str | None = None, seed: int = 0) -> Path:
    """The forgetting check's documents as JSON lines ``{"text"}``: the first ``docs`` of
    ``source`` (JSONL with ``text``, or plain text one document per line), or by default a fixed,
    seeded sample of CLINC150's Wikipedia sentences. Empty lines are skipped."""
    import random

    if source:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"general_text_file {source} does not exist")
        texts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{source}:{number}: expected a JSON object with a 'text' "
                                     "string") from None
                if not isinstance(text, str):
                    raise ValueError(f"{source}:{number}: 'text' must be a string")
            else:
                text = line
            texts.append(text.strip())
            if len(texts) == docs:
                break
    else:
        from tasks.core.config import DATA_DIR

        # the unlabelled Wikipedia sentences CLINC150 ships (CC BY 3.0, tasks/data/clinc150)
        wiki = (DATA_DIR / "all_wiki_sents.txt").read_text(encoding="utf-8").splitlines()
        pool = [t.strip() for t in wiki if t.strip()]
        texts = random.Random(seed).sample(pool, min(docs, len(pool)))
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"no general text to score in {source or 'the CLINC150 sentences'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return out


def write_icl_split(dataset_dir: Path, out: Path, k: int) -> Path:
    """The test split with each query's ``k`` nearest train examples as ``shots`` (nearest last).

    Retrieval ranks train queries by cosine similarity of MiniLM embeddings
    (:func:`tasks.core.embeddings.embed_queries`); only the train split is searched, so no test
    label leaks into a prompt.
    """
    from tasks.core.embeddings import embed_queries

    train = _read_jsonl(dataset_dir / "train.jsonl")
    test = _read_jsonl(dataset_dir / "test.jsonl")
    if not train:
        raise ValueError(f"{dataset_dir}: no train examples to retrieve in-context examples from")
    similarity = embed_queries([d["query"] for d in test]) @ embed_queries(
        [d["query"] for d in train]).T
    k = min(k, len(train))
    lines = []
    for row, doc in zip(similarity, test, strict=True):
        nearest = row.argsort()[::-1][:k][::-1]  # most similar closest to the question
        shots = [{"query": train[i]["query"], "expert": train[i]["expert"]} for i in nearest]
        lines.append(json.dumps({**doc, "shots": shots}) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines))
    return out


def write_prompts(test_file: Path, out: Path, tokenizer: Any, experts: list[str],
                  system: str | None = None, prompt_experts: list[str] | None = None) -> Path:
    """The test split with each document's ``choices`` (the dataset version's experts: what
    multiple choice scores and generations are parsed against) and, when the model's tokenizer
    has a chat template, its ``prompt`` rendered for this model as training and serving feed it:
    the system message ``system`` naming ``prompt_experts`` (default ``experts``; a champion
    trained before an expert was added is asked as it is served, over its own experts).

    lm-eval's routing tasks read both (``utils.doc_to_choice``, ``utils.doc_to_text``).
    """
    from tasks.core.prompts import render_icl_prompt, render_prompt, uses_chat_template

    chat = uses_chat_template(tokenizer)
    lines = []
    for doc in _read_jsonl(test_file):
        doc = {**doc, "choices": list(experts)}
        if chat:
            named = prompt_experts or experts
            doc["prompt"] = (
                render_icl_prompt(doc["query"], doc["shots"], named, tokenizer, system)
                if "shots" in doc else render_prompt(doc["query"], named, tokenizer, system))
        lines.append(json.dumps(doc) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines))
    return out


def answer_tokens(tokenizer: Any, experts: list[str]) -> int:
    """Tokens a generated answer may take: the longest expert name's, its delimiter and end
    token, and a margin (at least 8, the generation task's default): a workload whose experts
    are long function names must not be cut off mid-name."""
    from tasks.core.prompts import format_target

    longest = max(len(tokenizer(format_target(e), add_special_tokens=False)["input_ids"])
                  for e in experts)
    return max(8, longest + 3)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_lm_eval(config: EvaluateConfig, task_dir: Path, tasks: tuple[str, ...] | None = None,
                metrics: dict | None = None) -> dict[str, list[dict]]:
    """Run the tasks through ``lm_eval.simple_evaluate``; returns each task's samples.

    The model is loaded once. Routing prompts are tokenised with the BOS token, exactly as
    training and serving tokenise them; the forgetting check's documents without it, since lm-eval
    puts the BOS token before each rolling window itself (with both, every document would start
    by predicting a second BOS). ``metrics``, when given, receives each task's aggregated metrics
    (lm-eval's ``results``).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = tasks or (ROUTING_TASK, GEN_TASK)
    model = HFLM(pretrained=config.base_model_path, peft=config.adapter_dir, dtype="float32",
                 add_bos_token=True, batch_size=config.batch_size, device="cpu")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    samples: dict[str, list[dict]] = {}
    from tasks.core.prompts import uses_chat_template

    # a chat rendering carries the template's own special tokens, as in training
    routing_bos = not uses_chat_template(model.tokenizer)
    for group, add_bos in (([t for t in tasks if t != GENERAL_TASK], routing_bos),
                           ([t for t in tasks if t == GENERAL_TASK], False)):
        if not group:
            continue
        model.add_bos_token = add_bos
        results = lm_eval.simple_evaluate(
            model=model, tasks=group, task_manager=manager, log_samples=True,
            limit=None if group == [GENERAL_TASK] else config.limit,
            random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        if metrics is not None:
            metrics.update(results["results"])
        samples.update({task: sorted(results["samples"][task], key=lambda s: s["doc_id"])
                        for task in group})
    return samples


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


def score_generations(samples: list[dict]) -> tuple[list[str], list[str]]:
    """Gold and predicted experts from lm-eval's generation samples (``(none)``: no expert)."""
    from tasks.core.prompts import parse_expert
    from tasks.evaluation.flywheel_routing.utils import choices

    gold, predicted = [], []
    for sample in samples:
        text = sample["filtered_resps"][0]
        while isinstance(text, list):  # one response per sample, possibly nested by filters
            text = text[0] if text else ""
        gold.append(sample["doc"]["expert"])
        predicted.append(parse_expert(str(text), tuple(choices(sample["doc"]))) or NO_EXPERT)
    return gold, predicted


def measure_latency(base_model_path: str, adapter_dir: str | None, queries: list[str],
                    warmup: int, threads: int, prompts: list[str] | None = None,
                    batch_size: int = 16, experts: list[str] | None = None,
                    system: str | None = None) -> dict[str, float]:
    """Batch-1 latency of answering each query, as the agent calls the model, and throughput.

    One ``generate`` call per query with a streamer that stamps each token as it is produced:
    the first stamp after the prompt is the time to first token, the last is the total. Then the
    same prompts in batches of ``batch_size`` (after one untimed batch) give queries per second.

    Args:
        prompts: the whole prompts, when they are not the plain router prompt of each query
            (in-context examples); one per query.
    """
    from transformers.generation.streamers import BaseStreamer

    from tasks.serving.router import Router
    from tasks.training.scope_guard import ScopeGuard

    router = Router(base_model_path, adapter_dir, threads=threads, experts=experts,
                    system=system)
    guard = ScopeGuard.load(adapter_dir or base_model_path)  # a full fine-tune holds its own
    prompts = prompts or [None] * len(queries)

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
    timed = list(zip(queries, prompts, strict=True))
    for i, (query, prompt) in enumerate(timed[:warmup] + timed):
        stamps = Stamps()
        start = time.perf_counter()
        if guard is not None:  # served: the guard looks first (timed even when it passes)
            guard.out_of_scope([query])
        router.generate(query, streamer=stamps, prompt=prompt)
        end = time.perf_counter()
        if i < warmup:
            continue
        ttft.append(((stamps.times[0] if stamps.times else end) - start) * 1000)
        total.append((end - start) * 1000)

    whole = [p or router.prompt_text(q) for q, p in timed]
    batches = [whole[i:i + batch_size] for i in range(0, len(whole), batch_size)]
    router.generate_batch(batches[0])  # warm-up at this shape
    started = time.perf_counter()
    for batch in batches:
        router.generate_batch(batch)
    seconds = time.perf_counter() - started
    return {"latency_p50_ms": statistics.median(total), "latency_p95_ms": percentile(total, 0.95),
            "ttft_p50_ms": statistics.median(ttft), "ttft_p95_ms": percentile(ttft, 0.95),
            "throughput_qps": len(whole) / seconds, "throughput_batch_size": batch_size}


def evaluate(config: EvaluateConfig, note: str | None = None) -> EvaluateResult:
    """Accuracy, latency and cost of one model on the dataset's frozen test split."""
    from transformers import AutoTokenizer

    paths = get_paths(config.home)
    dataset_dir = Path(config.dataset_dir)
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    slug = config.candidate.replace(":", "_").replace("/", "_")
    work_dir = paths.runs / config.cycle_id / "eval" / slug
    started = time.perf_counter()
    icl = config.icl_examples > 0
    test_file = (write_icl_split(dataset_dir, work_dir / "test_icl.jsonl", config.icl_examples)
                 if icl else dataset_dir / "test.jsonl")
    experts, _ = manifest_experts(manifest)
    # a trained model is asked as it is served: over the label space it was trained on (a
    # champion from before an expert was added cannot name it), with its system message
    trained = recorded_label_space(config.adapter_dir)
    served_experts = trained.get("labels") or experts
    system = trained.get("system_prompt", manifest.get("system_prompt"))
    tokenizer = AutoTokenizer.from_pretrained(config.base_model_path)
    test_file = write_prompts(test_file, work_dir / "test_prompts.jsonl", tokenizer, experts,
                              system, served_experts)
    mc_task, gen_task = (ICL_TASK, ICL_GEN_TASK) if icl else (ROUTING_TASK, GEN_TASK)
    general_file = (write_general_text(work_dir / "general_text.jsonl", config.general_text_docs,
                                       config.general_text_file)
                    if config.general_text_docs else None)
    tasks = (mc_task, gen_task) + ((GENERAL_TASK,) if general_file else ())
    metrics: dict = {}
    samples = run_lm_eval(config, write_task_config(dataset_dir, work_dir / "lm_eval_task",
                                                     test_file, icl, general_file,
                                                     answer_tokens(tokenizer, experts)),
                          tasks, metrics)
    general = metrics.get(GENERAL_TASK, {})
    gold, predicted = score_generations(samples[gen_task])
    guard, guard_fallbacks = None, None
    if not icl:
        from tasks.training.scope_guard import ScopeGuard

        # beside the adapter, or in a full fine-tune's own folder (a base has none)
        guard = ScopeGuard.load(config.adapter_dir or config.base_model_path)
    if guard is not None:
        guarded = guard.apply([s["doc"]["query"] for s in samples[gen_task]], predicted)
        guard_fallbacks = sum(g != p for g, p in zip(guarded, predicted, strict=True))
        predicted = guarded
    mc_gold, mc_predicted = score_samples(samples[mc_task])
    # a champion trained before an expert was added never names it: the label space is the
    # dataset's, so its per-expert figures show the miss
    accuracy, macro_f1, per_expert, confusion = classification_report(gold, predicted, experts)
    mc_accuracy = sum(g == p for g, p in zip(mc_gold, mc_predicted, strict=True)) / max(
        1, len(mc_gold))
    docs = _read_jsonl(test_file)[: config.latency_queries]
    prompts = None
    if icl or any("prompt" in d for d in docs):
        from tasks.evaluation.flywheel_routing.utils import doc_to_text, doc_to_text_icl

        prompts = [(doc_to_text_icl if icl else doc_to_text)(d) for d in docs]
    latency = measure_latency(config.base_model_path, config.adapter_dir,
                              [d["query"] for d in docs], config.latency_warmup, config.threads,
                              prompts=prompts, batch_size=config.throughput_batch_size,
                              experts=served_experts, system=system)
    prompting = (f"in-context (k={config.icl_examples})" if icl
                 else "fine-tuned" if config.adapter_dir or config.mlflow_run_id else "zero-shot")
    result = EvaluateResult(
        candidate=config.candidate, base_model_path=config.base_model_path,
        adapter_dir=config.adapter_dir, dataset_version=manifest["version"], prompting=prompting,
        n_test=len(gold), accuracy=accuracy, macro_f1=macro_f1, per_expert=per_expert,
        confusion=confusion, mc_accuracy=mc_accuracy,
        no_expert_rate=predicted.count(NO_EXPERT) / max(1, len(predicted)),
        general_bits_per_byte=general.get("bits_per_byte,none"),
        general_text_docs=len(samples[GENERAL_TASK]) if general_file else None,
        latency_hardware=hardware("cpu"), eval_seconds=time.perf_counter() - started,
        correct=correctness(gold, predicted), price_per_device_hour=config.price_per_device_hour,
        cost_per_1k_requests=cost_per_1k_requests(latency["throughput_qps"],
                                                  config.price_per_device_hour),
        scope_guard=guard.describe() if guard else None, guard_fallbacks=guard_fallbacks,
        note=note, **latency)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = zip(samples[gen_task], gold, predicted, mc_predicted, strict=True)
    (work_dir / "predictions.jsonl").write_text("".join(
        json.dumps({"id": s["doc"].get("id"), "query": s["doc"]["query"], "gold": g,
                    "predicted": p, "mc_predicted": m}) + "\n" for s, g, p, m in rows))
    if config.track:
        result.mlflow_run_id = log_evaluation(config, result, work_dir)
    (work_dir / "evaluate_result.json").write_text(result.model_dump_json(indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    config = parse_config(EvaluateConfig, argv, "flywheel evaluate", __doc__)
    for label, path in (("--dataset-dir", Path(config.dataset_dir) / "test.jsonl"),
                        ("--adapter-dir", config.adapter_dir)):
        if path and not Path(path).exists():
            raise SystemExit(f"flywheel evaluate: {label}: {path} does not exist")
    r = evaluate(config)
    print(f"{r.candidate} ({r.prompting}): accuracy {r.accuracy:.3f} (generation, exact match), "
          f"{r.mc_accuracy:.3f} (multiple choice), macro-F1 {r.macro_f1:.3f} on {r.n_test} test "
          f"queries; latency p50 {r.latency_p50_ms:.1f} ms, p95 {r.latency_p95_ms:.1f} ms, "
          f"{r.throughput_qps:.1f} queries/s at batch {r.throughput_batch_size}, "
          f"{r.cost_per_1k_requests:.5f} per 1,000 requests ({r.latency_hardware})")
    if r.general_bits_per_byte is not None:
        print(f"forgetting check: {r.general_bits_per_byte:.3f} bits per byte on "
              f"{r.general_text_docs} general-text documents")
    return 0


class TeacherBaseline(BaseModel):
    """The model in production, judged from its own logs: graded by experts on a random sample of
    its traffic (the traffic audit), timed on the test queries it answered."""

    model: str | None
    workload_id: str | None = None
    dataset_version: str | None = None
    n_test: int = Field(description="Test queries the teacher's logs answer (its latency's n).")
    n_traffic_audit: int = Field(0, description=(
        "Traffic-audit records (a seeded random sample of its traffic, whatever the feedback) "
        "with an expert's label and a log of its answer: what its accuracy is over. All of the "
        "workload's to date, not only those in this test split."))
    accuracy: float | None = Field(None, description=(
        "Its logged routes against the experts' labels on the traffic audit (none: no such "
        "record): its accuracy on its traffic, unbiased by how records reach the experts."))
    accuracy_interval: tuple[float, float] | None = Field(None, description=(
        "Wilson 95% interval of the accuracy."))
    evidence_sources: dict[str, int] = Field(default_factory=dict, description=(
        "Who decided the traffic-audit labels (review decision sources), with counts."))
    correct: str | None = Field(None, pattern=r"^[01-]*$", description=(
        "Per line of test.jsonl: 1/0 its logged route is right/wrong on a traffic-audit record "
        "(against the test label), - otherwise: what the gate pairs a candidate with."))
    n_selected: int = Field(0, description=(
        "The other expert-decided records it answered (judge_flagged, audit, novel: chosen by "
        "negative feedback or novelty)."))
    selected_accuracy: float | None = Field(None, description=(
        "Its accuracy on those: on queries selected by negative feedback, so biased low; shown "
        "for context, never read by the gate."))
    selected_accuracy_interval: tuple[float, float] | None = Field(None, description=(
        "Wilson 95% interval of selected_accuracy."))
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    oracle_accuracy: float | None = Field(
        None, description="Against the simulator's gold labels (simulation only; the gate never "
                          "reads it).")
    note: str


def teacher_baseline(dataset_dir: str, home: str | None = None,
                     teacher_model: str | None = None,
                     workload_id: str | None = None,
                     gold_labels: str | None = None) -> TeacherBaseline:
    """Accuracy of the teacher's logged routes on the workload's traffic audit, and its logged
    latency on every test query it answered.

    Most curated labels are the teacher's own thumbs-up routes (graded on them it would score
    close to 1.0 by construction), and the other records experts see were chosen by its failure
    signals (a thumbs-down, novelty: graded on them it scores low by construction). The traffic
    audit (:func:`tasks.curation.review.draw_traffic_audit`) is a seeded random sample of its
    traffic, whatever the feedback, so only those expert decisions grade it: every one of the
    workload's to date (the test split is the students'), with their number and a Wilson 95%
    interval. Its per-query results are aligned to ``test.jsonl`` on the traffic-audit records the
    split holds, so the gate can pair it with a candidate there. The other expert decisions give a
    second figure, labelled biased low, that the gate never reads; given gold labels (the traffic
    simulator's, passed in as ``gold_labels``), its accuracy against them on every logged test
    query is given too, marked as a simulation oracle. Records the flywheel's own models served
    (:func:`tasks.curation.review.teacher_mask`) are not the teacher's; ``teacher_model`` keeps only
    that model's records.

    Args:
        dataset_dir: the curated version (``test.jsonl``, ``manifest.json``).
        home: flywheel home.
        teacher_model: the logged model that is the teacher (default: any non-flywheel model).
        workload_id: whose review store grades it (default: the version's manifest's).
        gold_labels: known right answers for logged records (Parquet: id, gold_expert), where a
            simulation has them (the demo's simulator): its oracle figure; the gate never reads
            it.
    """
    from collections import Counter

    import pandas as pd

    from tasks.curation.review import DISCARD, ReviewStore, teacher_mask
    from tasks.evaluation.gate import wilson_interval
    from tasks.ingest.store import load_store

    paths = get_paths(home)
    folder = Path(dataset_dir)
    docs = _read_jsonl(folder / "test.jsonl")
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    workload = workload_id or manifest.get("workload_id")
    test_ids = [str(d["id"]) for d in docs]
    store = load_store(str(paths.home), workload_id=workload)
    teacher = store[teacher_mask(store, teacher_model)].drop_duplicates("id").set_index("id")
    route = teacher["route"].to_dict()
    logged = teacher[teacher.index.isin(test_ids)]
    sample: dict[str, dict] = {}
    decided: dict[str, dict] = {}
    if workload:
        review = ReviewStore(home, workload)
        sample, decided = review.traffic_audit(), review.decisions()
    graded = {rid: d for rid, d in decided.items() if d["label"] != DISCARD and rid in route}
    audit = {rid: d for rid, d in graded.items() if rid in sample}
    selected = {rid: d for rid, d in graded.items() if rid not in sample}
    right = sum(route[rid] == d["label"] for rid, d in audit.items())
    right_selected = sum(route[rid] == d["label"] for rid, d in selected.items())
    correct = "".join("-" if d["id"] not in audit else "1" if route[d["id"]] == d["expert"]
                      else "0" for d in docs)
    oracle = None
    if gold_labels and Path(gold_labels).expanduser().is_file() and len(logged):
        truth = pd.read_parquet(Path(gold_labels).expanduser(), columns=["id", "gold_expert"])
        with_gold = logged.join(truth.drop_duplicates("id").set_index("id"), how="inner")
        if len(with_gold):
            oracle = float((with_gold["route"] == with_gold["gold_expert"]).mean())
    latency = logged["latency_ms"].astype(float)
    n, n_selected = len(audit), len(selected)
    sources = Counter(d.get("source") or "sme" for d in audit.values())
    selected_figure = (f"{right_selected / n_selected:.3f} on the {n_selected}"
                       if n_selected else "nothing yet on the")
    return TeacherBaseline(
        model=str(logged["model"].mode().iloc[0]) if len(logged) else None, workload_id=workload,
        dataset_version=manifest.get("version"), n_test=len(logged), n_traffic_audit=n,
        accuracy=right / n if n else None,
        accuracy_interval=wilson_interval(right, n) if n else None,
        evidence_sources=dict(sorted(sources.items())), correct=correct,
        n_selected=n_selected,
        selected_accuracy=right_selected / n_selected if n_selected else None,
        selected_accuracy_interval=(wilson_interval(right_selected, n_selected)
                                    if n_selected else None),
        latency_p50_ms=float(latency.median()) if len(logged) else None,
        latency_p95_ms=float(latency.quantile(0.95)) if len(logged) else None,
        oracle_accuracy=oracle,
        note=f"accuracy over the {n} traffic-audit records experts labelled: a seeded random "
             "sample of its own traffic, whatever the feedback, so an unbiased estimate "
             f"({correct.count('0') + correct.count('1')} of them in this test split, for "
             f"pairing); on queries selected by negative feedback (biased low, never read by the "
             f"gate): {selected_figure} judge-flagged, audited and novel records experts decided; "
             "its own thumbs-up answers never grade it; latency from its logs on its own "
             "hardware; in simulation, the oracle figure is against gold labels")


def evaluate_candidate(trained: dict, dataset_dir: str, workload_id: str, cycle_id: str,
                       latency_queries: int = LATENCY_QUERIES, home: str | None = None,
                       limit: int | None = None, **settings: Any) -> dict:
    """A trained candidate evaluated as its family says (:func:`tasks.families.evaluate_candidate`:
    the same result shape whatever the family), beside its base model."""
    from tasks.families import evaluate_candidate as by_family

    return by_family(trained, dataset_dir, workload_id, cycle_id, latency_queries=latency_queries,
                     home=home, limit=limit, **settings)


def evaluate_causal_candidate(trained: dict, dataset_dir: str, workload_id: str, cycle_id: str,
                              latency_queries: int = LATENCY_QUERIES, home: str | None = None,
                              limit: int | None = None, icl_examples: int = 0,
                              price_per_device_hour: float = 1.0, general_text_docs: int = 0,
                              general_text_file: str | None = None) -> dict:
    """Evaluate a fine-tuned causal LM and, beside it, its base model zero-shot and in context.

    Returns ``{"candidate", "base_model", "family", "mlflow_run_id", "dataset_version",
    "finetuned", "base", "base_icl", "forgetting_bpb", "forgetting_applies"}`` (EvaluateResults
    as JSON-ready dicts, for XCom); ``base_icl`` is None when ``icl_examples`` is 0. With
    ``general_text_docs``, the candidate and its base are scored on the same general text and
    ``forgetting_bpb`` is the candidate's bits per byte minus the base's (positive: it forgot);
    otherwise None.
    """
    common = dict(base_model_path=trained["base_model_path"], dataset_dir=dataset_dir,
                  workload_id=workload_id, cycle_id=cycle_id, latency_queries=latency_queries,
                  home=home, limit=limit, price_per_device_hour=price_per_device_hour)
    # full SFT writes a whole model (in adapter_dir), evaluated as a base model of its own
    weights = ({"base_model_path": trained["adapter_dir"], "adapter_dir": None}
               if trained.get("method") == "full" else {"adapter_dir": trained["adapter_dir"]})
    general = dict(general_text_docs=general_text_docs, general_text_file=general_text_file)
    tuned = evaluate(EvaluateConfig(candidate=trained["candidate"],
                                    mlflow_run_id=trained.get("mlflow_run_id"),
                                    **{**common, **weights, **general}))
    base = evaluate(EvaluateConfig(candidate=f"base:{trained['base_model']}",
                                   **common, **general))
    forgetting = None
    if tuned.general_bits_per_byte is not None and base.general_bits_per_byte is not None:
        forgetting = tuned.general_bits_per_byte - base.general_bits_per_byte
    base_icl = None
    if icl_examples:
        base_icl = evaluate(EvaluateConfig(candidate=f"base:{trained['base_model']}:icl",
                                           icl_examples=icl_examples, **common))
    return {"candidate": trained["candidate"], "base_model": trained["base_model"],
            "family": "causal_lm",
            "mlflow_run_id": tuned.mlflow_run_id, "dataset_version": tuned.dataset_version,
            "finetuned": tuned.model_dump(mode="json"), "base": base.model_dump(mode="json"),
            "base_icl": base_icl.model_dump(mode="json") if base_icl else None,
            "forgetting_bpb": forgetting, "forgetting_applies": True}


def evaluate_champion(dataset_dir: str, workload_id: str, cycle_id: str,
                      latency_queries: int = LATENCY_QUERIES, home: str | None = None,
                      limit: int | None = None, price_per_device_hour: float = 1.0) -> dict:
    """The current champion (its registered version: base + adapter from the registry),
    re-evaluated on this cycle's test set under the same protocol as the candidates.

    Returns ``{"version", "candidate", "evaluation"}``; all None before the first promotion.
    """
    from tasks.families import evaluate_weights
    from tasks.registry.register import champion_version, download_version

    version = champion_version(workload_id, home)
    if version is None:
        return {"version": None, "candidate": None, "evaluation": None}
    base_path, adapter = download_version(workload_id, str(version.version), home)
    result = evaluate_weights(version.tags.get("family"), EvaluateConfig(
        candidate=f"champion:v{version.version}", base_model_path=base_path, adapter_dir=adapter,
        dataset_dir=dataset_dir, workload_id=workload_id, cycle_id=cycle_id,
        latency_queries=latency_queries, home=home, limit=limit,
        price_per_device_hour=price_per_device_hour))
    return {"version": str(version.version), "candidate": version.tags.get("candidate"),
            "family": version.tags.get("family"), "evaluation": result.model_dump(mode="json")}
