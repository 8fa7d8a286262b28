"""The reference router agent: route queries with the current champion, log every interaction.

    flywheel agent --query "how do I freeze my card?"
    flywheel agent --queries-file questions.txt --client-id hr-portal
    flywheel agent --queries-file questions.txt --intake-url http://127.0.0.1:8080/flywheel

It loads ``models:/flywheel-<workload>@champion`` through MLflow pyfunc
(:mod:`tasks.serving.router`),
routes each query, and writes one record per interaction in the log contract of
:mod:`tasks.core.records` (the OpenAI request, the ``route_to`` tool call as the response, the model
``flywheel-<workload>/v<version>``, the measured latency): into the landing folder as one JSONL
file per call (written whole, then renamed, so ingestion never reads half of it), or to the HTTP
intake with ``--intake-url``. The next cycle ingests them like any other agent's logs; feedback
on them arrives as separate events keyed by the record id.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.core.clock import now_iso
from tasks.core.clock import stamp as clock_stamp
from tasks.core.config import get_paths
from tasks.core.files import write_jsonl_atomic
from tasks.core.settings import parse_config


class AgentConfig(BaseModel):
    """Settings of ``flywheel agent``."""

    query: str | None = Field(None, description="One query to route.")
    queries_file: str | None = Field(None, description="Text file, one query per line.")
    workload_id: str = Field("router", pattern=r"^[A-Za-z0-9_.]+$",
                             description="Which registered model (flywheel-<workload>).")
    alias: str = Field("champion", min_length=1, description="Registry alias to serve.")
    client_id: str = Field("router-agent", min_length=1, description="Application logging.")
    intake_url: str | None = Field(None, description=(
        "Send records to this HTTP intake instead of the landing folder."))
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")
    workloads_dir: str | None = Field(None, description=(
        "Folder of workload files: the workload's 'decision' says how records hold the route "
        "(default $FLYWHEEL_WORKLOADS; the shipped ones are found too)"))


class Routed(BaseModel):
    id: str
    query: str
    expert: str
    latency_ms: float


class AgentResult(BaseModel):
    model: str = Field(description="flywheel-<workload>/v<version> that routed the queries.")
    routed: list[Routed]
    landing_file: str | None = None


def route_and_log(queries: list[str], workload_id: str = "router", alias: str = "champion",
                  client_id: str = "router-agent", home: str | None = None,
                  intake_url: str | None = None, workloads_dir: str | None = None
                  ) -> AgentResult:
    """Route ``queries`` with the model under ``alias`` and log each interaction.

    Raises:
        ValueError: no queries, or an empty one.
        LookupError: the registered model has no version under ``alias`` yet.
    """
    import mlflow
    from tasks.core import tracking
    from tasks.core.records import SCHEMA_VERSION, make_request, make_response
    from tasks.core.workload import WorkloadError, load_workload
    from tasks.serving.router import timed_predict

    if not queries:
        raise ValueError("no queries to route")
    if any(not q.strip() for q in queries):
        raise ValueError("empty query")
    paths = get_paths(home)
    name = tracking.registered_model_name(workload_id)
    client = tracking.configure(paths).MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as exc:
        raise LookupError(f"{name} has no version with alias {alias!r} yet: nothing to serve "
                          "(a cycle must register and promote one)") from exc
    # load the very version looked up, so the logged model name is the one that answered
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    served = f"{name}/v{version.version}"
    # the served model's own label space; the decision's place as its workload's file says
    experts = list((getattr(model, "model_config", None) or {}).get("experts") or [])
    try:
        workload = load_workload(workload_id, workloads_dir)
    except WorkloadError:
        workload = None
    decision = workload.decision if workload else None
    experts = experts or list(workload.expert_names if workload else [])
    system = workload.system_prompt() if workload else None
    routed, records = [], []
    for query in queries:
        expert, latency_ms = timed_predict(model, query)
        record_id = uuid.uuid4().hex
        routed.append(Routed(id=record_id, query=query, expert=expert,
                             latency_ms=round(latency_ms, 2)))
        records.append({
            "schema_version": SCHEMA_VERSION, "id": record_id,
            "timestamp": now_iso("milliseconds", z=True),
            "workload_id": workload_id, "client_id": client_id, "model": served,
            "request": make_request(query, experts, decision, system),
            "response": make_response(expert, f"call_{record_id}", decision),
            "latency_ms": round(latency_ms, 2)})
    result = AgentResult(model=served, routed=routed)
    if intake_url:
        from tasks.ingest.client import FlywheelClient

        with FlywheelClient(intake_url) as intake:
            for record in records:
                intake.post("v1/records", record)
        return result
    stamp = clock_stamp("%Y%m%dT%H%M%S%f")
    path = paths.landing / f"{workload_id}-agent-{stamp}.jsonl"
    write_jsonl_atomic(path, records)
    result.landing_file = str(path)
    return result


def main(argv: list[str] | None = None) -> int:
    config = parse_config(AgentConfig, argv, "flywheel agent", __doc__)
    queries = [config.query] if config.query else []
    if config.queries_file:
        file = Path(config.queries_file)
        if not file.is_file():
            print(f"flywheel agent: {file} does not exist", file=sys.stderr)
            return 2
        queries += [line.strip() for line in file.read_text().splitlines() if line.strip()]
    try:
        result = route_and_log(queries, config.workload_id, config.alias, config.client_id,
                               config.home, config.intake_url, config.workloads_dir)
    except (ValueError, LookupError) as exc:
        print(f"flywheel agent: {exc}", file=sys.stderr)
        return 2
    for r in result.routed:
        print(f"{r.expert:<20} {r.latency_ms:>8.1f} ms  {r.query}")
    print(f"routed {len(result.routed)} queries with {result.model}; logged to "
          f"{result.landing_file or config.intake_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
