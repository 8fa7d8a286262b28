"""Scorers for the flywheel routing tasks, referenced from the YAML with ``!function``."""

from __future__ import annotations

from tasks.core.prompts import format_prompt, parse_expert, render_icl_prompt


def choices(doc: dict) -> list[str]:
    """The experts a document may be routed to: its ``choices``, written from the dataset
    version's label space by :func:`tasks.evaluation.evaluate.write_prompts`."""
    if not doc.get("choices"):
        raise ValueError(f"test document {doc.get('id', '?')!r} has no 'choices' (the experts it "
                         "may be routed to): write it with "
                         "tasks.evaluation.evaluate.write_prompts")
    return list(doc["choices"])


def doc_to_text(doc: dict) -> str:
    """The prompt rendered for the model under test (``prompt``, written per model by
    :func:`tasks.evaluation.evaluate.write_prompts`: a chat model's template), else the plain
    prompt."""
    return doc.get("prompt") or format_prompt(doc["query"])


def format_icl_prompt(query: str, shots: list[dict]) -> str:
    """The plain router prompt preceded by solved examples (``{"query", "expert"}``), nearest
    last; the examples are retrieved per query from the train split."""
    return render_icl_prompt(query, shots)


def doc_to_text_icl(doc: dict) -> str:
    return doc.get("prompt") or format_icl_prompt(doc["query"], doc.get("shots") or [])


def doc_to_choice(doc: dict) -> list[str]:
    return choices(doc)


def doc_to_target(doc: dict) -> int:
    return choices(doc).index(doc["expert"])


def process_generation(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match of the first word the model generated against the gold expert."""
    predicted = parse_expert(results[0], tuple(choices(doc)))
    return {"exact_match": float(predicted == doc["expert"])}
