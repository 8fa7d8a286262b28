"""Latency, one protocol for every family: one model alone (:func:`measure`), and the models the
gate compares timed in the same window, interleaved (:func:`head_to_head`).

Each candidate's figures from its own evaluation were measured minutes apart from the champion's,
on a machine other work shares: a champion re-measured while a neighbour job held the cores looks
slow, and an equal challenger then looks "cheaper". So before the gate, every candidate and the
champion are loaded as they are served (:func:`tasks.families.open_decider`: tokenisation and the
scope guard inside the clock) and timed query by query, batch 1, in turn: for each query every
model answers once, in an order that rotates from query to query, so a burst of load falls on all
of them alike. Each query then gives a paired ratio, the candidate's time over the champion's,
measured milliseconds apart; a candidate is faster than the champion only when the whole 95%
interval (bootstrap over the queries) of the median of those ratios lies below ``1 - min_saving``;
otherwise the difference is within the measurement's own spread. The median of paired ratios, not
a ratio of p95s: on 40 queries a p95 is the second-slowest query, which on a shared machine is a
scheduling hiccup as often as the model (both are reported).

The cycle runs it as the task ``time_head_to_head``, between the evaluations and the gate
(:func:`tasks.evaluation.gate.gate_cycle` reads its result).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tasks.evaluation.scoring import LATENCY_QUERIES

#: seed of the bootstrap resampling: the same timings give the same interval
BOOTSTRAP_SEED = 0


class Timing(BaseModel):
    """One model's batch-1 latency over the head-to-head queries."""

    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    n: int = Field(ge=1, description="Queries timed")


class Ratio(BaseModel):
    """How a candidate's time compares with the reference's on the same queries: the median of
    the per-query ratios (candidate / reference), with its 95% interval."""

    ratio: float = Field(ge=0, description="median over the queries of candidate / reference")
    low: float = Field(ge=0)
    high: float = Field(ge=0)

    def summary(self) -> str:
        return (f"median paired time ratio {self.ratio:.2f} [{self.low:.2f}, {self.high:.2f}] "
                "(95%)")


class HeadToHead(BaseModel):
    """The models timed together and each candidate against the reference."""

    reference: str | None = Field(description="The model the ratios are against (the champion)")
    queries: int = Field(ge=0, description="Queries each model answered, interleaved")
    timings: dict[str, Timing] = Field(description="model -> its latency in this window")
    versus: dict[str, Ratio] = Field(default_factory=dict,
                                     description="candidate -> its time against the "
                                                 "reference's")


def _p(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def time_interleaved(models: dict[str, Callable[[str], Any]], queries: Sequence[str],
                     warmup: int = 2) -> dict[str, list[float]]:
    """Milliseconds each model takes to answer each query, batch 1, the models interleaved.

    Every model first answers ``warmup`` queries untimed. Then for query ``i`` each model
    answers it once, the order rotated by ``i``, so no model is always first (or always just
    after another's caches were filled).
    """
    names = list(models)
    for query in list(queries)[:warmup]:
        for name in names:
            models[name](query)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, query in enumerate(queries):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            models[name](query)
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def paired_ratio(candidate: Sequence[float], reference: Sequence[float], resamples: int = 2000,
                 alpha: float = 0.05) -> Ratio:
    """The median of the per-query time ratios of two models timed on the same queries, with a
    bootstrap interval (queries resampled)."""
    import numpy as np

    a, b = np.asarray(candidate, dtype=float), np.asarray(reference, dtype=float)
    if len(a) != len(b) or not len(a):
        raise ValueError("the two models must be timed on the same, non-empty queries")
    ratios = a / np.maximum(b, 1e-9)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    medians = np.median(ratios[rng.integers(0, len(ratios), size=(resamples, len(ratios)))],
                        axis=1)
    low, high = np.percentile(medians, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Ratio(ratio=float(np.median(ratios)), low=float(low), high=float(high))


def compare(models: dict[str, Callable[[str], Any]], queries: Sequence[str],
            reference: str | None, warmup: int = 2) -> HeadToHead:
    """Time ``models`` interleaved on ``queries``; each against ``reference`` (one of them)."""
    times = time_interleaved(models, queries, warmup)
    timings = {name: Timing(p50_ms=_p(t, 50), p95_ms=_p(t, 95), n=len(t))
               for name, t in times.items() if t}
    versus = {name: paired_ratio(t, times[reference]) for name, t in times.items()
              if reference is not None and name != reference and t}
    return HeadToHead(reference=reference, queries=len(queries), timings=timings, versus=versus)


def measure(decider: Any, queries: Sequence[str], warmup: int = 5, batch_size: int = 16,
            price_per_device_hour: float | None = None) -> dict[str, float | int | None]:
    """The one latency protocol, for a model of any family, as the agent calls it:
    ``route_batch([query])`` per query after ``warmup`` untimed ones (tokenisation, the scope
    guard and the decision all inside the clock), batch-1 p50/p95; then the same queries in
    batches of ``batch_size`` after one untimed batch, for the throughput and the cost per 1,000
    requests at ``price_per_device_hour``.

    Returns the fields of :class:`tasks.evaluation.scoring.EvaluateResult` they fill (a model
    that answers in one step has no first token before its answer: ``ttft`` is its whole time).
    """
    from tasks.evaluation.scoring import cost_per_1k_requests

    queries = list(queries)
    if not queries:
        raise ValueError("no queries to time")
    times = time_interleaved({"model": lambda q: decider.route_batch([q])}, queries,
                             warmup)["model"]
    batches = [queries[i:i + batch_size] for i in range(0, len(queries), batch_size)]
    decider.route_batch(batches[0])  # warm-up at this shape
    started = time.perf_counter()
    for batch in batches:
        decider.route_batch(batch)
    throughput = len(queries) / max(time.perf_counter() - started, 1e-9)
    p50, p95 = _p(times, 50), _p(times, 95)
    return {"latency_p50_ms": p50, "latency_p95_ms": p95, "ttft_p50_ms": p50,
            "ttft_p95_ms": p95, "throughput_qps": throughput,
            "throughput_batch_size": batch_size, "price_per_device_hour": price_per_device_hour,
            "cost_per_1k_requests": (cost_per_1k_requests(throughput, price_per_device_hour)
                                     if price_per_device_hour is not None else None)}


def head_to_head(evaluations: list[dict], champion: dict | None, dataset_dir: str,
                 workload_id: str, queries: int = LATENCY_QUERIES, home: str | None = None,
                 threads: int = 2) -> HeadToHead | None:
    """The cycle's candidates and its champion (as ``evaluate_champion`` re-evaluated it: the
    weights it downloaded from the registry), loaded as served and timed together on the first
    ``queries`` queries of the test split; None without a champion (nothing to compare).
    """
    from tasks.families import open_decider

    if not champion or not champion.get("version") or not champion.get("evaluation"):
        return None
    reference = f"v{champion['version']}"
    weights = champion["evaluation"]
    routers = {reference: open_decider(champion.get("family"), weights["base_model_path"],
                                       weights.get("adapter_dir"), threads=threads)}
    for evaluation in evaluations:
        tuned = evaluation["finetuned"]
        routers[evaluation["candidate"]] = open_decider(
            evaluation.get("family"), tuned["base_model_path"], tuned.get("adapter_dir"),
            threads=threads)
    lines = (Path(dataset_dir) / "test.jsonl").read_text().splitlines()[:queries]
    texts = [json.loads(line)["query"] for line in lines]
    calls = {name: (lambda q, r=router: r.route_batch([q])) for name, router in routers.items()}
    result = compare(calls, texts, reference)
    for name, timing in result.timings.items():
        against = result.versus.get(name)
        print(f"head-to-head {name:<32} p50 {timing.p50_ms:8.1f} ms  p95 {timing.p95_ms:8.1f} ms"
              + (f"  vs {reference}: {against.summary()}" if against else "  (reference)"))
    return result
