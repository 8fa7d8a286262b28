"""The candidate catalog: which base models the cycle fine-tunes, how, and with what resources.

The default catalog is ``tasks/training/configs/candidates.yaml``; a cycle's params form may pass
its own list of names (picked from the catalog) or whole entries. Every entry is checked when it is
read, so a typo or an impossible combination fails the planning task with the entry's name and the
reason, not a training job an hour later.

Three model families are supported (each is an entry of :data:`tasks.families.FAMILIES`):

* ``causal_lm`` (the main path): a decoder that completes the routing prompt with an expert's
  name, scored by lm-eval. Methods: ``lora``, ``full`` (full SFT), ``prompt_tuning`` and
  ``p_tuning`` (soft prompts through peft).
* ``encoder``: a sequence classifier (one label per expert) on a pretrained sentence encoder,
  e.g. all-MiniLM-L6-v2. Methods: ``lora`` (classifier head trained in full) and ``full``.
* ``linear_probe``: a logistic regression on the frozen embeddings of a sentence encoder
  (:mod:`tasks.families.linear_probe`). Method: ``linear_probe``; trains in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CATALOG = CONFIG_DIR / "candidates.yaml"

Family = Literal["causal_lm", "encoder", "linear_probe"]
Method = Literal["lora", "full", "prompt_tuning", "p_tuning", "linear_probe"]

#: Which methods each family can train (and evaluate).
METHODS_BY_FAMILY: dict[str, tuple[str, ...]] = {
    "causal_lm": ("lora", "full", "prompt_tuning", "p_tuning"),
    "encoder": ("lora", "full"),
    "linear_probe": ("linear_probe",),
}

#: LoRA targets and fully trained modules when a candidate does not name its own.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "causal_lm": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "encoder": ["query", "key", "value", "dense"],
    "linear_probe": [],  # the encoder stays frozen
}
DEFAULT_MODULES_TO_SAVE: dict[str, list[str]] = {
    # the tiny, briefly pre-trained offline bases only learn routing when their norms and token
    # embeddings train too (LoRA on the linear layers alone stayed at chance)
    "causal_lm": ["norm", "embed_tokens"],
    # a sequence classifier's head (and BERT's pooler in front of it) start untrained
    "encoder": ["classifier", "pooler"],
    "linear_probe": [],
}


class CatalogError(UserError, ValueError):
    """A malformed catalog or candidate entry; the message names the entry and the problem."""


class Hyperparameters(BaseModel):
    """Training settings of one candidate."""

    model_config = ConfigDict(extra="forbid")

    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(None, description=(
        "Linear layers that get LoRA adapters (default: the family's attention and MLP layers)."))
    modules_to_save: list[str] | None = Field(None, description=(
        "Modules trained in full and saved beside the adapters (default: norms and embeddings "
        "for the tiny causal LMs, the classifier head and pooler for encoders; [] for none)."))
    num_virtual_tokens: int = Field(16, ge=1, le=1024, description=(
        "Soft-prompt length for prompt_tuning and p_tuning."))
    encoder_hidden_size: int = Field(128, ge=1, le=65536, description=(
        "Hidden size of p_tuning's prompt encoder (MLP)."))
    learning_rate: float = Field(2e-3, gt=0, le=1.0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    epochs: float = Field(8, gt=0, le=1000, description="Passes over the training split.")
    batch_size: int = Field(16, ge=1, le=4096, description="Micro-batch size per rank.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description=(
        "Micro-batches per optimizer step (global batch = micro-batch x this x ranks)."))
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps warming up the LR.")
    max_seq_len: int = Field(96, ge=8, le=32768, description="Prompt + answer tokens kept.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    checkpoint_every: int = Field(50, ge=0, le=10_000_000, description=(
        "Save a DeepSpeed checkpoint every N optimizer steps, so a killed or retried task "
        "resumes instead of restarting; 0 = never."))
    keep_checkpoints: int = Field(2, ge=1, le=1000, description=(
        "Checkpoints kept on disk (older ones are deleted after each save)."))
    class_weights: dict[str, Annotated[float, Field(gt=0, le=1000)]] | None = Field(
        None, description=(
            "Encoder family: loss weight per label, e.g. {out_of_scope: 2.0} to trade some "
            "in-scope precision for fallback recall; labels not named weigh 1."))
    probe_c: float = Field(10.0, gt=0, le=1e6, description=(
        "linear_probe family: inverse L2 strength of the logistic regression (larger: a closer "
        "fit to the training set)."))
    log_every: int = Field(5, ge=1, le=1_000_000, description=(
        "Rank 0 sends the loss curve to the live MLflow run every N optimizer steps."))

    def lora_targets(self, family: str) -> list[str]:
        return list(self.target_modules) if self.target_modules is not None \
            else list(DEFAULT_TARGET_MODULES[family])

    def saved_modules(self, family: str) -> list[str]:
        return list(self.modules_to_save) if self.modules_to_save is not None \
            else list(DEFAULT_MODULES_TO_SAVE[family])


class Resources(BaseModel):
    """What one training job of a candidate needs; the DAG routes and limits it with these."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(0, ge=0, le=1024, description=(
        "GPUs per job (0 = CPU). Also the number of training ranks started on a GPU node "
        "and the slots it takes in the Airflow pool of GPU slots (at least 1)."))
    memory_gb: float = Field(4.0, gt=0, le=100_000, description="Host memory the job needs.")
    queue: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description=(
        "Executor queue (e.g. a Celery queue served by GPU workers)."))

    @property
    def pool_slots(self) -> int:
        return max(1, self.gpus)


class CandidateSpec(BaseModel):
    """One entry of the catalog."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                      description="Unique candidate name (used in run and model names).")
    base_model: str = Field(min_length=1, description=(
        "Built-in offline recipe name, a package-shipped encoder name, a local Hugging Face "
        "model folder, or a hub id."))
    family: Family = Field("causal_lm", description=(
        "causal_lm: completes the routing prompt with an expert name; encoder: classifies the "
        "query into one expert."))
    method: Method = Field("lora", description=(
        "lora, full (full SFT), prompt_tuning or p_tuning (causal_lm only)."))
    deepspeed_config: str = Field("ds_zero2.json", description=(
        "DeepSpeed config: a file name in tasks/training/configs/ or a path."))
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: Resources = Field(default_factory=Resources)
    scope_guard_budget: float = Field(0.05, ge=0.0, lt=0.5, description=(
        "Share of in-scope queries the scope guard may send to the fallback expert by mistake "
        "(tasks/training/scope_guard.py): it routes a query unlike every in-scope training query "
        "to the fallback. 0: no guard."))

    @model_validator(mode="after")
    def _consistent(self) -> CandidateSpec:
        allowed = METHODS_BY_FAMILY[self.family]
        if self.method not in allowed:
            raise ValueError(f"method {self.method!r} is not available for family "
                             f"{self.family!r} (it supports: {', '.join(allowed)})")
        if self.hyperparameters.class_weights and self.family != "encoder":
            raise ValueError("hyperparameters.class_weights applies to the encoder family only "
                             "(a classifier's loss); a causal LM completes text")
        self.deepspeed_config_path()  # a missing file is an error now, not at launch
        return self

    def deepspeed_config_path(self) -> Path:
        path = Path(self.deepspeed_config).expanduser()
        resolved = path if path.is_absolute() or path.is_file() else CONFIG_DIR / path
        if not resolved.is_file():
            known = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("ds_*.json")))
            raise ValueError(f"DeepSpeed config {self.deepspeed_config!r} not found "
                             f"(looked for {resolved}; built-in configs: {known})")
        return resolved

    @property
    def uses_peft(self) -> bool:
        return self.method != "full"


def parse_candidate(entry: Any, where: str = "candidate") -> CandidateSpec:
    """Validate one entry; a bad one raises :class:`CatalogError` naming it and every problem."""
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected a mapping of fields, got {type(entry).__name__}")
    label = f"{where} {entry.get('name')!r}" if entry.get("name") else where
    try:
        return CandidateSpec.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: "
            f"{'unknown field' if err['type'] == 'extra_forbidden' else err['msg']}"
            for err in exc.errors())
        raise CatalogError(f"{label} is malformed: {problems}") from None


def _check_unique(specs: list[CandidateSpec], where: str) -> None:
    seen: set[str] = set()
    duplicates = sorted({s.name for s in specs if s.name in seen or seen.add(s.name)})
    if duplicates:
        raise CatalogError(f"{where} names a candidate more than once: {', '.join(duplicates)}")


def load_catalog(path: str | Path | None = None) -> dict[str, CandidateSpec]:
    """The catalog as ``{name: spec}``, every entry validated; duplicate names are an error."""
    source = Path(path or DEFAULT_CATALOG)
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"candidate catalog {source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("candidates", []), list):
        raise CatalogError(f"candidate catalog {source}: expected 'candidates:' with a list")
    unknown = set(data) - {"candidates"}
    if unknown:
        raise CatalogError(f"candidate catalog {source}: unknown top-level keys {sorted(unknown)}")
    specs = [parse_candidate(entry, f"{source.name} entry #{i}")
             for i, entry in enumerate(data.get("candidates") or [])]
    _check_unique(specs, f"candidate catalog {source}")
    return {s.name: s for s in specs}


def select_candidates(selection: list[Any] | None, path: str | Path | None = None
                      ) -> list[CandidateSpec]:
    """Resolve a params-form selection: names from the catalog, or whole entries (dicts)."""
    catalog = load_catalog(path)
    if not selection:
        return list(catalog.values())
    chosen = []
    for i, item in enumerate(selection):
        if isinstance(item, dict):
            chosen.append(parse_candidate(item, f"selected candidate #{i}"))
        elif isinstance(item, str) and item in catalog:
            chosen.append(catalog[item])
        else:
            raise CatalogError(f"unknown candidate {item!r}; the catalog has {sorted(catalog)}")
    _check_unique(chosen, "the candidate selection")
    return chosen


def on_queue(specs: list[CandidateSpec], queue: str, served: list[str]) -> list[CandidateSpec]:
    """The candidates that train on executor ``queue``, once every candidate's queue is checked
    against ``served``, the queues the cycle DAG has a training task for (a candidate on any
    other queue would never train: that fails here, named)."""
    unserved = {s.name: s.resources.queue for s in specs if s.resources.queue not in served}
    if unserved:
        raise CatalogError(
            f"candidates ask for executor queues the cycle has no training task for: {unserved}; "
            f"it trains on {served} (set FLYWHEEL_TRAINING_QUEUES where the DAG is parsed to add "
            "one, and run a worker that serves it)")
    return [s for s in specs if s.resources.queue == queue]

