"""The candidate catalog: which base models the cycle fine-tunes, how, and with what resources.

The default catalog is ``tasks/configs/candidates.yaml``; a cycle's params form may pass its own
list of names (picked from the catalog) or whole entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CATALOG = CONFIG_DIR / "candidates.yaml"


class Hyperparameters(BaseModel):
    """Training settings of one candidate."""

    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                 "gate_proj", "up_proj", "down_proj"],
        description="Linear layers that get LoRA adapters.")
    modules_to_save: list[str] = Field(
        default_factory=lambda: ["norm", "embed_tokens"],
        description=("Modules trained in full and saved beside the adapters. For the tiny, "
                     "briefly pre-trained offline bases, the RMSNorm weights and token "
                     "embeddings are what lets routing be learned at all (LoRA on the linear "
                     "layers alone stayed at chance); set [] for a well pre-trained base."))
    learning_rate: float = Field(2e-3, gt=0, le=1.0, description="Peak learning rate (AdamW).")
    epochs: float = Field(8, gt=0, le=1000, description="Passes over the training split.")
    batch_size: int = Field(16, ge=1, le=4096, description="Micro-batch size per rank.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps warming up the LR.")
    max_seq_len: int = Field(96, ge=8, le=32768, description="Prompt + answer tokens kept.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")


class CandidateSpec(BaseModel):
    """One entry of the catalog."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                      description="Unique candidate name (used in run and model names).")
    base_model: str = Field(min_length=1, description=(
        "Built-in offline recipe name, local Hugging Face model folder, or hub id."))
    method: Literal["lora"] = Field("lora", description="Fine-tuning method.")
    deepspeed_config: str = Field("ds_zero2.json", description=(
        "DeepSpeed config: a file name in tasks/configs/ or a path."))
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)

    def deepspeed_config_path(self) -> Path:
        path = Path(self.deepspeed_config)
        resolved = path if path.is_absolute() or path.exists() else CONFIG_DIR / path
        if not resolved.is_file():
            raise FileNotFoundError(f"candidate {self.name}: DeepSpeed config {path} not found")
        return resolved


def load_catalog(path: str | Path | None = None) -> dict[str, CandidateSpec]:
    """The catalog as ``{name: spec}``, validated; duplicate names are an error."""
    data = yaml.safe_load(Path(path or DEFAULT_CATALOG).read_text()) or {}
    specs = [CandidateSpec.model_validate(entry) for entry in data.get("candidates", [])]
    names = [s.name for s in specs]
    if len(names) != len(set(names)):
        raise ValueError(f"candidate catalog has duplicate names: {names}")
    return {s.name: s for s in specs}


def select_candidates(selection: list[Any] | None, path: str | Path | None = None
                      ) -> list[CandidateSpec]:
    """Resolve a params-form selection: names from the catalog, or whole entries (dicts)."""
    catalog = load_catalog(path)
    if not selection:
        return list(catalog.values())
    chosen = []
    for item in selection:
        if isinstance(item, dict):
            chosen.append(CandidateSpec.model_validate(item))
        elif item in catalog:
            chosen.append(catalog[item])
        else:
            raise ValueError(f"unknown candidate {item!r}; the catalog has {sorted(catalog)}")
    return chosen
