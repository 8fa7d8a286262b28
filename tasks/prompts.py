"""The router prompt, shared by fine-tuning, lm-eval and serving so all three see the same text.

A causal-LM router reads ``Query: <question>\\nExpert:`` and answers `` <expert>`` then stops.
Keeping the template in one place is what makes a fine-tuned adapter's accuracy under lm-eval the
accuracy it has in production.
"""

from __future__ import annotations

PROMPT_TEMPLATE = "Route this employee question to one expert.\nQuery: {query}\nExpert:"
#: lm-eval joins context and continuation with this; training targets use the same separator.
TARGET_DELIMITER = " "


def format_prompt(query: str) -> str:
    """The prompt a causal-LM router completes with an expert name."""
    return PROMPT_TEMPLATE.format(query=" ".join(query.split()))


def format_target(expert: str) -> str:
    """The completion the router is trained to produce (the tokenizer's EOS is appended after)."""
    return TARGET_DELIMITER + expert


def parse_expert(generated: str, experts: tuple[str, ...]) -> str | None:
    """The expert named at the start of a generated completion, or None if it names none."""
    words = generated.strip().split()
    if not words:
        return None
    first = words[0].strip(".,;:'\"")
    return first if first in experts else None
