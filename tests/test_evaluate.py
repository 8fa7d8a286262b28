from __future__ import annotations

import json

import pytest
import yaml

from tasks.evaluate import (
    NO_EXPERT,
    EvaluateConfig,
    _percentile,
    classification_report,
    cost_per_1k_requests,
    evaluate,
    score_generations,
    write_general_text,
    write_icl_split,
    write_task_config,
)
from tasks.prompts import format_prompt, format_target, parse_expert
from tests.test_finetune import write_dataset


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
    assert _percentile([1, 2, 3, 4], 0.5) == pytest.approx(2.5)
    assert _percentile([10.0] * 7, 0.95) == 10.0
    assert _percentile(list(range(101)), 0.95) == pytest.approx(95)


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
    samples = [{"doc": {"query": "q", "expert": "banking"}, "filtered_resps": [" banking"]},
               {"doc": {"query": "q", "expert": "travel"}, "filtered_resps": [[" meta\n"]]},
               {"doc": {"query": "q", "expert": "travel"}, "filtered_resps": ["no idea"]}]
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
