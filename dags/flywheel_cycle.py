"""
### flywheel_cycle

One turn of the data flywheel for an agent workload: the agent's logs and its users' feedback in,
a smaller fine-tuned router model in the MLflow registry out.

ingest landing files → validate (great-expectations; bad rows quarantined with reasons) → attribute
the badly rated answers (a judge flags routing errors; queries indexed in Qdrant) → SME review
(experts confirm or correct, and label a random sample of the teacher's traffic that grades it, in
the UI's *Required actions* when `sme_review` is `ui`; a simulated SME from the simulator's gold
labels in the demo) → curate a versioned ground truth (frozen test split, semantic de-dup, no
train/test leakage) → fine-tune one LoRA adapter per candidate through DeepSpeed → evaluate each
with lm-eval and measured latency, beside its base model and the teacher → gate on accuracy and
latency (vs the champion re-evaluated on the same test set and the teacher) → register the winner as
alias `challenger` and announce it (the Asset `flywheel_challenger`) → report. The cycle ends
there: approval (a reviewer, or the `auto_approve` param) and promotion run in the DAG
`flywheel_promotion`, so tonight's cycle never waits on yesterday's reviewer.

Runs nightly at 02:00 UTC; trigger it from the UI to change candidates, thresholds or the window.
Every task is a thin call into the `tasks` package, which runs the same stages from the `flywheel`
command line.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Asset, Param, dag, task

#: updated when a cycle registers a challenger (tasks.registry.promotion.CHALLENGER_ASSET)
CHALLENGER = Asset("flywheel_challenger", uri="file:///flywheel/registry/challenger")

TRAINING_POOL = "flywheel_gpu"  # tasks.training.finetune.TRAINING_POOL
#: The queues candidates train on (a candidate's `resources.queue`), one mapped training task
#: each: Airflow fixes a task's queue when the DAG is parsed, never per mapped instance. Jobs of
#: queue "default" go to FLYWHEEL_TRAINING_QUEUE (e.g. to send all training to a GPU queue).
TRAINING_QUEUES = [queue.strip() for queue in
                   os.environ.get("FLYWHEEL_TRAINING_QUEUES", "default,gpu").split(",")
                   if queue.strip()]
TRAINING_QUEUE = os.environ.get("FLYWHEEL_TRAINING_QUEUE", "default")
#: The workload a scheduled cycle learns (read where the DAG is parsed); a run's conf may name
#: another.
WORKLOAD_ID = os.environ.get("FLYWHEEL_WORKLOAD_ID", "router")
#: When the cycle runs by itself (cron, UTC); "none" turns the schedule off (manual runs only).
CYCLE_SCHEDULE = os.environ.get("FLYWHEEL_CYCLE_SCHEDULE", "0 2 * * *")
#: How long each kind of task may run before Airflow fails it (and retries once): a hung judge
#: endpoint or a stuck training job must not hold the cycle (one run at a time) forever. The
#: human steps wait by their own response_timeout instead.
QUICK = timedelta(hours=1)  # data stages, planning, gate, registry, report
JUDGING = timedelta(hours=3)  # attribute: index the window, judge its thumbs-downs
TRAINING = timedelta(hours=12)  # one candidate's fine-tune
EVALUATING = timedelta(hours=4)  # one model on the test split: lm-eval, latency
#: How long the UI review waits for an expert before the cycle goes on with what is decided.
SME_REVIEW_TIMEOUT = timedelta(hours=12)
#: The UI review's answers, as tasks.curation.review.UI_OPTIONS reads them (the last is the timeout
# default).
SME_REVIEW_OPTIONS = ["Accept the judge's labels", "Apply only the labels typed below",
                      "Decide later"]
SME_REVIEW_BODY = """{% set a = ti.xcom_pull(task_ids='attribute') %}
The judge **{{ a.judge }}** flagged {{ a.flagged }} of {{ a.negative }} badly rated answers as
routing errors; {{ a.pending }} queries wait for an expert ({{ a.novel }} novel in this window).
The oldest {{ a.preview | length }}:

| record | why | query | routed to | judge says | confidence |
|---|---|---|---|---|---|
{% for i in a.preview %}| {{ i.record_id }} | {{ i.reason }} | {{ i.query | replace('|', '/') }} \
| {{ i.route }} | {{ i.judge_expert or '-' }} | {{ i.judge_confidence or '-' }} |
{% endfor %}
Labels are this workload's experts ({{ a.experts | join(', ') }}) or `discard`.
Accept the judge's labels (typed lines override them), apply only typed lines, or decide later.
A `traffic_audit` item is a random sample of the teacher's traffic that grades the teacher: it
needs a typed label (accepting does not label it). The full queue is in `flywheel review export`.
"""


def _per_queue(task_id: str, queue: str) -> str:
    """The training tasks of queue "default" keep the plain id; the others are suffixed."""
    return task_id if queue == "default" else f"{task_id}_{queue}"


def _settings(params: dict) -> dict:
    """The run's params with the workload file's defaults (candidates, gate thresholds) for
    those the run's conf leaves out (tasks.core.workload.cycle_params)."""
    from airflow.sdk import get_current_context

    from tasks.core.workload import cycle_params

    run = get_current_context().get("dag_run")
    return cycle_params(params, getattr(run, "conf", None) or {})


#: Form names that say more than the stage's own field names (form name -> field).
JUDGE_PARAMS = {"judge_backend": "backend", "judge_endpoint_url": "endpoint_url",
                "judge_model": "model"}
REVIEW_PARAMS = {"sme_review": "mode", "sme_capacity": "sme_capacity",
                 "traffic_audit_size": "traffic_audit_size", "gold_labels": "gold_labels"}
CURATE_PARAMS = ["teacher_labels", "max_teacher_labelled", "near_duplicate_threshold",
                 "min_judge_agreement"]
EVALUATE_PARAMS = ["latency_queries", "icl_examples", "general_text_docs",
                   "price_per_device_hour"]


def _params() -> dict[str, Param]:
    """The trigger form, generated from the pydantic models that declare each setting (its
    default, bounds and description live there alone: tasks.core.params)."""
    from tasks.core.params import CycleSettings, param_specs
    from tasks.core.workload import WorkloadSettings
    from tasks.curation.curate import CurateConfig
    from tasks.curation.judge import JudgeConfig
    from tasks.curation.review import ReviewConfig
    from tasks.evaluation.gate import GateThresholds
    from tasks.evaluation.scoring import EvaluateConfig

    specs = {
        **param_specs(WorkloadSettings, ["workload_id", "workloads_dir"],
                      defaults={"workload_id": WORKLOAD_ID}),
        **param_specs(CycleSettings),
        **param_specs(GateThresholds),
        # a cycle shows each base in context and checks forgetting; one model's evaluation
        # from the command line does neither unless asked
        **param_specs(EvaluateConfig, EVALUATE_PARAMS,
                      defaults={"icl_examples": 4, "general_text_docs": 200}),
        **param_specs(JudgeConfig, JUDGE_PARAMS),
        # experts review in the UI unless the run says otherwise (the demo: simulated)
        **param_specs(ReviewConfig, REVIEW_PARAMS, defaults={"sme_review": "ui"}),
        **param_specs(CurateConfig, CURATE_PARAMS),
    }
    return {name: Param(**spec) for name, spec in specs.items()}


def _window(params: dict) -> dict:
    """The run's window of records as ``start``/``end``, the same for every task of the run and
    every retry (tasks.core.clock.run_window: the data interval's end, else ``run_after``)."""
    from airflow.sdk import get_current_context

    from tasks.core.clock import run_window

    context = get_current_context()
    start, end = run_window(params["window_days"], context.get("data_interval_end"),
                            getattr(context.get("dag_run"), "run_after", None))
    return {"start": start, "end": end}


def _cycle_id(context) -> str:
    """A file-name-safe id of this DAG run."""
    from tasks.core.config import run_folder_name

    return run_folder_name(context["run_id"])


@dag(
    dag_id="flywheel_cycle",
    schedule=None if CYCLE_SCHEDULE.lower() in {"", "none"} else CYCLE_SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["flywheel"],
    doc_md=__doc__,
    params=_params(),
)
def flywheel_cycle():
    @task(execution_timeout=QUICK)
    def ingest() -> dict:
        from airflow.sdk import get_current_context

        from tasks.ingest.landing import IngestConfig
        from tasks.ingest.landing import ingest as run

        context = get_current_context()
        return run(IngestConfig(run_id=_cycle_id(context),
                                workloads_dir=context["params"].get("workloads_dir"))
                   ).model_dump(mode="json")

    @task(execution_timeout=QUICK)
    def validate(ingested: dict, params: dict | None = None) -> dict:
        from tasks.ingest.validate import ValidateConfig, validate_waiting

        # every batch waiting (one a killed run left included), this cycle's among them; one
        # over the invalid limit is flagged (the report leads with it), not a failed cycle: the
        # good rows are stored and tonight's cycle learns from every other client
        return validate_waiting(ValidateConfig(
            run_id=ingested["run_id"], on_excess="flag",
            workloads_dir=params.get("workloads_dir"))).model_dump(mode="json")

    @task(execution_timeout=JUDGING)
    def attribute(validated: dict, params: dict | None = None) -> dict:
        from tasks.core.params import config_from
        from tasks.curation.judge import JudgeConfig
        from tasks.curation.judge import attribute as run

        return run(config_from(JudgeConfig, params, JUDGE_PARAMS, **_window(params))
                   ).model_dump(mode="json")

    @task.branch(execution_timeout=QUICK)
    def route_review(params: dict | None = None) -> list[str]:
        return ["sme_review_ui", "review"] if params["sme_review"] == "ui" else ["review"]

    sme_review_ui = HITLOperator(
        task_id="sme_review_ui",
        subject="Review the judge's routing-error flags",
        body=SME_REVIEW_BODY,
        options=SME_REVIEW_OPTIONS,
        defaults=SME_REVIEW_OPTIONS[-1],
        params={"labels": Param("", type="string",
                                description="One line per query: <record id> <expert or "
                                            "discard>")},
        response_timeout=SME_REVIEW_TIMEOUT,
    )

    @task(trigger_rule="none_failed_min_one_success", execution_timeout=QUICK)
    def review(attributed: dict, params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.core.params import config_from
        from tasks.curation.review import ReviewConfig
        from tasks.curation.review import review as run

        context = get_current_context()
        answer = None
        if params["sme_review"] == "ui":
            answer = context["ti"].xcom_pull(task_ids="sme_review_ui")
        config = config_from(ReviewConfig, params, REVIEW_PARAMS, **_window(params),
                             ui_response=answer,
                             ui_items=[item["record_id"] for item in attributed["preview"]])
        return run(config).model_dump(mode="json")

    @task(execution_timeout=QUICK)
    def curate(validated: dict, reviewed: dict, params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.core.params import config_from
        from tasks.curation.curate import CurateConfig
        from tasks.curation.curate import curate as run

        # a retry returns the version the first try built (run_key), over the same window
        return run(config_from(CurateConfig, params, **_window(params),
                               run_key=_cycle_id(get_current_context()))
                   ).model_dump(mode="json")

    @task(execution_timeout=QUICK)
    def plan_candidates(queue: str, params: dict | None = None) -> list[dict]:
        """The selected candidates that train on ``queue`` (every selected one's queue checked)."""
        from tasks.training.catalog import on_queue, select_candidates
        from tasks.training.finetune import check_base_models

        specs = on_queue(select_candidates(_settings(params)["candidates"]), queue,
                         TRAINING_QUEUES)
        check_base_models(specs)  # a missing or unloadable base fails here, named, before training
        if params.get("max_train_steps"):
            for spec in specs:
                spec.hyperparameters.max_steps = params["max_train_steps"]
        return [spec.model_dump(mode="json") for spec in specs]

    # Training jobs hold slots of the `flywheel_gpu` pool
    # (tasks.training.finetune.ensure_training_pool, or
    # `airflow pools set flywheel_gpu N ...`: a task in a missing pool is never scheduled). Airflow
    # fixes pool_slots and queue per task, not per mapped instance, so one job takes one slot on
    # its queue's training task; the candidate's `resources.gpus` sets its ranks on the worker.
    @task(max_active_tis_per_dagrun=1, pool=TRAINING_POOL, pool_slots=1,
          execution_timeout=TRAINING)
    def finetune(candidate: dict, dataset: dict, params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.training.catalog import CandidateSpec
        from tasks.training.finetune import FinetuneConfig
        from tasks.training.finetune import finetune as run

        spec = CandidateSpec.model_validate(candidate)
        config = FinetuneConfig(candidate=spec.name, spec=spec, dataset_dir=dataset["dataset_dir"],
                                workload_id=params["workload_id"],
                                cycle_id=_cycle_id(get_current_context()))
        return run(config).model_dump(mode="json")

    @task(trigger_rule="none_failed", execution_timeout=QUICK)
    def trained_models(*per_queue: list[dict] | None) -> list[dict]:
        """Every queue's trained candidates in one list (a queue with none is skipped: None)."""
        return [trained for queue in per_queue for trained in (queue or [])]

    @task(max_active_tis_per_dagrun=1, execution_timeout=EVALUATING)
    def evaluate(trained: dict, dataset: dict, params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.evaluation.evaluate import evaluate_candidate

        return evaluate_candidate(trained, dataset["dataset_dir"], params["workload_id"],
                                  _cycle_id(get_current_context()), params["latency_queries"],
                                  icl_examples=params["icl_examples"],
                                  price_per_device_hour=params["price_per_device_hour"],
                                  general_text_docs=params["general_text_docs"])

    @task(execution_timeout=QUICK)
    def evaluate_teacher(dataset: dict, params: dict | None = None) -> dict:
        from tasks.evaluation.evaluate import teacher_baseline

        return teacher_baseline(dataset["dataset_dir"], workload_id=params["workload_id"],
                                gold_labels=params.get("gold_labels")).model_dump(mode="json")

    @task(max_active_tis_per_dagrun=1, execution_timeout=EVALUATING)
    def evaluate_champion(dataset: dict, params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.evaluation.evaluate import evaluate_champion as run

        return run(dataset["dataset_dir"], params["workload_id"],
                   _cycle_id(get_current_context()), params["latency_queries"],
                   price_per_device_hour=params["price_per_device_hour"])

    @task(max_active_tis_per_dagrun=1, execution_timeout=EVALUATING)
    def time_head_to_head(evaluations: list[dict], champion: dict, dataset: dict,
                          params: dict | None = None) -> dict | None:
        """The candidates and the champion loaded as served and timed together, query by query
        in turn, so load on the machine falls on all alike (the gate's "cheaper" reads it)."""
        from tasks.evaluation.latency import head_to_head

        result = head_to_head(list(evaluations), champion, dataset["dataset_dir"],
                              params["workload_id"], params["latency_queries"])
        return result.model_dump(mode="json") if result else None

    @task(execution_timeout=QUICK)
    def gate(evaluations: list[dict], champion: dict, teacher: dict, latency: dict | None,
             params: dict | None = None) -> dict:
        from tasks.evaluation.gate import gate_cycle

        return gate_cycle(list(evaluations), params["workload_id"], _settings(params),
                          champion=champion, teacher=teacher,
                          latency=latency).model_dump(mode="json")

    @task(execution_timeout=QUICK)
    def register(decision: dict, evaluations: list[dict], params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.registry.register import register_winner

        return register_winner(decision, list(evaluations), params["workload_id"],
                               _cycle_id(get_current_context()))

    @task(outlets=[CHALLENGER], execution_timeout=QUICK)
    def announce(registered: dict, decision: dict, params: dict | None = None) -> dict:
        """Update the Asset flywheel_challenger: the promotion DAG takes it from here."""
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.registry.promotion import challenger_event

        context = get_current_context()
        event = challenger_event(registered, params["workload_id"], _cycle_id(context),
                                 params["auto_approve"], decision)
        if event is None:  # a skipped task updates no Asset
            raise AirflowSkipException("nothing registered, nothing to approve")
        context["outlet_events"][CHALLENGER].extra = event
        return event

    @task(trigger_rule="none_failed", execution_timeout=QUICK)
    def report(ingested: dict, validated: dict, dataset: dict, teacher: dict,
               evaluations: list[dict], champion: dict, decision: dict, registered: dict,
               params: dict | None = None) -> dict:
        from airflow.sdk import get_current_context

        from tasks.reporting.report import write_report

        return write_report(
            cycle_id=_cycle_id(get_current_context()), workload_id=params["workload_id"],
            ingested=ingested, validated=validated, dataset=dataset, teacher=teacher,
            evaluations=list(evaluations), decision=decision, registered=registered,
            champion=champion)

    ingested = ingest()
    validated = validate(ingested)
    attributed = attribute(validated)
    reviewed = review(attributed)
    route_review() >> [sme_review_ui, reviewed]
    attributed >> sme_review_ui >> reviewed
    dataset = curate(validated, reviewed)
    trained = trained_models(*(
        finetune.override(task_id=_per_queue("finetune", queue),
                          queue=TRAINING_QUEUE if queue == "default" else queue)
        .partial(dataset=dataset)
        .expand(candidate=plan_candidates.override(task_id=_per_queue("plan_candidates", queue))(
            queue))
        for queue in TRAINING_QUEUES))
    evaluations = evaluate.partial(dataset=dataset).expand(trained=trained)
    teacher = evaluate_teacher(dataset)
    champion = evaluate_champion(dataset)
    latency = time_head_to_head(evaluations, champion, dataset)
    decision = gate(evaluations, champion, teacher, latency)
    registered = register(decision, evaluations)
    announce(registered, decision)
    report(ingested, validated, dataset, teacher, evaluations, champion, decision, registered)


flywheel_cycle()
