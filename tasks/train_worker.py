"""The training process: fine-tunes one candidate router with a DeepSpeed engine.

It is started by :mod:`tasks.finetune` under a launcher, one process per device::

    python -m torch.distributed.run --standalone --nproc_per_node 1 -m tasks.train_worker JOB.json

``JOB.json`` is a :class:`tasks.finetune.TrainJob`. On a CPU it runs one gloo rank; on GPUs the same
file trains one rank per GPU (NCCL), and a hostfile spreads it over nodes.

What it trains depends on the candidate: a causal LM (LoRA, full SFT, prompt tuning or p-tuning
through peft) that completes the routing prompt with an expert's name, or an encoder sequence
classifier (LoRA with the head trained in full, or full fine-tuning).

A job survives being killed: every ``checkpoint_every`` optimizer steps the engine writes a
DeepSpeed checkpoint (model, optimizer, LR schedule, RNG state, the step and the position in the
epoch's data order) under ``checkpoints/``; started again on the same folder (an Airflow retry), it
loads the latest one and continues with the same batches it would have seen, to the same number of
optimizer steps. While it runs, rank 0 shows a progress bar in the task log and sends the loss curve
to the MLflow run its parent opened. At the end rank 0 writes the weights (``adapter/`` or
``model/``) and ``train_metrics.json`` (loss per step, tokens/s, wall and CPU time, peak memory,
and on a CPU where each step's time went: forward, backward, optimizer step).
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
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = "checkpoints"


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


def causal_rows(examples: list[dict], tokenizer, max_len: int) -> list[dict]:
    """Prompt + `` expert`` + EOS, with the prompt masked out of the loss."""
    from tasks.prompts import format_prompt, format_target

    rows = []
    for ex in examples:
        prompt = tokenizer(format_prompt(ex["query"]), add_special_tokens=False)["input_ids"]
        answer = tokenizer(format_target(ex["expert"]), add_special_tokens=False)["input_ids"]
        answer = answer + [tokenizer.eos_token_id]
        prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        prompt = (prefix + prompt)[-(max_len - len(answer)):]  # keep the answer, trim the query
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return rows


def encoder_rows(examples: list[dict], tokenizer, max_len: int, labels: list[str]) -> list[dict]:
    """The query tokenised as the encoder was pre-trained, and the expert's label index."""
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
    """Right-padded tensors; ``labels`` per token (causal LM) or one per row (classifier)."""
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
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_batches(n_rows: int, batch_size: int, world_size: int, rank: int, seed: int,
                  epoch: int) -> list[list[int]]:
    """This rank's micro-batches (row indices) of one epoch: a seeded shuffle per epoch.

    The order depends only on (seed, epoch), which is what lets a resumed job continue with the
    batches the killed one would have seen next.
    """
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n_rows), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def batch_digest(indices: list[int]) -> str:
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


def deepspeed_config(path: Path, micro_batch: int, accumulation: int) -> dict:
    """The config file with its ``auto`` values filled in for this job."""
    config = json.loads(path.read_text())
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = micro_batch
    if config.get("gradient_accumulation_steps", "auto") == "auto":
        config["gradient_accumulation_steps"] = accumulation
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above
    return config


# --------------------------------------------------------------------------------------------
# Model


def build_model(job) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for the job's family and method, trainable parameters marked."""
    import torch
    from transformers import AutoTokenizer, set_seed

    hp = job.hyperparameters
    set_seed(job.seed)  # before any new weights (LoRA, soft prompt, classifier head) are drawn
    tokenizer = AutoTokenizer.from_pretrained(job.base_model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if job.family == "encoder":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            job.base_model_path, num_labels=len(job.labels), dtype=torch.float32,
            id2label=dict(enumerate(job.labels)),
            label2id={label: i for i, label in enumerate(job.labels)})
        task_type = "SEQ_CLS"
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(job.base_model_path, dtype=torch.float32)
        task_type = "CAUSAL_LM"
    if job.method == "full":
        model.requires_grad_(True)
        return model, tokenizer

    from peft import get_peft_model

    if job.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
            target_modules=hp.lora_targets(job.family),
            modules_to_save=hp.saved_modules(job.family) or None, task_type=task_type)
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
    return get_peft_model(model, peft_config), tokenizer


# --------------------------------------------------------------------------------------------
# Live tracking and progress


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


# --------------------------------------------------------------------------------------------
# Training


def train(job_path: Path) -> dict:
    """Run (or resume) one training job; returns the metrics rank 0 writes."""
    import deepspeed
    import torch
    from tqdm import tqdm

    from tasks.finetune import TrainJob

    job = TrainJob.model_validate_json(Path(job_path).read_text())
    hp = job.hyperparameters
    out = Path(job.output_dir)
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not torch.cuda.is_available():
        torch.set_num_threads(job.threads)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    accumulation = hp.gradient_accumulation_steps
    ds_config = deepspeed_config(Path(job.deepspeed_config), hp.batch_size, accumulation)
    prepare_deepspeed_ops(ds_config)
    deepspeed.init_distributed(dist_backend=backend)

    model, tokenizer = build_model(job)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    examples = read_examples(job.train_path)
    rows = (encoder_rows(examples, tokenizer, hp.max_seq_len, job.labels)
            if job.family == "encoder" else causal_rows(examples, tokenizer, hp.max_seq_len))
    class_weights = (class_weight_tensor(hp.class_weights, job.labels)
                     if job.family == "encoder" else None)
    micro_per_epoch = len(epoch_batches(len(rows), hp.batch_size, world_size, rank, job.seed, 0))
    total_steps = max(1, math.ceil(micro_per_epoch * hp.epochs / accumulation))
    if hp.max_steps:
        total_steps = min(total_steps, hp.max_steps)
    warmup = max(1, int(total_steps * hp.warmup_ratio))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=hp.learning_rate, weight_decay=hp.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    engine, optimizer, _, schedule = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule,
        config=ds_config)

    # where the run stands: fresh, or restored from the latest checkpoint of a killed attempt
    state: dict[str, Any] = {"step": 0, "epoch": 0, "position": 0, "losses": [],
                             "batch_digests": [], "tokens": 0, "seconds": 0.0, "attempts": []}
    checkpoints = out / CHECKPOINT_DIR
    resumed_from = 0
    if (checkpoints / "latest").is_file():
        path, client_state = engine.load_checkpoint(
            str(checkpoints), load_module_strict=job.method == "full",
            load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None or not client_state:
            raise RuntimeError(f"could not load the checkpoint named by {checkpoints / 'latest'}")
        state.update({k: client_state[k] for k in state})
        torch.set_rng_state(client_state["rng_cpu"])
        if torch.cuda.is_available() and client_state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(client_state["rng_cuda"])
        resumed_from = state["step"]
        if rank == 0:
            print(f"resumed from checkpoint {path} at step {resumed_from}/{total_steps}",
                  flush=True)

    live = LiveMetrics(job.tracking_uri if rank == 0 else None, job.mlflow_run_id, hp.log_every)
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {job.candidate}",
               disable=rank != 0, mininterval=0 if sys.stdout.isatty() else 10.0,
               file=sys.stdout if sys.stdout.isatty() else _LogLines(), dynamic_ncols=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    attempt_tokens = 0
    micro_losses: list[float] = []
    # where a step's time goes, summed over this attempt: wall and process CPU seconds of
    # forward, backward and step. Only on a CPU, where each call finishes before it returns
    # (CUDA kernels run asynchronously, so host-side times would mislead).
    phases = {name: [0.0, 0.0] for name in ("forward", "backward", "step")}
    clock = _PhaseClock(phases) if engine.device.type == "cpu" else None
    engine.train()
    while state["step"] < total_steps:
        batches = epoch_batches(len(rows), hp.batch_size, world_size, rank, job.seed,
                                state["epoch"])
        while state["position"] < len(batches) and state["step"] < total_steps:
            indices = batches[state["position"]]
            batch = collate([rows[i] for i in indices], tokenizer.pad_token_id)
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            if clock:
                clock.start()
            if class_weights is None:
                loss = engine(**batch).loss
            else:  # the classifier's cross-entropy, with the catalog's weight per label
                logits = engine(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).logits
                loss = torch.nn.functional.cross_entropy(
                    logits.float(), batch["labels"], weight=class_weights.to(logits.device))
            if clock:
                clock.lap("forward")
            engine.backward(loss)
            if clock:
                clock.lap("backward")
            engine.step()
            if clock:
                clock.lap("step")
            state["position"] += 1
            state["batch_digests"].append(batch_digest(indices))
            n_tokens = int(batch["attention_mask"].sum()) * world_size
            state["tokens"] += n_tokens
            attempt_tokens += n_tokens
            micro_losses.append(float(loss.detach()))
            if not engine.is_gradient_accumulation_boundary():
                continue
            state["step"] += 1
            step = state["step"]
            state["losses"].append(sum(micro_losses) / len(micro_losses))
            micro_losses.clear()
            elapsed = time.perf_counter() - started
            live.add(step, train_loss=state["losses"][-1], learning_rate=schedule.get_last_lr()[0],
                     tokens_per_second=attempt_tokens / elapsed if elapsed else 0.0)
            live.flush(step)
            bar.update(1)
            bar.set_postfix(loss=f"{state['losses'][-1]:.3f}",
                            lr=f"{schedule.get_last_lr()[0]:.1e}", refresh=False)
            if hp.checkpoint_every and step % hp.checkpoint_every == 0 and step < total_steps:
                _save_checkpoint(engine, checkpoints, state, started, resumed_from, job, rank)
        if state["position"] >= len(batches):
            state["epoch"] += 1
            state["position"] = 0
    live.flush(state["step"], force=True)
    bar.close()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started

    losses = state["losses"]
    metrics = {
        "steps": state["step"],
        "planned_steps": total_steps,
        "resumed_from_step": resumed_from,
        "attempts": [*state["attempts"], {"from_step": resumed_from, "to_step": state["step"],
                                          "seconds": seconds}],
        "epochs": state["epoch"] + state["position"] / max(1, micro_per_epoch),
        "examples": len(rows),
        "losses": losses,
        "batch_digests": state["batch_digests"],
        "first_loss": losses[0],
        "final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "train_seconds": state["seconds"] + seconds,
        "tokens": state["tokens"],
        # this attempt's throughput: a resumed attempt's clock starts at the resume
        "tokens_per_second": attempt_tokens / seconds if seconds else 0.0,
        "attempt_tokens": attempt_tokens,
        "attempt_seconds": seconds,
        # CPU seconds of this process over this attempt's loop (all its threads): on a shared
        # machine, tokens per CPU-second moves far less with other jobs' load than tokens/s
        "attempt_cpu_seconds": cpu_seconds,
        "phase_seconds": {k: v[0] for k, v in phases.items()} if clock else None,
        "phase_cpu_seconds": {k: v[1] for k, v in phases.items()} if clock else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "world_size": world_size,
        "backend": backend,
        "device": str(engine.device),
        "zero_stage": engine.zero_optimization_stage(),
        "peak_memory_mb": peak_memory_mb(engine.device),
        "peak_memory_kind": "cuda_max_allocated" if engine.device.type == "cuda" else "max_rss",
        "live_logging": live.ok,
    }
    _save_weights(engine, tokenizer, job, out, rank)
    if rank == 0:
        (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
        shutil.rmtree(checkpoints, ignore_errors=True)  # done: the weights are what is kept
    return metrics


class _PhaseClock:
    """Adds the wall and CPU time since the last mark to a phase's totals (``[wall, cpu]``)."""

    def __init__(self, totals: dict[str, list[float]]) -> None:
        self.totals = totals
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.totals[phase][0] += wall - self.wall
        self.totals[phase][1] += cpu - self.cpu
        self.wall, self.cpu = wall, cpu


def _save_checkpoint(engine, folder: Path, state: dict, started: float, resumed_from: int,
                     job, rank: int) -> None:
    """A DeepSpeed checkpoint of everything needed to continue exactly where this step ended.

    ``state`` holds what earlier attempts did (their time and steps); this attempt's share since
    ``started`` is added to the saved copy only.

    DeepSpeed writes ``latest`` only after the tag's files are complete, so a job killed while
    saving resumes from the previous checkpoint. Older tags beyond ``keep_checkpoints`` go.
    """
    import torch

    seconds = time.perf_counter() - started
    client_state = {**state, "seconds": state["seconds"] + seconds,
                    "attempts": [*state["attempts"], {"from_step": resumed_from,
                                                      "to_step": state["step"],
                                                      "seconds": seconds}],
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    engine.save_checkpoint(str(folder), tag=f"step{state['step']:08d}", client_state=client_state,
                           exclude_frozen_parameters=job.method != "full")
    if rank == 0:
        tags = sorted(p for p in folder.glob("step*") if p.is_dir())
        for old in tags[:-job.hyperparameters.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


def _save_weights(engine, tokenizer, job, out: Path, rank: int) -> None:
    """Rank 0 writes the trained weights (peft adapter or whole model), the tokenizer, and
    ``flywheel_training.json`` naming the base model they belong to.

    Under ZeRO-3 the parameters are sharded across ranks: every rank joins the gather, and rank 0
    saves the full tensors.
    """
    import contextlib

    import deepspeed

    folder = out / ("model" if job.method == "full" else "adapter")
    gather = (deepspeed.zero.GatheredParameters(list(engine.module.parameters()),
                                                modifier_rank=None)
              if engine.zero_optimization_stage() == 3 else contextlib.nullcontext())
    with gather:
        if rank == 0:
            engine.module.save_pretrained(folder)
    if rank != 0:
        return
    tokenizer.save_pretrained(folder)
    (folder / "flywheel_training.json").write_text(json.dumps({
        "candidate": job.candidate, "family": job.family, "method": job.method,
        "base_model": job.base_model, "base_model_path": job.base_model_path,
        "labels": job.labels, "dataset_digest": job.dataset_digest}, indent=1))


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies.

    torchrun starts its workers in sessions of their own, so when the launcher is killed (a task
    timeout, a lost Airflow worker) they would train on, orphaned, beside the retry writing the
    same folder. Used for the worker and, from :mod:`tasks.finetune`, for the launcher itself.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--local")]
    if len(args) != 1:
        print("usage: python -m tasks.train_worker JOB.json", file=sys.stderr)
        return 2
    train(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
