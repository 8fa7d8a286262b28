"""Model families: every model that makes a workload's decision, behind one small protocol.

As lm-eval's ``LM`` class is to its evaluator and MLflow's ``PythonModel`` to serving, a
:class:`Decider` is to the stages after training: it decides a batch of queries and says what it
is. Evaluation, the head-to-head timing, the gate, the registry and the served pyfunc take any of
them and never ask which family they hold; they look the family's name up here, once, and call
what it names. Only training (:mod:`tasks.training`) builds each family its own way.

A family is one entry of :data:`FAMILIES`:

* ``decider``: the class that loads its weights as served, built as
  ``Class(base_model_path, adapter_dir, threads=, experts=, fallback=, system=)``;
* ``evaluate``: one model's weights on a dataset's frozen test split
  (``function(EvaluateConfig, note=None) -> EvaluateResult``);
* ``candidate``: a trained candidate, beside its base model's rows
  (``function(trained, dataset_dir, workload_id, cycle_id, latency_queries, home, limit,
  **settings) -> dict``);
* ``kind``: how it decides, in words (a registry tag).

References are ``"module:attribute"`` strings, imported when used: a family's module may import
evaluation and serving code without this registry importing it back.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Decider(Protocol):
    """A loaded model that makes the workload's decision."""

    def route_batch(self, queries: list[str]) -> list[str]:
        """The decision for each query, in order (batch 1 is a list of one)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What it is: ``name``, ``family``, ``parameters`` and ``device``."""
        ...


@dataclass(frozen=True)
class Family:
    """One model family: where its serving class and its evaluation live."""

    name: str
    decider: str
    evaluate: str
    candidate: str
    kind: str


#: Every family a candidate may be; a new one is a module and one line here.
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("causal_lm", decider="tasks.serving.router:Router",
           evaluate="tasks.evaluation.evaluate:evaluate",
           candidate="tasks.evaluation.evaluate:evaluate_causal_candidate",
           kind="generative: completes the prompt with the decision"),
    Family("encoder", decider="tasks.serving.router:EncoderRouter",
           evaluate="tasks.evaluation.encoder_router:evaluate_encoder",
           candidate="tasks.evaluation.encoder_router:evaluate_encoder_candidate",
           kind="classifier: a fine-tuned encoder with one output per label"),
    Family("linear_probe", decider="tasks.families.linear_probe:LinearProbeRouter",
           evaluate="tasks.families.linear_probe:evaluate_probe",
           candidate="tasks.families.linear_probe:evaluate_probe_candidate",
           kind="classifier: logistic regression on frozen sentence embeddings"),
)}


class UnknownFamily(ValueError):
    """A family name no entry of :data:`FAMILIES` has."""


def get_family(name: str | None) -> Family:
    """The family ``name`` (default ``causal_lm``, what records from before families were)."""
    family = FAMILIES.get(name or "causal_lm")
    if family is None:
        raise UnknownFamily(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return family


def _resolve(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def open_decider(family: str | None, base_model_path: str, adapter_dir: str | None = None,
                 threads: int = 2, experts: list[str] | None = None,
                 fallback: str | None = None, system: str | None = None) -> Decider:
    """The model of ``family`` over these weights, loaded as it is served (its scope guard,
    where one was saved beside the weights, included)."""
    decider: Decider = _resolve(get_family(family).decider)(
        base_model_path, adapter_dir, threads=threads, experts=experts, fallback=fallback,
        system=system)
    return decider


def evaluate_weights(family: str | None, config: Any, note: str | None = None) -> Any:
    """One model of ``family`` on the test split of ``config.dataset_dir`` (an EvaluateResult)."""
    return _resolve(get_family(family).evaluate)(config, note=note)


def evaluate_candidate(trained: dict[str, Any], dataset_dir: str, workload_id: str, cycle_id: str,
                       latency_queries: int | None = None, home: str | None = None,
                       limit: int | None = None, **settings: Any) -> dict[str, Any]:
    """A trained candidate (the finetune stage's result) evaluated as its family says, beside
    its base model: ``{"candidate", "base_model", "family", "mlflow_run_id", "dataset_version",
    "finetuned", "base", "base_icl", "forgetting_bpb", "forgetting_applies"}``."""
    run = _resolve(get_family(trained.get("family")).candidate)
    if latency_queries is not None:  # else the family's default (EvaluateConfig's)
        settings["latency_queries"] = latency_queries
    result: dict[str, Any] = run(trained, dataset_dir, workload_id, cycle_id, home=home,
                                 limit=limit, **settings)
    return result
