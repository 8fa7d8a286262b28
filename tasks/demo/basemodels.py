"""Build the offline base models: tiny Llama-architecture causal LMs, pre-trained briefly, cached.

No model hub is reachable on the machines this project runs on, yet the flywheel needs causal LMs to
fine-tune. This stage builds them locally, as stand-ins for the talk's 1B and 8B:

    flywheel build-base                                    # flywheel-llama-s and flywheel-llama-m
    flywheel build-base --models flywheel-llama-xs --home /tmp/fw
    python -m tasks.demo.basemodels --models flywheel-llama-s

Each built-in recipe (:data:`RECIPES`) names a Llama shape and a short pre-training run:

1. a byte-level BPE tokenizer is trained with ``tokenizers`` on the corpus and saved as a
   ``transformers`` fast tokenizer; it is shared by every recipe with the same tokenizer settings;
2. a ``LlamaForCausalLM`` is built from a ``LlamaConfig`` (random init, seeded) and pre-trained with
   a plain AdamW loop on packed sequences of the corpus;
3. the model, tokenizer, ``recipe.json`` and ``pretrain_metrics.json`` are written atomically to
   ``<home>/models/base/<name>-<digest12>``, where the digest covers the recipe, the corpus and
   :data:`CODE_VERSION`. A second call finds the folder and returns at once.

The corpus is CLINC150's unlabelled Wikipedia sentences plus the *train* queries without labels
(never val/test queries: they can end up in evaluation), plus a few lines listing the expert names
so the router's answers tokenise into few tokens. These models have 1-10M parameters: every report
must say a number came from one of them, not from a real 1B/8B model.

The recipes reach the catalog through the entry point ``flywheel.base_models``
(:func:`build_recipe`, read by :mod:`tasks.training.bases`), so training never imports this
module. In production, name a packaged model, a model folder or a hub id instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.core.config import ROUTE_TOOL, get_paths
from tasks.core.files import file_lock
from tasks.demo.clinc150 import EXPERTS

log = logging.getLogger(__name__)

#: Bumped whenever a change here changes what a recipe builds, so old caches are not reused.
CODE_VERSION = "basemodels-2"

#: Special tokens, Llama-style names. ``<pad>`` is separate from ``</s>`` so a collator that masks
#: padding never masks the end-of-answer token the router must learn to emit.
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)

#: GPT-2's pre-tokenizer pattern with ``_`` counted as a letter, so ``kitchen_and_dining`` is one
#: pre-token that BPE can merge whole instead of five pieces split at the underscores.
_PRETOKENIZE_PATTERN = (
    r"'(?:[sdmt]|ll|ve|re)| ?[\p{L}_]+| ?\p{N}+| ?[^\s\p{L}\p{N}_]+|\s+(?!\S)|\s+"
)


class BaseModelRecipe(BaseModel):
    """Everything that decides what a base model is; its JSON is hashed into the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Model name; the cache folder is <name>-<digest12>",
                      min_length=1, max_length=80, pattern=r"^[A-Za-z0-9._-]+$")
    description: str = Field("", description="What this recipe stands in for (shown in reports)")
    # Tokenizer
    vocab_size: int = Field(4000, ge=300, le=65536,
                            description="BPE vocabulary size, special tokens included")
    tokenizer_min_frequency: int = Field(2, ge=1, le=1000,
                                         description="Minimum pair count for a BPE merge")
    # Shape (LlamaConfig)
    hidden_size: int = Field(128, ge=8, le=8192, description="Width of the residual stream")
    intermediate_size: int = Field(512, ge=8, le=32768, description="Width of the SwiGLU MLP")
    num_hidden_layers: int = Field(2, ge=1, le=64, description="Number of decoder layers")
    num_attention_heads: int = Field(4, ge=1, le=128, description="Query heads per layer")
    num_key_value_heads: int = Field(2, ge=1, le=128,
                                     description="Key/value heads (grouped-query attention)")
    max_position_embeddings: int = Field(256, ge=16, le=32768,
                                         description="Longest sequence the config declares (RoPE)")
    tie_word_embeddings: bool = Field(False, description="Share input embedding and output layer")
    # Pre-training
    pretrain_steps: int = Field(300, ge=1, le=1_000_000, description="Optimizer steps")
    batch_size: int = Field(16, ge=1, le=4096, description="Packed sequences per step")
    seq_len: int = Field(128, ge=8, le=32768, description="Tokens per packed training sequence")
    learning_rate: float = Field(2e-3, gt=0, le=1.0, description="Peak AdamW learning rate")
    warmup_steps: int = Field(20, ge=0, le=100_000, description="Linear warm-up steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor, as a share of peak")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, le=1000, description="Gradient-norm clipping threshold")
    eval_batches: int = Field(4, ge=1, le=1000,
                              description="Held-out batches for the initial/final loss")
    seed: int = Field(0, ge=0, description="Seed for weights and data order")
    # Corpus
    corpus_wiki: bool = Field(True, description="Include CLINC150's unlabelled Wikipedia sentences")
    corpus_train_queries: bool = Field(
        True, description="Include CLINC150 train-split queries, without labels (never val/test)")
    corpus_expert_names: bool = Field(
        True, description="Include lines listing the expert names so they tokenise into few tokens")
    corpus_max_lines: int | None = Field(
        None, ge=100, description="Keep at most this many corpus lines (a fixed sample); none: all")

    @model_validator(mode="after")
    def _check_shape(self) -> BaseModelRecipe:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("seq_len must not exceed max_position_embeddings")
        if self.warmup_steps >= self.pretrain_steps and self.pretrain_steps > 1:
            raise ValueError("warmup_steps must be fewer than pretrain_steps")
        if not (self.corpus_wiki or self.corpus_train_queries):
            raise ValueError("the corpus needs Wikipedia sentences or train queries")
        return self

    def tokenizer_settings(self) -> dict[str, Any]:
        """The fields that decide the tokenizer: recipes sharing them share one tokenizer."""
        keys = ("vocab_size", "tokenizer_min_frequency", "corpus_wiki", "corpus_train_queries",
                "corpus_expert_names", "corpus_max_lines")
        return {key: getattr(self, key) for key in keys}


#: Built-in recipes. ``s`` and ``m`` stand in for the talk's 1B and 8B (a size/latency/accuracy
#: trade-off to show, at 1-10M parameters); ``xs`` exists so tests and CI build a model in seconds.
RECIPES: dict[str, BaseModelRecipe] = {
    recipe.name: recipe
    for recipe in (
        BaseModelRecipe(
            name="flywheel-llama-xs",
            description="test-only: a 0.07M-parameter Llama, seconds to build",
            vocab_size=1024, hidden_size=48, intermediate_size=128, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            tie_word_embeddings=True, pretrain_steps=80, batch_size=8, seq_len=64,
            learning_rate=5e-3, warmup_steps=8, eval_batches=2, corpus_max_lines=3000,
        ),
        BaseModelRecipe(
            name="flywheel-llama-s",
            description="tiny stand-in for a 1B: 1.4M-parameter Llama, 2 layers",
            vocab_size=4000, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            pretrain_steps=500, batch_size=8, seq_len=128, learning_rate=3e-3, warmup_steps=25,
        ),
        BaseModelRecipe(
            name="flywheel-llama-m",
            description="tiny stand-in for an 8B: 5.2M-parameter Llama, 4 layers",
            vocab_size=4000, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
            pretrain_steps=300, batch_size=8, seq_len=128, learning_rate=2e-3, warmup_steps=20,
        ),
    )
}

DEFAULT_MODELS = ("flywheel-llama-s", "flywheel-llama-m")


# --------------------------------------------------------------------------------------------
# Corpus


def corpus_lines(recipe: BaseModelRecipe) -> list[str]:
    """The pre-training (and tokenizer) text of ``recipe``, one sentence a line, lowercased.

    Only CLINC150's *train* queries are used, without labels: val/test queries may become
    evaluation data, and a base model that has seen them would flatter every score after it.
    The sample and the expert-name lines use fixed seeds so that the corpus depends on the
    corpus settings alone, and recipes differing only in shape or training share a tokenizer.
    """
    from tasks.demo.clinc150 import examples, wiki_sentences

    lines: list[str] = []
    if recipe.corpus_wiki:
        lines += wiki_sentences()
    if recipe.corpus_train_queries:
        lines += [example.query for example in examples() if example.split == "train"]
    # Lowercase as CLINC150 is; drop blanks and exact duplicates (order kept: deterministic).
    lines = list(dict.fromkeys(line.strip().lower() for line in lines if line.strip()))
    # A Wikipedia line can equal a val/test query by chance ("agreed"): drop it too.
    held_out = {e.query.strip().lower() for e in examples() if e.split != "train"}
    lines = [line for line in lines if line not in held_out]
    if recipe.corpus_max_lines is not None and len(lines) > recipe.corpus_max_lines:
        keep = sorted(random.Random(0).sample(range(len(lines)), recipe.corpus_max_lines))
        lines = [lines[i] for i in keep]
    if recipe.corpus_expert_names:
        lines += _expert_name_lines(len(lines))
    return lines


def _expert_name_lines(n_corpus_lines: int) -> list[str]:
    """Lines that list the expert names, often enough for BPE to merge each into few tokens.

    Each name appears alone (no leading space, as after a newline) and inside a shuffled list
    (leading space), the two forms a router's answer takes. About 1-2% of the corpus: enough for the
    merges, too little to change what the model learns from the rest.
    """
    rng = random.Random(0)
    repeats = max(50, n_corpus_lines // 100)
    names = [*EXPERTS, ROUTE_TOOL]
    lines = []
    for _ in range(repeats):
        rng.shuffle(names)
        lines.append(" ".join(names))
    lines += [name for name in names for _ in range(max(5, repeats // 10))]
    return lines


def corpus_digest(lines: list[str]) -> str:
    """sha256 of the corpus text: a change to the vendored data invalidates cached models."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def recipe_digest(recipe: BaseModelRecipe, corpus_sha: str) -> str:
    """The cache key of a model: recipe JSON + :data:`CODE_VERSION` + corpus identity."""
    payload = json.dumps({"recipe": recipe.model_dump(mode="json"), "code": CODE_VERSION,
                          "corpus": corpus_sha}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def tokenizer_digest(recipe: BaseModelRecipe, corpus_sha: str) -> str:
    """The cache key of a tokenizer: its settings + :data:`CODE_VERSION` + corpus identity."""
    payload = json.dumps({"tokenizer": recipe.tokenizer_settings(), "code": CODE_VERSION,
                          "corpus": corpus_sha}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Cache plumbing


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build into place in one rename, so readers never see half a folder."""
    if final.exists():  # only possible if a build ran without the lock; keep the first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)


def _is_complete(folder: Path) -> bool:
    return (folder / "recipe.json").is_file() and (folder / "pretrain_metrics.json").is_file()


# --------------------------------------------------------------------------------------------
# Tokenizer


def _train_tokenizer(lines: list[str], recipe: BaseModelRecipe) -> Any:
    """Train a byte-level BPE on ``lines`` and wrap it as a ``transformers`` fast tokenizer."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    # The corpus is lowercase; lowercasing input too keeps prompts in the vocabulary it learned.
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size, min_frequency=recipe.tokenizer_min_frequency,
        special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer, length=len(lines))
    bos_id = tokenizer.token_to_id(BOS)
    # Llama-style: every encoded text starts with <s>; the model learns what follows it.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=recipe.max_position_embeddings, clean_up_tokenization_spaces=False,
    )
    return wrapped


def ensure_tokenizer(name_or_recipe: str | BaseModelRecipe,
                     home: str | os.PathLike[str] | None = None) -> Path:
    """The tokenizer folder for a recipe, trained on first use and shared by equal settings.

    Args:
        name_or_recipe: a key of :data:`RECIPES` or a recipe.
        home: flywheel home (default ``$FLYWHEEL_HOME``).

    Returns:
        ``<home>/models/tokenizers/bpe<vocab>-<digest12>``, loadable with ``AutoTokenizer``.
    """
    recipe = _as_recipe(name_or_recipe)
    lines = corpus_lines(recipe)
    return _ensure_tokenizer(recipe, lines, corpus_digest(lines), home)


def _ensure_tokenizer(recipe: BaseModelRecipe, lines: list[str], corpus_sha: str,
                      home: str | os.PathLike[str] | None) -> Path:
    root = get_paths(home).models / "tokenizers"
    final = root / f"bpe{recipe.vocab_size}-{tokenizer_digest(recipe, corpus_sha)[:12]}"
    if (final / "tokenizer.json").is_file():
        return final
    with file_lock(root / f".{final.name}.lock"):
        if (final / "tokenizer.json").is_file():  # built by another process while we waited
            return final
        started = time.perf_counter()
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _train_tokenizer(lines, recipe).save_pretrained(tmp)
        _publish(tmp, final)
        log.info("trained tokenizer %s in %.1f s", final.name, time.perf_counter() - started)
    return final


# --------------------------------------------------------------------------------------------
# Pre-training


def _pack(tokenizer: Any, lines: list[str], seq_len: int, seed: int) -> Any:
    """Token ids of the shuffled corpus, each line as ``<s> text </s>``, cut into ``seq_len`` rows.

    Packing wastes no compute on padding; the last partial row is dropped.
    """
    import torch

    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    encoded = tokenizer([lines[i] for i in order], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    stream = [token for ids in encoded for token in (*ids, eos)]
    rows = len(stream) // seq_len
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def _lr_factor(step: int, recipe: BaseModelRecipe) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    span = max(1, recipe.pretrain_steps - recipe.warmup_steps)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine


def _show_progress(progress: bool | None) -> bool:
    """Progress bars only for a person at a terminal: never in Airflow logs or CI."""
    if progress is not None:
        return progress
    if os.environ.get("FLYWHEEL_PROGRESS", "").lower() in {"0", "false", "no", "off"}:
        return False
    return sys.stderr.isatty()


@contextlib.contextmanager
def _transformers_progress(show: bool) -> Iterator[None]:
    """Silence ``transformers``' own bars (e.g. "Writing model shards") unless ours are shown."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class _ThreadTuner:
    """Runs each training step on 1 or on ``most`` torch threads, whichever is measured faster.

    OpenMP threads spin at every barrier: when another process holds one of the 2 cores, a
    2-thread step ran 3-10x slower than a 1-thread step here (measured), while on an idle machine
    2 threads are faster. The load of a shared machine changes during a build, and the load average
    counts this process's own past work, so the choice is made by timing real steps: the first
    ``probe`` steps of every ``every`` run on 1 thread, the next ``probe`` on ``most``, and the
    median decides until the next check. ``$FLYWHEEL_TORCH_THREADS`` fixes the count instead.
    """

    def __init__(self, most: int | None = None, every: int = 100, probe: int = 3) -> None:
        if value := os.environ.get("FLYWHEEL_TORCH_THREADS"):
            self.candidates = [max(1, int(value))]
        else:
            most = most or min(2, os.cpu_count() or 1)
            self.candidates = [1, most] if most > 1 else [1]
        self.every, self.probe = every, probe
        self.chosen = self.candidates[-1]
        self.timings: dict[int, list[float]] = {}
        self.steps_at: dict[int, int] = {}

    def _probing(self, step: int) -> bool:
        return len(self.candidates) > 1 and step % self.every < self.probe * len(self.candidates)

    def threads_for(self, step: int) -> int:
        """The thread count to run ``step`` with."""
        if self._probing(step):
            return self.candidates[(step % self.every) // self.probe]
        return self.chosen

    def record(self, step: int, threads: int, seconds: float) -> None:
        """Note how long ``step`` took; at the end of a probe, choose the faster count."""
        self.steps_at[threads] = self.steps_at.get(threads, 0) + 1
        if not self._probing(step):
            return
        self.timings.setdefault(threads, []).append(seconds)
        if step % self.every == self.probe * len(self.candidates) - 1:
            self.chosen = min(self.timings, key=lambda t: statistics.median(self.timings[t]))
            self.timings.clear()


def _pretrain(recipe: BaseModelRecipe, tokenizer: Any, lines: list[str], out: Path,
              progress: bool | None) -> dict[str, Any]:
    """Build a seeded random Llama, pre-train it, save it to ``out``; return its metrics."""
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    data = _pack(tokenizer, lines, recipe.seq_len, recipe.seed)
    # A fixed held-out slice measures the loss before and after on rows never trained on.
    n_eval = min(recipe.eval_batches * recipe.batch_size, max(1, len(data) // 10))
    eval_rows, train_rows = data[:n_eval], data[n_eval:]
    if len(train_rows) < recipe.batch_size:
        raise ValueError(f"{recipe.name}: corpus gives {len(train_rows)} rows of {recipe.seq_len} "
                         f"tokens, fewer than one batch of {recipe.batch_size}")

    set_seed(recipe.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        tie_word_embeddings=recipe.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            losses = [model(input_ids=batch, labels=batch).loss.item()
                      for batch in eval_rows.split(recipe.batch_size)]
        model.train()
        return float(sum(losses) / len(losses))

    # No weight decay on norms and biases, as usual for transformers.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate, betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    order = torch.randperm(len(train_rows), generator=generator)
    cursor = 0

    tuner = _ThreadTuner()
    torch.set_num_threads(tuner.chosen)
    initial_loss = evaluate()
    losses: list[float] = []
    started = time.perf_counter()
    show = _show_progress(progress)
    bar = tqdm(range(recipe.pretrain_steps), desc=f"pretrain {recipe.name}", disable=not show,
               dynamic_ncols=True)
    model.train()
    for step in bar:
        if cursor + recipe.batch_size > len(order):  # next epoch, new order
            order, cursor = torch.randperm(len(train_rows), generator=generator), 0
        batch = train_rows[order[cursor: cursor + recipe.batch_size]]
        cursor += recipe.batch_size
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate * _lr_factor(step, recipe)
        threads = tuner.threads_for(step)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        step_started = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tuner.record(step, threads, time.perf_counter() - step_started)
        if step % 10 == 0 or step == recipe.pretrain_steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    seconds = time.perf_counter() - started
    final_loss = evaluate()

    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with _transformers_progress(show):
        model.save_pretrained(out)
    tokens = recipe.pretrain_steps * recipe.batch_size * recipe.seq_len
    tail = losses[-10:]
    return {
        "name": recipe.name,
        "params": n_params,
        "initial_loss": round(initial_loss, 4),
        "final_loss": round(final_loss, 4),
        "final_train_loss": round(sum(tail) / len(tail), 4),
        "loss_is": "mean causal-LM cross-entropy (nats/token) on held-out packed rows",
        "steps": recipe.pretrain_steps,
        "tokens_seen": tokens,
        "corpus_tokens": int(data.numel()),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "steps_by_torch_threads": {str(k): v for k, v in sorted(tuner.steps_at.items())},
        "loss_curve": [round(x, 4) for x in losses[:: max(1, len(losses) // 50)]],
    }


# --------------------------------------------------------------------------------------------
# Public API


def _as_recipe(name_or_recipe: str | BaseModelRecipe) -> BaseModelRecipe:
    if isinstance(name_or_recipe, BaseModelRecipe):
        return name_or_recipe
    try:
        return RECIPES[name_or_recipe]
    except KeyError:
        raise KeyError(f"unknown base model recipe {name_or_recipe!r}; "
                       f"built-in: {', '.join(RECIPES)}") from None


def base_model_dir(name_or_recipe: str | BaseModelRecipe,
                   home: str | os.PathLike[str] | None = None) -> Path:
    """Where a recipe's model lives (built or not), without building anything."""
    recipe = _as_recipe(name_or_recipe)
    digest = recipe_digest(recipe, corpus_digest(corpus_lines(recipe)))
    return get_paths(home).models / "base" / f"{recipe.name}-{digest[:12]}"


def ensure_base_model(name_or_recipe: str | BaseModelRecipe,
                      home: str | os.PathLike[str] | None = None, *,
                      progress: bool | None = None) -> Path:
    """The folder of a pre-trained base model, building it first if its recipe is new.

    Args:
        name_or_recipe: a key of :data:`RECIPES` or a :class:`BaseModelRecipe`.
        home: flywheel home (default ``$FLYWHEEL_HOME``); the model goes under ``models/base``.
        progress: show a progress bar; ``None``: only at a terminal and unless
            ``FLYWHEEL_PROGRESS=0``.

    Returns:
        A folder that ``AutoModelForCausalLM`` and ``AutoTokenizer`` load offline, holding also
        ``recipe.json``, ``pretrain_metrics.json`` and a ``README.md`` saying what the model is.
    """
    recipe = _as_recipe(name_or_recipe)
    lines = corpus_lines(recipe)
    corpus_sha = corpus_digest(lines)
    digest = recipe_digest(recipe, corpus_sha)
    root = get_paths(home).models / "base"
    final = root / f"{recipe.name}-{digest[:12]}"
    if _is_complete(final):
        return final
    with file_lock(root / f".{final.name}.lock"):
        if _is_complete(final):  # another process built it while we waited
            return final
        tok_dir = _ensure_tokenizer(recipe, lines, corpus_sha, home)
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _build(recipe, lines, corpus_sha, digest, tok_dir, tmp, progress)
            _publish(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build(recipe: BaseModelRecipe, lines: list[str], corpus_sha: str, digest: str,
           tok_dir: Path, out: Path, progress: bool | None) -> None:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    previous_threads = torch.get_num_threads()
    try:
        log.info("pre-training %s (%s)", recipe.name, recipe.description)
        metrics = _pretrain(recipe, tokenizer, lines, out, progress)
    finally:
        torch.set_num_threads(previous_threads)  # leave the caller's process as we found it
    tokenizer.save_pretrained(out)
    metrics.update(digest=digest, corpus_sha256=corpus_sha, corpus_lines=len(lines),
                   code_version=CODE_VERSION, tokenizer=tok_dir.name, torch=torch.__version__)
    (out / "recipe.json").write_text(recipe.model_dump_json(indent=2) + "\n")
    (out / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "README.md").write_text(_model_card(recipe, metrics))
    for file in out.iterdir():  # safetensors writes 0600; other users (Airflow workers) must read
        file.chmod(0o644)


def _model_card(recipe: BaseModelRecipe, metrics: dict[str, Any]) -> str:
    return (
        f"# {recipe.name}\n\n"
        f"A **tiny** Llama-architecture causal LM ({metrics['params'] / 1e6:.2f}M parameters, "
        f"{recipe.num_hidden_layers} layers, hidden {recipe.hidden_size}) built offline by "
        f"`flywheel build-base` ({recipe.description}). It is a stand-in for a real 1B/8B model: "
        "numbers measured with it say nothing about those models' quality or latency.\n\n"
        f"Pre-trained for {metrics['steps']} steps ({metrics['tokens_seen']:,} tokens) on "
        "CLINC150's unlabelled Wikipedia sentences and train-split queries without labels; "
        f"held-out loss {metrics['initial_loss']:.2f} -> {metrics['final_loss']:.2f} nats/token.\n"
    )


def read_build_info(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"recipe": ..., "metrics": ...}`` of a folder built here, or ``None`` for other models.

    Reports use it to say plainly that a number came from a tiny offline model.
    """
    folder = Path(model_dir)
    if not _is_complete(folder):
        return None
    return {"recipe": json.loads((folder / "recipe.json").read_text()),
            "metrics": json.loads((folder / "pretrain_metrics.json").read_text())}


def build_recipe(ref: str, home: str | os.PathLike[str] | None = None) -> Path | None:
    """The base-model builder this package registers (entry point ``flywheel.base_models``,
    :mod:`tasks.training.bases`): a built-in recipe's folder, built on first use; None for any
    other name."""
    return ensure_base_model(ref, home) if ref in RECIPES else None


# --------------------------------------------------------------------------------------------
# Command line


class BuildBaseConfig(BaseModel):
    """Settings of ``flywheel build-base``."""

    model_config = ConfigDict(extra="forbid")

    models: str = Field(",".join(DEFAULT_MODELS),
                        description="Comma-separated recipe names or recipe JSON/YAML files "
                                    f"(built-in: {', '.join(RECIPES)})")
    home: str | None = Field(None, description="Flywheel home folder (default $FLYWHEEL_HOME)")
    progress: bool | None = Field(None, description="Show progress bars (default: at a terminal)")

    def recipes(self) -> list[BaseModelRecipe]:
        """The recipes named by ``models``, files read and validated."""
        import yaml

        out = []
        for item in (part.strip() for part in self.models.split(",")):
            if not item:
                continue
            if item in RECIPES:
                out.append(RECIPES[item])
            elif Path(item).is_file():
                out.append(BaseModelRecipe.model_validate(yaml.safe_load(Path(item).read_text())))
            else:
                raise ValueError(f"{item!r} is neither a built-in recipe ({', '.join(RECIPES)}) "
                                 "nor a recipe file")
        return out


def main(argv: list[str] | None = None) -> int:
    """``flywheel build-base``: build (or find cached) base models and print a summary table."""
    from tasks.core.settings import parse_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = parse_config(BuildBaseConfig, argv, prog="flywheel build-base",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    try:
        recipes = config.recipes()
    except ValueError as exc:
        print(f"flywheel build-base: {exc}", file=sys.stderr)
        return 2
    rows = []
    for recipe in recipes:
        started = time.perf_counter()
        folder = ensure_base_model(recipe, config.home, progress=config.progress)
        elapsed = time.perf_counter() - started
        metrics = json.loads((folder / "pretrain_metrics.json").read_text())
        cached = elapsed < 0.5 * metrics["seconds"]
        rows.append([recipe.name, f"{metrics['params'] / 1e6:.2f}M",
                     f"{metrics['initial_loss']:.2f}", f"{metrics['final_loss']:.2f}",
                     f"{metrics['seconds']:.1f}" + (" (cached)" if cached else ""), str(folder)])
    headers = ["name", "params", "initial loss", "final loss", "train s", "path"]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("These are tiny offline stand-ins for real 1B/8B models; say so next to any number.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
