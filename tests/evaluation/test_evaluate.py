from __future__ import annotations

import json

import pytest
import yaml

from tasks.core.prompts import format_prompt, format_target, parse_expert
from tasks.demo.clinc150 import EXPERTS
from tasks.evaluation.evaluate import (
    NO_EXPERT,
    EvaluateConfig,
    classification_report,
    correctness,
    cost_per_1k_requests,
    evaluate,
    hardware,
    percentile,
    score_generations,
    teacher_baseline,
    write_general_text,
    write_icl_split,
    write_task_config,
)
from tests.training.test_finetune import write_dataset


def test_classification_report_counts_per_expert():
    gold = ["banking", "banking", "travel", "travel", "meta"]
    pred = ["banking", "travel", "travel", "travel", "banking"]
    labels = ["banking", "travel", "meta", "home"]
    accuracy, macro_f1, per_expert, confusion = classification_report(gold, pred, labels)
    assert accuracy == pytest.approx(3 / 5)
    assert per_expert["banking"].precision == pytest.approx(0.5)
    assert per_expert["travel"].recall == pytest.approx(1.0)
    assert per_expert["meta"].f1 == 0.0
    assert "home" not in per_expert  # absent from gold: not averaged into macro-F1
    assert macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert confusion["banking"] == {"banking": 1, "travel": 1}
    assert confusion["meta"] == {"banking": 1}


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 0.5) == pytest.approx(2.5)
    assert percentile([10.0] * 7, 0.95) == 10.0
    assert percentile(list(range(101)), 0.95) == pytest.approx(95)


def test_prompt_round_trip():
    assert format_prompt("  where is   my card ") .endswith("Query: where is my card\nExpert:")
    assert format_target("banking") == " banking"
    assert parse_expert(" banking</s>", ("banking",)) is None
    assert parse_expert(" banking\nmore", ("banking",)) == "banking"
    assert parse_expert("", ("banking",)) is None


def test_run_task_yaml_points_at_this_test_split(tmp_path):
    dataset = write_dataset(tmp_path / "d", n_train=4, n_test=3)
    folder = write_task_config(dataset, tmp_path / "task")
    config = yaml.safe_load((folder / "flywheel_routing.yaml").read_text())
    assert config["include"].endswith("evaluation/flywheel_routing/flywheel_routing.yaml")
    assert config["dataset_kwargs"]["data_files"]["test"] == str(dataset / "test.jsonl")
    gen = yaml.safe_load((folder / "flywheel_routing_gen.yaml").read_text())
    assert gen["task"] == "flywheel_routing_gen"
    icl = write_task_config(dataset, tmp_path / "icl", tmp_path / "x.jsonl", icl=True)
    assert sorted(p.name for p in icl.iterdir()) == ["flywheel_routing_icl.yaml",
                                                     "flywheel_routing_icl_gen.yaml"]


def test_generations_are_scored_by_the_expert_named_first():
    experts = list(EXPERTS)  # each document carries its dataset version's experts
    samples = [{"doc": {"query": "q", "expert": "banking", "choices": experts},
                "filtered_resps": [" banking"]},
               {"doc": {"query": "q", "expert": "travel", "choices": experts},
                "filtered_resps": [[" meta\n"]]},
               {"doc": {"query": "q", "expert": "travel", "choices": experts},
                "filtered_resps": ["no idea"]}]
    gold, predicted = score_generations(samples)
    assert gold == ["banking", "travel", "travel"]
    assert predicted == ["banking", "meta", NO_EXPERT]
    accuracy, _, per_expert, confusion = classification_report(gold, predicted,
                                                               ["banking", "travel", "meta"])
    assert accuracy == pytest.approx(1 / 3)
    assert confusion["travel"] == {"meta": 1, NO_EXPERT: 1}  # no-expert answers stay visible
    assert per_expert["travel"].recall == 0.0


def test_cost_per_1k_requests_follows_throughput_and_price():
    assert cost_per_1k_requests(10.0, 3.6) == pytest.approx(0.1)  # 100 s of a 3.6/h device
    assert cost_per_1k_requests(20.0, 3.6) == pytest.approx(0.05)


@pytest.mark.slow  # loads the MiniLM encoder
def test_icl_split_retrieves_nearest_train_examples_only(tmp_path):
    dataset = tmp_path / "d"
    dataset.mkdir()
    train = [{"id": "t1", "query": "transfer money to my savings account", "expert": "banking"},
             {"id": "t2", "query": "book a flight to rome", "expert": "travel"},
             {"id": "t3", "query": "what is the weather like", "expert": "utility"}]
    test = [{"id": "e1", "query": "move money into savings", "expert": "banking"},
            {"id": "e2", "query": "flights to madrid please", "expert": "travel"}]
    for name, rows in (("train", train), ("test", test)):
        (dataset / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = write_icl_split(dataset, tmp_path / "icl.jsonl", k=2)
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["id"] for d in docs] == ["e1", "e2"]
    assert all(len(d["shots"]) == 2 for d in docs)
    assert docs[0]["shots"][-1]["expert"] == "banking"  # the nearest sits next to the question
    assert docs[1]["shots"][-1]["expert"] == "travel"
    train_queries = {r["query"] for r in train}
    assert all(s["query"] in train_queries for d in docs for s in d["shots"])
    from tasks.evaluation.flywheel_routing.utils import format_icl_prompt

    prompt = format_icl_prompt(docs[0]["query"], docs[0]["shots"])
    assert prompt.endswith(format_prompt("move money into savings"))
    assert prompt.count("Expert:") == 3


@pytest.mark.slow
def test_lm_eval_scores_the_base_model(tmp_path, xs_base_model):
    dataset = write_dataset(tmp_path / "d", n_train=4, n_test=22)
    result = evaluate(EvaluateConfig(candidate="base:xs", base_model_path=str(xs_base_model),
                                     dataset_dir=str(dataset), home=str(tmp_path),
                                     latency_queries=3, latency_warmup=1))
    assert result.n_test == 22
    assert 0.0 <= result.accuracy <= 1.0
    assert sum(sum(row.values()) for row in result.confusion.values()) == 22
    assert 0 < result.ttft_p50_ms <= result.latency_p50_ms <= result.latency_p95_ms
    assert 0.0 <= result.mc_accuracy <= 1.0 and 0.0 <= result.no_expert_rate <= 1.0
    assert result.throughput_qps > 0 and result.throughput_batch_size == 16
    assert result.cost_per_1k_requests == pytest.approx(
        cost_per_1k_requests(result.throughput_qps, 1.0))
    assert result.prompting == "zero-shot"
    predictions = (tmp_path / "runs" / "manual" / "eval" / "base_xs" / "predictions.jsonl")
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 22 and {"gold", "predicted", "mc_predicted"} <= set(rows[0])
    # accuracy is the served (generated) prediction's, mc_accuracy the log-likelihood one's
    assert result.accuracy == pytest.approx(sum(r["gold"] == r["predicted"] for r in rows) / 22)
    assert result.mc_accuracy == pytest.approx(
        sum(r["gold"] == r["mc_predicted"] for r in rows) / 22)
    # the gate's per-query vector: one character per test query, in test.jsonl's order
    assert result.correct == "".join("1" if r["gold"] == r["predicted"] else "0" for r in rows)


@pytest.mark.slow
def test_in_context_baseline_runs_through_lm_eval(tmp_path, xs_base_model):
    dataset = write_dataset(tmp_path / "d", n_train=12, n_test=6)
    result = evaluate(EvaluateConfig(candidate="base:xs:icl", base_model_path=str(xs_base_model),
                                     dataset_dir=str(dataset), home=str(tmp_path), icl_examples=2,
                                     latency_queries=2, latency_warmup=0, track=False))
    assert result.prompting == "in-context (k=2)" and result.n_test == 6
    assert result.latency_p95_ms > 0 and result.throughput_qps > 0


def test_general_text_comes_from_a_file_or_the_shipped_sentences(tmp_path):
    plain = tmp_path / "general.txt"
    plain.write_text("first document\n\nsecond document\nthird\n")
    out = write_general_text(tmp_path / "a.jsonl", 2, str(plain))
    assert [json.loads(x)["text"] for x in out.read_text().splitlines()] == [
        "first document", "second document"]
    shipped = write_general_text(tmp_path / "b.jsonl", 5)
    again = write_general_text(tmp_path / "c.jsonl", 5)
    assert shipped.read_text() == again.read_text() and len(shipped.read_text().splitlines()) == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: expected a JSON object with a 'text'"):
        write_general_text(tmp_path / "d.jsonl", 5, str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        write_general_text(tmp_path / "e.jsonl", 5, str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="no general text"):
        write_general_text(tmp_path / "f.jsonl", 5, str(tmp_path / "empty.txt"))


@pytest.mark.slow
def test_forgetting_check_scores_general_text_in_bits_per_byte(tmp_path, xs_base_model):
    """lm-eval's rolling log-likelihood, checked against the same sum done by hand."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["The river flows to the sea.", "Paris is the capital of France.",
             "A bank holds money for its customers."]
    source = tmp_path / "general.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    dataset = write_dataset(tmp_path / "d", n_train=4, n_test=4)
    result = evaluate(EvaluateConfig(candidate="base:xs", base_model_path=str(xs_base_model),
                                     dataset_dir=str(dataset), home=str(tmp_path),
                                     general_text_docs=10, general_text_file=str(source),
                                     latency_queries=1, latency_warmup=0, track=False))
    assert result.general_text_docs == 3

    tokenizer = AutoTokenizer.from_pretrained(xs_base_model)
    model = AutoModelForCausalLM.from_pretrained(xs_base_model, dtype=torch.float32).eval()
    nll = 0.0
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False).input_ids
            logits = model(torch.tensor([ids])).logits[0, :-1]
            nll -= logits.log_softmax(-1)[torch.arange(len(ids) - 1),
                                          torch.tensor(ids[1:])].sum().item()
    expected = nll / sum(len(t.encode()) for t in texts) / math.log(2)
    assert result.general_bits_per_byte == pytest.approx(expected, rel=1e-3)


def test_correctness_is_one_character_per_query_in_order():
    assert correctness(["banking", "travel", "meta"], ["banking", NO_EXPERT, "meta"]) == "101"
    assert correctness([], []) == ""


def test_hardware_names_the_device_the_model_ran_on(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    assert hardware().startswith("cpu:")  # a GPU in the machine, the model on the CPU
    assert hardware("cpu") == hardware()
    assert hardware("cuda:0") == "cuda:0:Fake GPU"


def test_teacher_is_graded_on_the_traffic_audit_only(tmp_path, monkeypatch):
    """Graded on its own thumbs-up labels the teacher scores 1.0, on the records experts saw
    because of negative feedback 0.0; only the traffic audit, a random sample of its traffic,
    grades it: every one of the workload's to date, in the test split or not."""
    import pandas as pd

    from tasks.core.config import get_paths
    from tasks.curation.review import DISCARD, ReviewStore, make_decision
    from tasks.curation.review import SIMULATED_SOURCE as SIM
    from tasks.evaluation.gate import teacher_reference, wilson_interval

    def doc(rid: str, expert: str, source: str) -> dict:
        return {"id": rid, "query": f"query {rid}", "expert": expert, "label_source": source}

    docs = ([doc(f"up{i}", "banking", "feedback") for i in range(6)]  # its own thumbs-up
            + [doc(f"ta{i}", "travel", "sme") for i in range(1, 5)]  # traffic audit, in test
            + [doc(f"flag{i}", "meta", "sme") for i in range(1, 5)]  # flagged, corrected
            + [doc("student", "home", "sme")])  # a flywheel model's answer, audited
    dataset = tmp_path / "datasets" / "router" / "v1"
    dataset.mkdir(parents=True)
    (dataset / "test.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (dataset / "manifest.json").write_text(json.dumps({"version": "v1", "workload_id": "router"}))
    # its logged routes: right on the traffic audit but ta2 and flagged-ta, wrong on every
    # record the judge flagged
    routes = {**{f"up{i}": "banking" for i in range(6)},
              **{f"ta{i}": "travel" for i in range(1, 9)}, "ta2": "banking",
              "ta9": "travel", "ta10": "travel", "flagged-ta": "banking",
              **{f"flag{i}": "banking" for i in range(1, 7)}}
    rows = [{"id": r, "route": e, "latency_ms": 1000.0 + i, "model": "teacher-70b",
             "workload_id": "router"} for i, (r, e) in enumerate(routes.items())]
    rows += [{"id": "student", "route": "home", "latency_ms": 5.0, "model": "flywheel-router/v2",
              "workload_id": "router"},
             {"id": "elsewhere", "route": "home", "latency_ms": 9.0, "model": "teacher-70b",
              "workload_id": "other"}]
    store = pd.DataFrame(rows)
    monkeypatch.setattr("tasks.ingest.store.load_store",
                        lambda home=None, workload_id=None, *a, **k:
                        store if workload_id is None else store[store["workload_id"]
                                                                == workload_id])
    review = ReviewStore(str(tmp_path), "router")
    # the sample: ta1-ta10 (ta5-ta8 never reached the test split), a record already flagged
    # when it was drawn, and a student's record (never the teacher's)
    sampled = [f"ta{i}" for i in range(1, 11)] + ["flagged-ta", "student"]
    review.append("traffic_audit", [{"record_id": r, "window": "w", "seed": 0} for r in sampled])
    review.append("decisions",
                  [make_decision(f"ta{i}", "travel", "ann", "sme") for i in range(1, 5)]
                  + [make_decision(f"ta{i}", "travel", SIM, SIM) for i in range(5, 9)]
                  + [make_decision("ta9", DISCARD, "ann", "sme"),  # discarded: not graded
                     make_decision("flagged-ta", "travel", "ann", "sme"),
                     make_decision("student", "home", "ann", "sme")]
                  # ta10: drawn, not answered yet
                  + [make_decision(f"flag{i}", "meta", "ann", "sme") for i in range(1, 7)])
    ReviewStore(str(tmp_path), "other").append("traffic_audit", [{"record_id": "elsewhere"}])
    ReviewStore(str(tmp_path), "other").append("decisions", [
        make_decision("elsewhere", "travel", "bob", "sme")])  # another workload's: not read
    truth = get_paths(str(tmp_path)).simulator
    truth.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": list(routes), "gold_expert": ["banking"] * len(routes)}).to_parquet(
        truth / "truth-router.parquet")

    assert teacher_baseline(str(dataset), home=str(tmp_path)).oracle_accuracy is None  # not given
    result = teacher_baseline(str(dataset), home=str(tmp_path),
                              gold_labels=str(truth / "truth-router.parquet"))
    assert result.workload_id == "router" and result.model == "teacher-70b"
    assert result.n_test == 14  # up0-5, ta1-4, flag1-4: the test queries its logs answer
    # ta1-ta8 and flagged-ta: 7 of 9 right (ta2 and flagged-ta wrong)
    assert result.n_traffic_audit == 9
    assert result.accuracy == pytest.approx(7 / 9)
    assert result.accuracy_interval == pytest.approx(wilson_interval(7, 9))
    assert result.evidence_sources == {SIM: 4, "sme": 5}
    # paired with a candidate on the traffic-audit records of the split only
    assert result.correct == "------" + "1011" + "----" + "-"
    # the records experts saw because of negative feedback: a second figure, biased low
    assert (result.n_selected, result.selected_accuracy) == (6, 0.0)
    assert result.selected_accuracy_interval == pytest.approx(wilson_interval(0, 6))
    assert "random sample of its own traffic" in result.note and "biased low" in result.note
    assert result.latency_p95_ms > 1000  # the student's 5 ms answer is not the teacher's
    assert result.oracle_accuracy == pytest.approx(11 / 14)  # shown beside it, never graded on
    # the gate reads the traffic audit, never the biased figure
    ref = teacher_reference(result.model_dump(mode="json"))
    assert (ref.accuracy, ref.n) == (pytest.approx(7 / 9), 9)
    only = teacher_baseline(str(dataset), home=str(tmp_path), teacher_model="teacher-70b")
    assert only.n_traffic_audit == 9


def test_documents_carry_their_label_space(tmp_path, xs_base_model):
    """lm-eval's choices are the dataset version's experts, written into every document; a
    document without them is an error, never the demo's experts."""
    from tasks.evaluation.evaluate import write_prompts
    from tasks.evaluation.flywheel_routing.utils import choices, doc_to_target

    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"id": "e1", "query": "reset my vpn", "expert": "it"}) + "\n")
    with pytest.raises(ValueError, match="'e1' has no 'choices'"):
        choices(json.loads(test.read_text()))
    from transformers import AutoTokenizer

    written = write_prompts(test, tmp_path / "out.jsonl",
                            AutoTokenizer.from_pretrained(xs_base_model), ["hr", "it"])
    doc = json.loads(written.read_text())
    assert doc["choices"] == ["hr", "it"] and doc_to_target(doc) == 1
