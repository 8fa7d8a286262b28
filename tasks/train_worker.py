"""The training process: LoRA fine-tuning of a causal-LM router with a DeepSpeed engine.

It is started by :mod:`tasks.finetune` under a launcher, one process per device::

    python -m torch.distributed.run --standalone --nproc_per_node 1 -m tasks.train_worker JOB.json

``JOB.json`` is a :class:`tasks.finetune.TrainJob`. On a CPU it runs one gloo rank; on GPUs the same
file trains one rank per GPU (NCCL), and a hostfile spreads it over nodes. Rank 0 writes the adapter
and ``train_metrics.json`` (loss per step, tokens/s, wall time, peak memory) into the job's folder.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path


def _tokenize(examples: list[dict], tokenizer, max_len: int) -> list[dict]:
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


def _collate(batch: list[dict], pad_id: int):
    import torch

    width = max(len(row["input_ids"]) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _deepspeed_config(path: Path, micro_batch: int, world_size: int) -> dict:
    """The config file with its ``auto`` values filled in for this job."""
    config = json.loads(path.read_text())
    if config.get("train_micro_batch_size_per_gpu") == "auto":
        config["train_micro_batch_size_per_gpu"] = micro_batch
    if config.get("gradient_accumulation_steps") == "auto":
        config["gradient_accumulation_steps"] = 1
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above
    return config


def train(job_path: Path) -> dict:
    import deepspeed
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader, DistributedSampler
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from tasks.finetune import TrainJob

    job = TrainJob.model_validate_json(job_path.read_text())
    hp = job.hyperparameters
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not torch.cuda.is_available():
        torch.set_num_threads(job.threads)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)

    set_seed(job.seed)  # before get_peft_model, so LoRA's initial weights are reproducible
    tokenizer = AutoTokenizer.from_pretrained(job.base_model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(job.base_model_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(
        r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
        target_modules=hp.target_modules, modules_to_save=hp.modules_to_save or None,
        task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    examples = [json.loads(line) for line in Path(job.train_path).read_text().splitlines() if line]
    rows = _tokenize(examples, tokenizer, hp.max_seq_len)
    sampler = DistributedSampler(rows, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=job.seed)
    loader = DataLoader(rows, batch_size=hp.batch_size, sampler=sampler,
                        collate_fn=lambda b: _collate(b, tokenizer.pad_token_id))
    steps_per_epoch = len(loader)
    total_steps = max(1, math.ceil(steps_per_epoch * hp.epochs))
    if hp.max_steps:
        total_steps = min(total_steps, hp.max_steps)
    warmup = max(1, int(total_steps * hp.warmup_ratio))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=hp.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    engine, optimizer, _, schedule = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule,
        config=_deepspeed_config(Path(job.deepspeed_config), hp.batch_size, world_size))

    losses: list[float] = []
    tokens = 0
    step = 0
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"train {job.candidate}", disable=rank != 0,
               mininterval=2.0, file=sys.stdout)
    engine.train()
    epoch = 0
    while step < total_steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            step += 1
            tokens += int(batch["attention_mask"].sum()) * world_size
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
            if step >= total_steps:
                break
        epoch += 1
    bar.close()
    seconds = time.perf_counter() - started

    metrics = {
        "steps": step,
        "epochs": epoch,
        "examples": len(rows),
        "losses": losses,
        "first_loss": losses[0],
        "final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "train_seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "world_size": world_size,
        "backend": backend,
        "zero_stage": engine.zero_optimization_stage(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if rank == 0:
        out = Path(job.output_dir)
        engine.module.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--local")]
    if len(args) != 1:
        print("usage: python -m tasks.train_worker JOB.json", file=sys.stderr)
        return 2
    train(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
