"""A fine-tuned real causal router beats its base on queries it never saw.

SmolLM2-135M-Instruct (the packaged real model, tasks/training/pretrained.py) is fine-tuned through
the cycle's own path (:func:`tasks.training.finetune.finetune`: the catalog's ``smollm2-lora``
recipe, the Trainer worker under torchrun, the chat prompt naming the experts) on a few CLINC150
train queries per expert, then both it and its base route CLINC150 *test* queries through the served
:class:`tasks.serving.router.Router` (greedy generation, the fallback when no expert is named). A
falling training loss alone would not show that the router learnt anything that carries to new
queries.

Slow (minutes: a 135M model on two CPU cores), so the steps are capped; the figures it prints
are from this capped run, not the recipe's full one (``make bench-quality``).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from tasks.core.prompts import parse_expert
from tasks.demo.clinc150 import EXPERTS, FALLBACK_EXPERT, examples

pytestmark = pytest.mark.slow

PER_EXPERT_TRAIN, PER_EXPERT_TEST = 12, 6


def stratified(split: str, per_expert: int, seed: int) -> list:
    by_expert = defaultdict(list)
    for e in examples():
        if e.split == split:
            by_expert[e.expert].append(e)
    rng = random.Random(seed)
    chosen = []
    for expert in EXPERTS:
        chosen += rng.sample(by_expert[expert], per_expert)
    rng.shuffle(chosen)
    return chosen


def test_fine_tuned_smollm2_beats_its_base_on_held_out_queries(tmp_path):
    from tasks.serving.router import Router
    from tasks.training.catalog import load_catalog
    from tasks.training.finetune import FinetuneConfig, finetune

    train = stratified("train", PER_EXPERT_TRAIN, 0)
    test = stratified("test", PER_EXPERT_TEST, 1)
    assert not {e.query for e in train} & {e.query for e in test}
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for name, rows in (("train", train), ("test", test)):
        (dataset / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": f"{name}-{i}", "query": e.query, "expert": e.expert}) + "\n"
            for i, e in enumerate(rows)))
    (dataset / "manifest.json").write_text(json.dumps({
        "version": "vheld", "digest": "0" * 64, "workload_id": "router",
        "experts": list(EXPERTS), "fallback_expert": FALLBACK_EXPERT}))

    spec = load_catalog()["smollm2-lora"]
    spec.scope_guard_budget = 0.0  # what the weights learnt, without the guard's help
    spec.hyperparameters.epochs, spec.hyperparameters.max_steps = 3, 40
    spec.hyperparameters.learning_rate = 1e-3  # a capped run: fewer steps, a larger stride
    spec.hyperparameters.checkpoint_every = 0
    trained = finetune(FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=str(dataset),
                                      home=str(tmp_path), cycle_id="held", track=False))
    assert trained.steps == 40 and not (Path(trained.adapter_dir) / "scope_guard.npz").exists()

    def accuracy(router: Router) -> float:
        prompts = [router.prompt_text(e.query) for e in test]
        routed = []
        for i in range(0, len(prompts), 16):
            routed += [parse_expert(text, router.experts) or FALLBACK_EXPERT
                       for text in router.generate_batch(prompts[i:i + 16])]
        return sum(r == e.expert for r, e in zip(routed, test, strict=True)) / len(test)

    base = accuracy(Router(trained.base_model_path, experts=EXPERTS))
    tuned = accuracy(Router(trained.base_model_path, trained.adapter_dir))
    print(f"held-out CLINC150 test queries ({len(test)}): base {base:.3f}, fine-tuned "
          f"{tuned:.3f} after {trained.steps} steps on {len(train)} train queries")
    assert tuned >= base + 0.3, (base, tuned)
    assert tuned >= 0.5, tuned
