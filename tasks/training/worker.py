"""The training process: fine-tunes one candidate router with transformers' ``Trainer``, DeepSpeed
underneath.

It is started by :mod:`tasks.training.finetune` under a launcher, one process per device::

    python -m torch.distributed.run --standalone --nproc_per_node 1 -m tasks.training.worker
    JOB.json

``JOB.json`` is a :class:`TrainJob`. On a CPU it runs one gloo rank; on GPUs the
same file trains one rank per GPU (NCCL), and a hostfile spreads it over nodes. DeepSpeed comes in
through its config file (``TrainingArguments(deepspeed=PATH)``; ``auto`` values come from the job).

What it trains depends on the candidate: a causal LM (LoRA, full SFT, prompt tuning or p-tuning
through peft) that completes the routing prompt (:mod:`tasks.core.prompts`) with an expert's name,
the loss on the answer tokens only; or a sequence classifier, one label per expert, on any backbone
``AutoModelForSequenceClassification`` takes (a BERT-style sentence encoder, or a Llama-style
decoder whose last token feeds a ``score`` head), by LoRA with the head trained in full or in full.

Batches are padded to their longest row, and rows of similar length are batched together (seeded,
so the order depends only on the seed and the epoch). A job survives being killed: every
``checkpoint_every`` optimizer steps the Trainer writes ``checkpoints/checkpoint-N`` (DeepSpeed
model and optimizer states, LR schedule, RNG states, trainer state) and this worker adds
``flywheel_state.json`` (loss curve, batch fingerprints, tokens, time) last, which marks the
checkpoint complete. Started again on the same folder (an Airflow retry), it resumes from the newest
complete checkpoint, skips the batches it had already seen and stops at the planned step count.
While it runs, rank 0 shows a progress bar in the task log and sends the loss curve to the MLflow
run its parent opened. At the end rank 0 writes the weights (``adapter/`` or ``model/``) and
``train_metrics.json`` (loss per step, tokens/s, wall and CPU time, peak memory, and on a CPU where
each step's time went: forward, backward, optimizer step, everything else).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.core.files import write_json_atomic
from tasks.training.catalog import Hyperparameters

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
#: Written into a checkpoint folder after everything else: its presence marks a complete checkpoint.
STATE_FILE = "flywheel_state.json"
#: Batches whose rows are sorted by length together (a seeded shuffle first, then this grouping).
LENGTH_GROUP_BATCHES = 16


class TrainJob(BaseModel):
    """What the training worker reads: everything resolved to paths."""

    candidate: str
    family: Literal["causal_lm", "encoder", "linear_probe"] = "causal_lm"
    method: Literal["lora", "full", "prompt_tuning", "p_tuning", "linear_probe"] = "lora"
    base_model: str = Field("", description="The catalog's base model reference.")
    base_model_path: str
    train_path: str
    dataset_digest: str = ""
    output_dir: str
    deepspeed_config: str
    hyperparameters: Hyperparameters
    labels: list[str] = Field(min_length=1, description=(
        "The workload's experts, in order: a classifier's labels (encoder family), the "
        "choices named in a causal router's prompt."))
    fallback_expert: str | None = Field(None, description="The expert of queries no other "
                                                          "expert handles (none: no fallback).")
    system_prompt: str | None = Field(None, description="The workload's system message (chat "
                                                        "models; none: the default).")
    seed: int = 0
    threads: int = 2
    fingerprint: str = Field("", description="Identity of the job, for resuming on retry.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI for live metrics.")
    mlflow_run_id: str | None = Field(None, description="MLflow run the worker logs into.")


# --------------------------------------------------------------------------------------------
# Data


def read_examples(path: str | Path) -> list[dict]:
    """The ``{"query", "expert"}`` rows of a curated split (JSONL)."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or "query" not in row or "expert" not in row:
            raise ValueError(f"{path}:{n}: expected an object with 'query' and 'expert'")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no training examples")
    return rows


def fit_prompt(tokenizer, query: str, experts: Sequence[str], budget: int,
               system: str | None = None) -> list[int]:
    """The prompt's token ids in at most ``budget`` tokens, shortening the query, never the rest.

    The instruction (or chat template and system message) and the answer are what the router
    learns from on every row; a long query loses its tail instead.
    """
    from tasks.core.prompts import prompt_ids

    prompt = prompt_ids(tokenizer, query, experts, system)
    if len(prompt) <= budget:
        return prompt
    words = tokenizer(query, add_special_tokens=False)["input_ids"]
    keep = len(words) - (len(prompt) - budget)
    while keep > 0:
        prompt = prompt_ids(tokenizer, tokenizer.decode(words[:keep]), experts, system)
        if len(prompt) <= budget:
            return prompt
        keep -= len(prompt) - budget
    fixed = len(prompt_ids(tokenizer, "", experts, system))
    raise ValueError(f"max_seq_len leaves {budget} tokens for the prompt, but the prompt without "
                     f"its query already takes {fixed}: raise max_seq_len")


def causal_rows(examples: list[dict], tokenizer, max_len: int,
                experts: Sequence[str], system: str | None = None) -> list[dict]:
    """Prompt + answer (`` expert`` and its end token), the loss on the answer tokens only."""
    from tasks.core.prompts import answer_ids

    rows = []
    for ex in examples:
        answer = answer_ids(tokenizer, ex["expert"])
        prompt = fit_prompt(tokenizer, ex["query"], experts, max_len - len(answer), system)
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return rows


def encoder_rows(examples: list[dict], tokenizer, max_len: int, labels: list[str]) -> list[dict]:
    """The query tokenised as the backbone was pre-trained, and the expert's label index."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({ex["expert"] for ex in examples} - set(index))
    if unknown:
        raise ValueError(f"training data names experts the classifier has no label for: {unknown}")
    return [{"input_ids": tokenizer(ex["query"], truncation=True, max_length=max_len)["input_ids"],
             "label": index[ex["expert"]]} for ex in examples]


def class_weight_tensor(weights: dict[str, float] | None, labels: list[str]):
    """The per-label loss weights in label order (``None`` when unweighted); a weight for a label
    the classifier does not have is an error, not silently ignored."""
    if not weights:
        return None
    import torch

    unknown = sorted(set(weights) - set(labels))
    if unknown:
        raise ValueError(f"class_weights names labels the classifier does not have: {unknown} "
                         f"(labels: {labels})")
    return torch.tensor([float(weights.get(label, 1.0)) for label in labels])


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-padded to the batch's longest row; ``labels`` per token (causal LM) or one per row
    (classifier); ``row_ids`` (the rows' dataset indices) when the rows carry them."""
    import torch

    width = max(len(row["input_ids"]) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        mask[i, :n] = 1
    if "label" in batch[0]:
        labels = torch.tensor([row["label"] for row in batch], dtype=torch.long)
    else:
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, row in enumerate(batch):
            labels[i, :len(row["labels"])] = torch.tensor(row["labels"])
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if "row_id" in batch[0]:
        out["row_ids"] = torch.tensor([row["row_id"] for row in batch], dtype=torch.long)
    return out


class RowDataset:
    """The tokenised rows as a map-style dataset; each item carries its index for fingerprints."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.rows[i], "row_id": i}


def epoch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[int]:
    """One epoch's row order: a shuffle seeded by (seed, epoch), then grouped by length.

    Rows are cut into groups of :data:`LENGTH_GROUP_BATCHES` batches; each group is sorted by
    length and split into batches, so a batch pads little; then the batches are shuffled (the
    short last batch stays last, so consecutive ``batch_size`` slices are these batches). The
    order depends only on (seed, epoch): a resumed job sees the batches the killed one would have.
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    group = batch_size * LENGTH_GROUP_BATCHES
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start:start + group], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    last = [batches.pop()] if len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [i for batch in shuffled + last for i in batch]


class EpochSampler:
    """The Trainer's sampler: :func:`epoch_order` for the epoch it was last set to."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(epoch_order(self.lengths, self.batch_size, self.seed, self.epoch))


def batch_digest(indices: Sequence[int]) -> str:
    """A short fingerprint of one micro-batch's rows (to check data order across a resume)."""
    return hashlib.sha1(",".join(map(str, indices)).encode()).hexdigest()[:12]


def prepare_deepspeed_ops(ds_config: dict) -> None:
    """Let DeepSpeed JIT-compile only the ops training uses, once per environment.

    * ``deepspeed_shm_comm``: DeepSpeed's CPU backend compiles it when it starts (~1 min, several
      under load), yet only inference tensor parallelism (``inference_all_reduce``) calls it;
      ZeRO's collectives go through ``torch.distributed`` (gloo). Unless the config asks for tensor
      parallelism, it is marked incompatible in DeepSpeed's own table of ops, which is the path
      DeepSpeed takes on platforms without it (plain gloo).
    * Whichever op does get built (``cpu_adam`` with ``zero_force_ds_cpu_optimizer``, say) is
      cached under ``TORCH_EXTENSIONS_DIR`` by ninja, which rebuilds everything when the cached
      build was made by another ninja version (1.11 and 1.13 hash command lines differently, so
      each sees "command line changed"). A machine often has two: the system's and the pinned one
      in the environment. The environment's is put first on ``PATH`` so every process agrees.
    """
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if (Path(bin_dir) / "ninja").is_file() and path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir
    os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                          str(Path(sys.prefix) / "var" / "torch_extensions"))
    if not ds_config.get("tensor_parallel"):
        import deepspeed.ops
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def configure_cpu_ranks() -> dict:
    """Tell accelerate about the gloo ranks DeepSpeed trains on when there is no GPU.

    For a DeepSpeed job, ``TrainingArguments`` lets accelerate pick the backend, and without a GPU
    it picks none: DeepSpeed still joins all the ranks, but accelerate counts one process, so
    every rank would read every batch and act as the main process (measured with accelerate
    1.15: two torchrun ranks each saw all eight batches of an epoch). Set up here with the gloo
    backend, accelerate shards the batches across the ranks and only rank 0 writes; the
    ``TrainingArguments`` then use this state (their ``accelerator_config``, returned).
    """
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # as TrainingArguments would
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo", timeout=timedelta(minutes=30))
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"use_configured_state": True}


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint (``checkpoint-N`` holding :data:`STATE_FILE`) in ``folder``.

    A folder without the state file is one a killed attempt was still writing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*")
            if p.name.removeprefix(CHECKPOINT_PREFIX).isdigit() and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), default=None)


# --------------------------------------------------------------------------------------------
# Model


def _linear_names(model) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)}


def lora_targets(model, hp, family: str) -> list[str] | str:
    """The candidate's LoRA target modules; by default the family's usual layer names where the
    backbone has them (``query``/``key``/``value``/``dense`` in BERT, ``q_proj``... in Llama),
    else every linear layer but the output head (peft's ``all-linear``), so a classifier on a
    decoder backbone gets adapters too."""
    if hp.target_modules is not None:
        return list(hp.target_modules)
    names = _linear_names(model)
    defaults = [t for t in hp.lora_targets(family) if t in names]
    return defaults or "all-linear"


def saved_modules(model, hp, family: str) -> list[str] | None:
    """Modules trained in full beside the adapters: the candidate's, or the family defaults the
    backbone has (peft adds a sequence classifier's head, ``classifier`` or ``score``, itself)."""
    if hp.modules_to_save is not None:
        return list(hp.modules_to_save) or None
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [m for m in hp.saved_modules(family) if m in present] or None


def build_model(job) -> tuple[Any, Any, dict]:
    """``(model, tokenizer, peft_settings)`` for the job's family and method, trainable parameters
    marked. Under ZeRO-3 call it after the ``TrainingArguments``, so the weights load sharded."""
    import torch
    from transformers import AutoTokenizer, set_seed

    hp = job.hyperparameters
    set_seed(job.seed)  # before any new weights (LoRA, soft prompt, classifier head) are drawn
    tokenizer = AutoTokenizer.from_pretrained(job.base_model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if job.family == "encoder":
        from transformers import AutoModelForSequenceClassification

        # a decoder backbone (LlamaForSequenceClassification) reads the last non-pad token:
        # it needs the pad id in its config
        model = AutoModelForSequenceClassification.from_pretrained(
            job.base_model_path, num_labels=len(job.labels), dtype=torch.float32,
            id2label=dict(enumerate(job.labels)),
            label2id={label: i for i, label in enumerate(job.labels)},
            pad_token_id=tokenizer.pad_token_id)
        task_type = "SEQ_CLS"
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(job.base_model_path, dtype=torch.float32)
        task_type = "CAUSAL_LM"
    if job.method == "full":
        model.requires_grad_(True)
        return model, tokenizer, {}

    from peft import get_peft_model

    settings: dict[str, Any] = {}
    if job.method == "lora":
        from peft import LoraConfig

        settings = {"target_modules": lora_targets(model, hp, job.family),
                    "modules_to_save": saved_modules(model, hp, job.family)}
        peft_config = LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha,
                                 lora_dropout=hp.lora_dropout, task_type=task_type, **settings)
    elif job.method == "prompt_tuning":
        from peft import PromptTuningConfig

        # start the soft prompt from real token embeddings of an instruction: it trains faster
        # than a random one and stays inside the embedding space the base model knows
        peft_config = PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=hp.num_virtual_tokens,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text="Route this employee question to the right expert.",
            tokenizer_name_or_path=job.base_model_path)
    else:  # p_tuning
        from peft import PromptEncoderConfig

        peft_config = PromptEncoderConfig(
            task_type=task_type, num_virtual_tokens=hp.num_virtual_tokens,
            encoder_hidden_size=hp.encoder_hidden_size)
    return get_peft_model(model, peft_config), tokenizer, settings


# --------------------------------------------------------------------------------------------
# Live tracking, progress and the record a checkpoint carries


class LiveMetrics:
    """Rank 0's view into the MLflow run the parent opened: batches of step metrics, sent every
    ``every`` optimizer steps, so the loss curve is visible while the job runs. A tracking
    failure is reported once and never stops training; the parent logs the full curve then."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, every: int) -> None:
        self.every = every
        self.pending: list[tuple[str, float, int]] = []
        self.client = None
        self.run_id = run_id
        self.ok = bool(tracking_uri and run_id)
        if self.ok:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking_uri)

    def add(self, step: int, **values: float) -> None:
        if self.ok:
            self.pending.extend((key, float(value), step) for key, value in values.items())

    def flush(self, step: int, force: bool = False) -> None:
        if not (self.ok and self.pending) or (not force and step % self.every):
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[
                Metric(key, value, stamp, s) for key, value, s in self.pending])
            self.pending.clear()
        except Exception as exc:  # noqa: BLE001 - tracking must not kill a training job
            print(f"live MLflow logging stopped: {exc}", file=sys.stderr, flush=True)
            self.ok = False


class _LogLines:
    """A file for tqdm that writes each refresh as its own line: a task log is not a terminal,
    and carriage-return updates would pile up into one unreadable line."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n")
        if text:
            sys.stdout.write(text + "\n")

    def flush(self) -> None:
        sys.stdout.flush()


def peak_memory_mb(device) -> float:
    """Peak memory of this rank: CUDA max allocated on a GPU, max RSS on a CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Ledger:
    """What the job has done, over all its attempts: the loss per optimizer step, a fingerprint of
    every micro-batch, tokens and time. It travels in each checkpoint (:data:`STATE_FILE`), so a
    resumed attempt's ``train_metrics.json`` covers the whole run."""

    def __init__(self, saved: dict | None, from_step: int, world_size: int) -> None:
        saved = saved or {}
        self.losses: list[float] = list(saved.get("losses", []))
        self.batch_digests: list[str] = list(saved.get("batch_digests", []))
        self.tokens = int(saved.get("tokens", 0))
        self.earlier_seconds = float(saved.get("seconds", 0.0))
        self.earlier_attempts: list[dict] = list(saved.get("attempts", []))
        self.from_step, self.world_size = from_step, world_size
        self.attempt_tokens = self.attempt_padded = 0
        self.started = self.cpu_started = 0.0

    def start(self) -> None:
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def batch(self, row_ids: list[int], tokens: int, padded: int) -> None:
        """One micro-batch of this rank (tokens counted for all ranks, as equal shares)."""
        self.batch_digests.append(batch_digest(row_ids))
        self.tokens += tokens * self.world_size
        self.attempt_tokens += tokens * self.world_size
        self.attempt_padded += padded * self.world_size

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def snapshot(self, step: int) -> dict:
        """The record a checkpoint at ``step`` carries (this attempt's time so far included)."""
        seconds = self.elapsed()
        return {"step": step, "losses": self.losses, "batch_digests": self.batch_digests,
                "tokens": self.tokens, "seconds": self.earlier_seconds + seconds,
                "attempts": [*self.earlier_attempts, {"from_step": self.from_step,
                                                      "to_step": step, "seconds": seconds}]}


class PhaseTimer:
    """Wall and process CPU seconds spent in each phase of a step, summed over the attempt. Only
    on a CPU, where each call finishes before it returns (CUDA kernels run asynchronously, so
    host-side times would mislead)."""

    PHASES = ("forward", "backward", "step")

    def __init__(self) -> None:
        self.totals = {name: [0.0, 0.0] for name in self.PHASES}

    def timed(self, phase: str, function):
        def run(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[phase][0] += time.perf_counter() - wall
                self.totals[phase][1] += time.process_time() - cpu
        return run


def _callbacks(ledger: Ledger, live: LiveMetrics, sampler: EpochSampler, candidate: str,
               rank: int, start_step: int):
    """The Trainer callbacks: sampler epoch, loss record, live MLflow curve, progress bar, and the
    checkpoint record written last into each checkpoint folder."""
    from tqdm import tqdm
    from transformers import TrainerCallback

    class FlywheelCallback(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            ledger.start()
            tty = sys.stdout.isatty()
            self.bar = tqdm(total=state.max_steps, initial=start_step, desc=f"train {candidate}",
                            disable=rank != 0, mininterval=0 if tty else 10.0,
                            file=sys.stdout if tty else _LogLines(), dynamic_ncols=True)

        def on_epoch_begin(self, args, state, control, **kwargs):
            # the Trainer sets the epoch too, but not through every wrapper (a resumed epoch on
            # several ranks): the epoch a step belongs to is the whole part of state.epoch
            sampler.set_epoch(math.floor((state.epoch or 0.0) + 1e-9))

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(1)
            if state.global_step >= state.max_steps:
                control.should_save = False  # done: the weights are saved instead

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            step = state.global_step
            if len(ledger.losses) < step:
                ledger.losses.append(float(logs["loss"]))
            elapsed = ledger.elapsed()
            live.add(step, train_loss=logs["loss"], learning_rate=logs.get("learning_rate", 0.0),
                     tokens_per_second=ledger.attempt_tokens / elapsed if elapsed else 0.0)
            live.flush(step)
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}",
                                 lr=f"{logs.get('learning_rate', 0.0):.1e}", refresh=False)

        def on_save(self, args, state, control, **kwargs):
            if rank != 0:
                return
            folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            write_json_atomic(folder / STATE_FILE, ledger.snapshot(state.global_step))

        def on_train_end(self, args, state, control, **kwargs):
            live.flush(state.global_step, force=True)
            self.bar.close()

    return [FlywheelCallback()]


def _trainer_class():
    """``Trainer`` with the worker's sampler, micro-batch record, classifier loss and timers."""
    from transformers import Trainer

    class RouterTrainer(Trainer):
        def __init__(self, *args, sampler: EpochSampler, ledger: Ledger, timer: PhaseTimer | None,
                     classifier: bool, class_weights=None, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.router_sampler, self.ledger, self.timer = sampler, ledger, timer
            self.classifier, self.class_weights = classifier, class_weights
            self.engine_timed = False
            if classifier:  # a per-batch mean: the Trainer divides it by the accumulation steps
                self.loss_is_scaled_for_ga = False

        def _get_train_sampler(self, train_dataset=None):
            return self.router_sampler

        def training_step(self, model, inputs, num_items_in_batch=None):
            row_ids = inputs.pop("row_ids")
            self.ledger.batch(row_ids.tolist(), tokens=int(inputs["attention_mask"].sum()),
                              padded=int(inputs["attention_mask"].numel()))
            if self.timer and not self.engine_timed:
                # the DeepSpeed engine, once prepared: its backward and its optimizer step (which
                # accelerate calls from the backward at each accumulation boundary)
                for method in ("backward", "step"):
                    setattr(model, method, self.timer.timed(method, getattr(model, method)))
                self.engine_timed = True
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.timer:
                return self.timer.timed("forward", self._loss)(model, inputs, return_outputs,
                                                               num_items_in_batch)
            return self._loss(model, inputs, return_outputs, num_items_in_batch)

        def _loss(self, model, inputs, return_outputs, num_items_in_batch):
            if not self.classifier:  # the model's own token loss (prompt tokens are -100)
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            import torch

            labels = inputs.pop("labels")
            outputs = model(**inputs)
            weight = (None if self.class_weights is None
                      else self.class_weights.to(outputs.logits.device))
            loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weight)
            return (loss, outputs) if return_outputs else loss

    return RouterTrainer


# --------------------------------------------------------------------------------------------
# Training


def planned_steps(n_rows: int, hp, world_size: int) -> tuple[int, int]:
    """``(micro-batches per epoch on a rank, optimizer steps)`` as the Trainer counts them."""
    micro = math.ceil(math.ceil(n_rows / hp.batch_size) / world_size)
    accumulation = hp.gradient_accumulation_steps
    per_epoch = max(1, micro // accumulation + int(micro % accumulation > 0))
    total = max(1, math.ceil(per_epoch * hp.epochs))
    return micro, min(total, hp.max_steps) if hp.max_steps else total


def train(job_path: Path) -> dict:
    """Run (or resume) one training job; returns the metrics rank 0 writes."""
    import functools

    import torch
    from transformers import PrinterCallback, TrainingArguments

    job = TrainJob.model_validate_json(Path(job_path).read_text())
    if job.family == "linear_probe":  # a frozen encoder and one fitted layer: no optimiser loop
        from tasks.families.linear_probe import train_probe

        return train_probe(job)
    hp = job.hyperparameters
    out = Path(job.output_dir)
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    ds_config = json.loads(Path(job.deepspeed_config).read_text())
    prepare_deepspeed_ops(ds_config)
    clipping = ds_config.get("gradient_clipping", 1.0)

    examples = read_examples(job.train_path)
    micro_per_epoch, total_steps = planned_steps(len(examples), hp, world_size)
    checkpoints = out / CHECKPOINT_DIR
    resume = latest_checkpoint(checkpoints)
    args = TrainingArguments(
        output_dir=str(checkpoints), deepspeed=job.deepspeed_config,
        accelerator_config=None if cuda else configure_cpu_ranks(),
        per_device_train_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        max_steps=total_steps, learning_rate=hp.learning_rate, weight_decay=hp.weight_decay,
        lr_scheduler_type="linear", warmup_steps=max(1, int(total_steps * hp.warmup_ratio)),
        optim="adamw_torch_fused", max_grad_norm=1.0 if clipping == "auto" else float(clipping),
        seed=job.seed,
        logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=True,
        save_strategy="steps" if hp.checkpoint_every else "no",
        save_steps=hp.checkpoint_every or 1, save_total_limit=hp.keep_checkpoints,
        remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=cuda)
    if not cuda:  # after accelerate's set-up, which picks a count when OMP_NUM_THREADS is unset
        torch.set_num_threads(job.threads)

    model, tokenizer, peft_settings = build_model(job)  # after the arguments: ZeRO-3 loads sharded
    trainable = sum(getattr(p, "ds_numel", p.numel())
                    for p in model.parameters() if p.requires_grad)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    classifier = job.family == "encoder"
    rows = (encoder_rows(examples, tokenizer, hp.max_seq_len, job.labels) if classifier
            else causal_rows(examples, tokenizer, hp.max_seq_len, job.labels, job.system_prompt))
    sampler = EpochSampler([len(r["input_ids"]) for r in rows], hp.batch_size, job.seed)

    saved = json.loads((resume / STATE_FILE).read_text()) if resume else None
    resumed_from = saved["step"] if saved else 0
    ledger = Ledger(saved, resumed_from, world_size)
    live = LiveMetrics(job.tracking_uri if rank == 0 else None, job.mlflow_run_id, hp.log_every)
    device = args.device
    timer = PhaseTimer() if device.type == "cpu" else None
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=RowDataset(rows),
        data_collator=functools.partial(collate, pad_id=tokenizer.pad_token_id),
        callbacks=_callbacks(ledger, live, sampler, job.candidate, rank, resumed_from),
        sampler=sampler, ledger=ledger, timer=timer, classifier=classifier,
        class_weights=class_weight_tensor(hp.class_weights, job.labels) if classifier else None)
    trainer.remove_callback(PrinterCallback)  # the progress bar and MLflow carry the loss
    if resume and rank == 0:
        print(f"resuming from {resume} at step {resumed_from}/{total_steps}", flush=True)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = ledger.elapsed()
    cpu_seconds = time.process_time() - ledger.cpu_started
    step = trainer.state.global_step

    losses = ledger.losses
    phase_wall = phase_cpu = None
    if timer:
        phase_wall = {k: v[0] for k, v in timer.totals.items()}
        phase_cpu = {k: v[1] for k, v in timer.totals.items()}
        # data loading, collation, scheduling, logging, callbacks: the loop around the phases
        phase_wall["other"] = max(0.0, seconds - sum(phase_wall.values()))
        phase_cpu["other"] = max(0.0, cpu_seconds - sum(phase_cpu.values()))
    metrics = {
        "steps": step,
        "planned_steps": total_steps,
        "resumed_from_step": resumed_from,
        "attempts": [*ledger.earlier_attempts, {"from_step": resumed_from, "to_step": step,
                                                "seconds": seconds}],
        "epochs": float(trainer.state.epoch or 0.0),
        "examples": len(rows),
        "micro_batches_per_epoch": micro_per_epoch,
        "losses": losses,
        "batch_digests": ledger.batch_digests,
        "first_loss": losses[0],
        "final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "train_seconds": ledger.earlier_seconds + seconds,
        "tokens": ledger.tokens,
        # this attempt's throughput: a resumed attempt's clock starts at the resume
        "tokens_per_second": ledger.attempt_tokens / seconds if seconds else 0.0,
        "attempt_tokens": ledger.attempt_tokens,
        # share of the batches' positions that were real tokens, not padding
        "padding_efficiency": ledger.attempt_tokens / max(1, ledger.attempt_padded),
        "attempt_seconds": seconds,
        # CPU seconds of this process over this attempt's loop (all its threads): on a shared
        # machine, tokens per CPU-second moves far less with other jobs' load than tokens/s
        "attempt_cpu_seconds": cpu_seconds,
        "phase_seconds": phase_wall,
        "phase_cpu_seconds": phase_cpu,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "lora_target_modules": peft_settings.get("target_modules"),
        "modules_to_save": peft_settings.get("modules_to_save"),
        "world_size": world_size,
        "backend": "nccl" if cuda else "gloo",
        "device": str(device),
        "zero_stage": int(ds_config.get("zero_optimization", {}).get("stage", 0)),
        "trainer": "transformers.Trainer",
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "max_rss",
        "live_logging": live.ok,
    }
    _save_weights(trainer, tokenizer, job, out, rank, metrics["zero_stage"])
    if rank == 0:
        (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
        shutil.rmtree(checkpoints, ignore_errors=True)  # done: the weights are what is kept
    return metrics


def _save_weights(trainer, tokenizer, job, out: Path, rank: int, zero_stage: int) -> None:
    """Rank 0 writes the trained weights (peft adapter or whole model), the tokenizer, and
    ``flywheel_training.json`` naming the base model they belong to.

    Under ZeRO-3 the parameters are sharded across ranks: every rank joins the gather, and rank 0
    saves the full tensors.
    """
    import contextlib

    import deepspeed

    module = trainer.model
    folder = out / ("model" if job.method == "full" else "adapter")
    gather = (deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
              if zero_stage == 3 else contextlib.nullcontext())
    with gather:
        if rank == 0:
            module.save_pretrained(folder)
    if rank != 0:
        return
    tokenizer.save_pretrained(folder)
    (folder / "flywheel_training.json").write_text(json.dumps({
        "candidate": job.candidate, "family": job.family, "method": job.method,
        "base_model": job.base_model, "base_model_path": job.base_model_path,
        "labels": job.labels, "fallback_expert": job.fallback_expert,
        "system_prompt": job.system_prompt, "dataset_digest": job.dataset_digest}, indent=1))


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies.

    torchrun starts its workers in sessions of their own, so when the launcher is killed (a task
    timeout, a lost Airflow worker) they would train on, orphaned, beside the retry writing the
    same folder. Used for the worker and, from :mod:`tasks.training.finetune`, for the launcher
    itself.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def leave_process_group() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits: a
    rank that leaves first (only rank 0 saves) with gloo's threads still running aborts at exit
    ("terminate called without an active exception"), failing a training that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--local")]
    if len(args) != 1:
        print("usage: python -m tasks.training.worker JOB.json", file=sys.stderr)
        return 2
    train(Path(args[0]))
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
