"""
### flywheel_cycle

One turn of the data flywheel for an agent workload: the agent's logs and its users' feedback in,
a smaller fine-tuned router model in the MLflow registry out.

ingest landing files → validate (great-expectations; bad rows quarantined with reasons) → curate a
versioned ground truth (frozen test split) → fine-tune one LoRA adapter per candidate through
DeepSpeed → evaluate each with lm-eval and measured latency, beside its base model and the teacher
→ gate on accuracy and latency → register the winner (alias `champion`, or `challenger` for review)
→ report.

Runs nightly at 02:00 UTC; trigger it from the UI to change candidates, thresholds or the window.
Every task is a thin call into the `tasks` package, which runs the same stages from the `flywheel`
command line.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

DEFAULT_CANDIDATES = ["llama-s-lora", "llama-m-lora"]


def _cycle_id(context) -> str:
    """A file-name-safe id of this DAG run."""
    from tasks.config import run_folder_name

    return run_folder_name(context["run_id"])


@dag(
    dag_id="flywheel_cycle",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["flywheel"],
    doc_md=__doc__,
    params={
        "workload_id": Param("router", type="string", minLength=1,
                             description="Which agent node's logs to learn from."),
        "candidates": Param(DEFAULT_CANDIDATES, type="array",
                            description="Candidate names from the catalog (or whole entries)."),
        "min_accuracy": Param(0.70, type="number", minimum=0, maximum=1,
                              description="Gate: minimum test accuracy."),
        "max_p95_latency_ms": Param(1000.0, type="number", exclusiveMinimum=0,
                                    description="Gate: maximum p95 latency in milliseconds."),
        "max_accuracy_drop": Param(0.02, type="number", minimum=0, maximum=1,
                                   description="Gate: allowed drop below the champion."),
        "window_days": Param(7, type="integer", minimum=1, maximum=3650,
                             description="Use records from the last N days of the run's window."),
        "latency_queries": Param(40, type="integer", minimum=1,
                                 description="Test queries timed one at a time per model."),
        "max_train_steps": Param(None, type=["null", "integer"], minimum=1,
                                 description="Cap optimizer steps (quick runs); empty = no cap."),
    },
)
def flywheel_cycle():
    @task
    def ingest() -> dict:
        from airflow.sdk import get_current_context

        from tasks.ingest import IngestConfig
        from tasks.ingest import ingest as run

        return run(IngestConfig(run_id=_cycle_id(get_current_context()))).model_dump(mode="json")

    @task
    def validate(ingested: dict) -> dict:
        from tasks.validate import ValidateConfig
        from tasks.validate import validate as run

        return run(ValidateConfig(run_id=ingested["run_id"])).model_dump(mode="json")

    @task
    def curate(validated: dict, params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.curate import CurateConfig
        from tasks.curate import curate as run

        context = get_current_context()
        end = context["data_interval_end"] or pendulum.now("UTC")
        config = CurateConfig(workload_id=params["workload_id"],
                              start=end - timedelta(days=params["window_days"]), end=end)
        return run(config).model_dump(mode="json")

    @task
    def plan_candidates(params: dict | None = None) -> list[dict]:
        from tasks.catalog import select_candidates

        specs = select_candidates(params["candidates"])
        if params.get("max_train_steps"):
            for spec in specs:
                spec.hyperparameters.max_steps = params["max_train_steps"]
        return [spec.model_dump(mode="json") for spec in specs]

    @task(max_active_tis_per_dagrun=1)
    def finetune(candidate: dict, dataset: dict, params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.catalog import CandidateSpec
        from tasks.finetune import FinetuneConfig
        from tasks.finetune import finetune as run

        spec = CandidateSpec.model_validate(candidate)
        config = FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=dataset["dataset_dir"],
                                workload_id=params["workload_id"],
                                cycle_id=_cycle_id(get_current_context()))
        return run(config).model_dump(mode="json")

    @task(max_active_tis_per_dagrun=1)
    def evaluate(trained: dict, dataset: dict, params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.evaluate import evaluate_candidate

        return evaluate_candidate(trained, dataset["dataset_dir"], params["workload_id"],
                                  _cycle_id(get_current_context()), params["latency_queries"])

    @task
    def evaluate_teacher(dataset: dict) -> dict:
        from tasks.evaluate import teacher_baseline

        return teacher_baseline(dataset["dataset_dir"]).model_dump(mode="json")

    @task
    def gate(evaluations: list[dict], params: dict | None = None) -> dict:
        from tasks.gate import gate_cycle

        return gate_cycle(list(evaluations), params["workload_id"], params).model_dump(mode="json")

    @task
    def register(decision: dict, evaluations: list[dict], params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.register import register_winner

        return register_winner(decision, list(evaluations), params["workload_id"],
                               _cycle_id(get_current_context()))

    @task
    def report(ingested: dict, validated: dict, dataset: dict, teacher: dict,
               evaluations: list[dict], decision: dict, registered: dict,
               params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.report import write_report

        return write_report(
            cycle_id=_cycle_id(get_current_context()), workload_id=params["workload_id"],
            ingested=ingested, validated=validated, dataset=dataset, teacher=teacher,
            evaluations=list(evaluations), decision=decision, registered=registered)

    ingested = ingest()
    validated = validate(ingested)
    dataset = curate(validated)
    trained = finetune.partial(dataset=dataset).expand(candidate=plan_candidates())
    evaluations = evaluate.partial(dataset=dataset).expand(trained=trained)
    teacher = evaluate_teacher(dataset)
    decision = gate(evaluations)
    registered = register(decision, evaluations)
    report(ingested, validated, dataset, teacher, evaluations, decision, registered)


flywheel_cycle()
