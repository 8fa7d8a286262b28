"""The registry side of a cycle: register the gate's winner, promote it after approval, roll back.

    flywheel registry --action show
    flywheel registry --action promote --version 3 --approved-by alice
    flywheel registry --action rollback                # back to alias previous-champion
    flywheel registry --action rollback --version 2
    flywheel register --cycle-id <cycle> [--decision decision.json]   # a cycle's winner, again

``flywheel register`` reads the cycle's ``runs/<cycle>/report.json`` (its evaluations and the
gate's decision) or, with ``--decision``, a decision ``flywheel gate --out`` wrote for that
report; it registers the winner as a challenger (a winner the cycle already registered is named,
not registered twice) and records what it did in the report.json.

The winner becomes a new version of ``flywheel-<workload>``: the router packaged as an MLflow pyfunc
(:mod:`tasks.serving.router`; base model and adapter as its artifacts), logged in the winner's
training run, with its metrics, the gate's verdict and every reason as version tags and a readable
description. It gets alias ``challenger``, also the first one ever: nothing is served before a
reviewer approves it (the cycle's approval task, or ``--action promote``).

Promotion moves alias ``champion`` in one step, after keeping the version it leaves under
``previous-champion``; rollback does the same towards an older version. Both read the version's
``gate`` tag first and refuse a version that did not pass, so no crash or retry at any point can
leave ``champion`` on a model that failed the gate: aliases move only by :func:`promote` and
:func:`rollback`, and each alias move is one registry call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tasks.core import tracking
from tasks.core.clock import now_iso
from tasks.core.config import get_paths
from tasks.core.outcomes import read_outcome, write_outcome
from tasks.core.settings import parse_config
from tasks.families import get_family

GATE_PASSED = "passed"


class PromotionRefused(RuntimeError):
    """The version may not become champion (it did not pass the gate, or does not exist)."""


class RegisterConfig(BaseModel):
    workload_id: str = Field("router", min_length=1, description="Workload the model serves.")
    cycle_id: str = Field(min_length=1, description="Cycle (DAG run) that produced the winner.")
    candidate: str = Field(min_length=1, description="The gate's winner.")
    mlflow_run_id: str = Field(min_length=1, description="The winner's training run.")
    base_model: str = Field(description="Base model the adapter applies to.")
    base_model_path: str = Field(description="Base model folder (packaged with the version).")
    adapter_dir: str | None = Field(None, description="Adapter folder (packaged with it).")
    family: str = Field("causal_lm", description=(
        "Its model family (tasks.families): how the served pyfunc loads and runs it."))
    dataset_version: str = Field(description="Curated dataset version it was trained on.")
    metrics: dict[str, float] = Field(description="Metrics to tag the version with.")
    verdict: list[str] = Field(default_factory=list, description="The gate's reasons.")
    gate_rule: str = Field("", description="How the winner was picked among passing ones.")
    gate_summary: list[str] = Field(default_factory=list, description=(
        "One line per candidate of the cycle: its verdict (for the description)."))
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")


class RegisterResult(BaseModel):
    model_name: str
    version: str
    alias: str
    source: str


class AliasMove(BaseModel):
    model_name: str
    version: str = Field(description="The version that now holds alias champion.")
    previous: str | None = Field(description="The version it replaced (now previous-champion).")
    changed: bool = Field(description="False when it already was champion (a retry).")


def _client(home: str | None):
    return tracking.configure(get_paths(home)).MlflowClient()


def _version_or_none(client, name: str, alias: str):
    import mlflow

    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def champion_version(workload_id: str, home: str | None = None):
    """The version that holds alias ``champion``, or None."""
    return _version_or_none(_client(home), tracking.registered_model_name(workload_id),
                            tracking.CHAMPION)


def champion_accuracy(workload_id: str, home: str | None = None) -> float | None:
    """The champion's recorded test accuracy (tag ``test_accuracy``), or None without one."""
    version = champion_version(workload_id, home)
    if version is None or "test_accuracy" not in version.tags:
        return None
    return float(version.tags["test_accuracy"])


def register(config: RegisterConfig) -> RegisterResult:
    """Log the winner as a pyfunc, create the version with tags and description, alias challenger.

    Idempotent: a retry finds the version already made from the same training run.
    """
    import mlflow
    from tasks.serving.router import log_router_model

    paths = get_paths(config.home)
    client = _client(config.home)
    name = tracking.registered_model_name(config.workload_id)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=(
            f"Router model of workload '{config.workload_id}', produced by the flywheel. "
            "Alias 'champion' is served; 'challenger' passed the gate and awaits approval; "
            "'previous-champion' is the one a rollback returns to. Load with "
            f"mlflow.pyfunc.load_model('models:/{name}@champion')."))
    for existing in client.search_model_versions(f"name='{name}'"):
        if existing.run_id == config.mlflow_run_id:
            version = existing
            break
    else:
        info = log_router_model(config.mlflow_run_id, config.base_model_path,
                                config.adapter_dir, config.workload_id, paths=paths,
                                family=config.family)
        tags = {
            **{k: f"{v:.6g}" for k, v in config.metrics.items()},
            "candidate": config.candidate, "base_model": config.base_model,
            "dataset_version": config.dataset_version, "cycle_id": config.cycle_id,
            "gate": GATE_PASSED, "gate_reasons": "; ".join(config.verdict),
            "gate_rule": config.gate_rule, "family": config.family,
            "registered_at": now_iso("seconds"),
        }
        weights = (f"fine-tuned weights of {config.base_model}" if not config.adapter_dir else
                   f"adapter on {config.base_model}, packaged with its base,")
        kind = get_family(config.family).kind
        lines = [f"{config.candidate}: {weights} as an MLflow pyfunc router ({kind}); trained "
                 f"on dataset {config.dataset_version} in cycle {config.cycle_id}.", "",
                 "Gate: PASSED - " + "; ".join(config.verdict) + ".",
                 f"Winner rule: {config.gate_rule}." if config.gate_rule else ""]
        if config.gate_summary:
            lines += ["", "All candidates of the cycle:", *[f"- {s}" for s in config.gate_summary]]
        version = client.create_model_version(
            name, source=info.model_uri, run_id=config.mlflow_run_id, tags=tags,
            description="\n".join(lines).strip(), model_id=getattr(info, "model_id", None))
    current = champion_version(config.workload_id, config.home)
    if current is not None and str(current.version) == str(version.version):
        alias = tracking.CHAMPION  # a retry after it was already approved and promoted
    else:
        alias = tracking.CHALLENGER
        client.set_registered_model_alias(name, alias, version.version)
    return RegisterResult(model_name=name, version=str(version.version), alias=alias,
                          source=version.source)


def _passed_gate(client, name: str, version: str):
    import mlflow

    try:
        v = client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException as exc:
        raise PromotionRefused(f"{name} has no version {version}") from exc
    if v.tags.get("gate") != GATE_PASSED:
        raise PromotionRefused(
            f"{name} version {version} did not pass the gate (tag gate="
            f"{v.tags.get('gate')!r}); champion stays where it is")
    return v


def _move_champion(client, name: str, version: str, tags: dict[str, str]) -> AliasMove:
    """Keep the current champion as previous-champion, then move champion in one call."""
    target = _passed_gate(client, name, version)
    current = _version_or_none(client, name, tracking.CHAMPION)
    if current is not None and str(current.version) == str(target.version):
        return AliasMove(model_name=name, version=str(target.version),
                         previous=None, changed=False)
    if current is not None:
        client.set_registered_model_alias(name, tracking.PREVIOUS_CHAMPION, current.version)
    client.set_registered_model_alias(name, tracking.CHAMPION, target.version)
    for key, value in tags.items():
        client.set_model_version_tag(name, target.version, key, value)
    return AliasMove(model_name=name, version=str(target.version),
                     previous=str(current.version) if current is not None else None, changed=True)


def promote(workload_id: str, version: str, approved_by: str = "", home: str | None = None
            ) -> AliasMove:
    """Make ``version`` the champion (it must have passed the gate); drop its challenger alias.

    Raises:
        PromotionRefused: the version does not exist or did not pass the gate.
    """
    client = _client(home)
    name = tracking.registered_model_name(workload_id)
    move = _move_champion(client, name, str(version), {
        "promoted_at": now_iso("seconds"),
        "approved_by": approved_by or "unknown"})
    challenger = _version_or_none(client, name, tracking.CHALLENGER)
    if challenger is not None and str(challenger.version) == move.version:
        client.delete_registered_model_alias(name, tracking.CHALLENGER)
    return move


def rollback(workload_id: str, version: str | None = None, home: str | None = None,
             reason: str = "") -> AliasMove:
    """Give alias champion back to ``version`` (default: the one under previous-champion).

    The version rolled back from becomes previous-champion, so a rollback can itself be undone.

    Raises:
        PromotionRefused: nothing to roll back to, or the target did not pass the gate.
    """
    client = _client(home)
    name = tracking.registered_model_name(workload_id)
    if version is None:
        previous = _version_or_none(client, name, tracking.PREVIOUS_CHAMPION)
        if previous is None:
            raise PromotionRefused(f"{name} has no alias {tracking.PREVIOUS_CHAMPION} to roll "
                                   "back to; name a version")
        version = str(previous.version)
    current = _version_or_none(client, name, tracking.CHAMPION)
    move = _move_champion(client, name, str(version), {
        "rolled_back_to_at": now_iso("seconds")})
    if move.changed and current is not None:
        client.set_model_version_tag(name, current.version, "rolled_back_from_at",
                                     now_iso("seconds")
                                     + (f" ({reason})" if reason else ""))
    return move


def aliases(workload_id: str, home: str | None = None) -> dict[str, str]:
    """alias -> version of the workload's registered model (empty without one)."""
    import mlflow

    try:
        model = _client(home).get_registered_model(tracking.registered_model_name(workload_id))
    except mlflow.exceptions.MlflowException:
        return {}
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def download_version(workload_id: str, version: str, home: str | None = None
                     ) -> tuple[str, str | None]:
    """A registered version's base model and adapter folders, downloaded once under ``runs/``.

    Returns ``(base_model_path, adapter_dir)``; for a version whose source is a bare adapter
    folder, the base comes from its ``base_model`` tag.
    """
    import mlflow
    from tasks.serving.router import ADAPTER_ARTIFACT, BASE_ARTIFACT

    client = _client(home)
    name = tracking.registered_model_name(workload_id)
    v = client.get_model_version(name, str(version))
    target = get_paths(home).runs / "registry" / name / str(version)
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=v.source, dst_path=str(target))
        done.write_text(v.source)
    root = _model_root(target)
    if (root / "artifacts" / BASE_ARTIFACT).is_dir():
        adapter = root / "artifacts" / ADAPTER_ARTIFACT
        return str(root / "artifacts" / BASE_ARTIFACT), str(adapter) if adapter.is_dir() else None
    from tasks.training.bases import resolve_base_model

    return str(resolve_base_model(v.tags["base_model"], home=home)), str(root)


def _model_root(folder: Path) -> Path:
    """The folder holding ``MLmodel`` (or the adapter) inside a download."""
    for marker in ("MLmodel", "adapter_config.json"):
        found = sorted(folder.rglob(marker))
        if found:
            return found[0].parent
    raise FileNotFoundError(f"no MLmodel or adapter_config.json under {folder}")


def register_winner(decision: dict, evaluations: list[dict], workload_id: str, cycle_id: str,
                    home: str | None = None) -> dict:
    """Register the gate's winner, if any; returns what was registered (or why nothing was)."""
    winner = decision.get("winner")
    if not winner:
        return {"registered": False, "reason": "no candidate passed the gate"}
    evaluation = next(e for e in evaluations if e["candidate"] == winner)
    verdict = next(v for v in decision["verdicts"] if v["candidate"] == winner)
    if not verdict["passed"]:
        raise PromotionRefused(f"gate decision names {winner} winner but its verdict failed")
    tuned = evaluation["finetuned"]
    keys = ("accuracy", "macro_f1", "mc_accuracy", "latency_p50_ms", "latency_p95_ms",
            "ttft_p50_ms", "ttft_p95_ms", "throughput_qps", "cost_per_1k_requests")
    metrics = {k: float(tuned[k]) for k in keys if tuned.get(k) is not None}
    metrics["test_accuracy"] = metrics.pop("accuracy")
    if evaluation.get("base"):
        metrics["base_accuracy"] = evaluation["base"]["accuracy"]
    summary = [f"{v['candidate']}: {'PASS' if v['passed'] else 'FAIL'} - "
               + "; ".join(v["reasons"]) for v in decision["verdicts"]]
    result = register(RegisterConfig(
        workload_id=workload_id, cycle_id=cycle_id, candidate=winner,
        mlflow_run_id=evaluation["mlflow_run_id"], base_model=evaluation["base_model"],
        base_model_path=tuned["base_model_path"], adapter_dir=tuned.get("adapter_dir"),
        dataset_version=evaluation["dataset_version"], metrics=metrics,
        verdict=verdict["reasons"], gate_rule=decision.get("rule", ""), gate_summary=summary,
        family=evaluation.get("family") or "causal_lm", home=home))
    return {"registered": True, "candidate": winner, **result.model_dump(mode="json")}


def promote_registered(registered: dict, workload_id: str, approved_by: str,
                       home: str | None = None) -> dict:
    """The cycle's promotion step: the version this cycle registered becomes champion."""
    if not registered.get("registered"):
        return {"promoted": False, "reason": registered.get("reason", "nothing registered")}
    move = promote(workload_id, registered["version"], approved_by=approved_by, home=home)
    return {"promoted": True, **move.model_dump(mode="json")}


class RegistryConfig(BaseModel):
    """Settings of ``flywheel registry``."""

    action: Literal["show", "promote", "rollback"] = Field(
        "show", description="show the aliases, promote a version, or roll back.")
    workload_id: str = Field("router", min_length=1, description="Workload the model serves.")
    version: str | None = Field(None, pattern=r"^[0-9]+$", description=(
        "Version to promote or roll back to (rollback default: previous-champion)."))
    approved_by: str = Field("", description="Who approved a promotion (recorded as a tag).")
    reason: str = Field("", description="Why a rollback happened (recorded as a tag).")
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(RegistryConfig, argv, "flywheel registry", __doc__)
    try:
        if config.action == "promote":
            if config.version is None:
                raise PromotionRefused("--version is required to promote")
            move = promote(config.workload_id, config.version, config.approved_by, config.home)
            print(json.dumps(move.model_dump()))
        elif config.action == "rollback":
            move = rollback(config.workload_id, config.version, config.home, config.reason)
            print(json.dumps(move.model_dump()))
    except PromotionRefused as exc:
        print(f"flywheel registry: {exc}")
        return 1
    print(json.dumps(aliases(config.workload_id, config.home), sort_keys=True))
    return 0


class RegisterCommand(BaseModel):
    """Settings of ``flywheel register``."""

    cycle_id: str = Field(min_length=1, description=(
        "The cycle whose runs/<cycle>/report.json holds the evaluations."))
    decision: str | None = Field(None, description=(
        "JSON file from `flywheel gate --out` (default: the decision in report.json)."))
    home: str | None = Field(None, description="Flywheel home (default $FLYWHEEL_HOME).")


def _json_file(path: Path, what: str) -> dict:
    if not path.is_file():
        raise PromotionRefused(f"no {path}: {what}")
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PromotionRefused(f"{path} is not valid JSON ({exc.msg})") from exc
    if not isinstance(loaded, dict):
        raise PromotionRefused(f"{path} holds {type(loaded).__name__}, not an object")
    return loaded


def register_cycle(cycle_id: str, decision_file: str | None = None,
                   home: str | None = None) -> dict:
    """Register a finished cycle's winner from its report.json (or a re-run gate's decision).

    Raises:
        PromotionRefused: no report, a malformed file, or a winner the report has no
            evaluation of.
    """
    source = get_paths(home).runs / cycle_id / "report.json"
    report = _json_file(source, "the cycle's report task has not run")
    decision = (_json_file(Path(decision_file).expanduser(), "--decision")
                if decision_file else report.get("decision"))
    if not isinstance(decision, dict) or "verdicts" not in decision:
        raise PromotionRefused(f"no gate decision in {decision_file or source}")
    winner = decision.get("winner")
    evaluations = report.get("evaluations") or []
    if winner and not any(e.get("candidate") == winner for e in evaluations):
        raise PromotionRefused(f"the decision's winner {winner!r} has no evaluation in {source}")
    earlier = read_outcome(cycle_id, "registered", home) or report.get("registered") or {}
    if earlier.get("registered") and earlier.get("candidate") == winner:
        return {**earlier, "already": True}
    registered = register_winner(decision, evaluations, report.get("workload_id") or "router",
                                 cycle_id, home)
    if registered.get("registered"):  # its own record: the report task's is never rewritten
        write_outcome(cycle_id, "registered", registered, home)
    return registered


def register_main(argv: list[str] | None = None) -> int:
    config = parse_config(RegisterCommand, argv, "flywheel register", __doc__)
    try:
        registered = register_cycle(config.cycle_id, config.decision, config.home)
    except PromotionRefused as exc:
        print(f"flywheel register: {exc}")
        return 1
    if not registered.get("registered"):
        print(f"nothing registered: {registered.get('reason')}")
    else:
        print(f"{registered['model_name']} version {registered['version']} "
              + ("was registered by the cycle already" if registered.get("already") else
                 "registered") + f" (alias {registered['alias']}); promote it with: flywheel "
              f"registry --action promote --version {registered['version']} --approved-by NAME")
    return 0
