"""The router prompt, shared by fine-tuning, lm-eval and serving so all three see the same text.

Two renderings of one instruction:

- **chat** (a base model whose tokenizer has a chat template, e.g. SmolLM2-Instruct): the system
  message is the workload file's prompt (or one naming its experts), the user message is the
  query, and the model's answer turn is opened by the template; the router answers
  `` <expert>`` and its end-of-turn token.
- **plain** (a model without a chat template, e.g. the tiny test models): ``Route this employee
  question to one expert.\\nQuery: <question>\\nExpert:`` completed with `` <expert>``. The
  wording is the demo's and stays (the tiny models' soft-prompt test measured learning under it:
  with "question" alone a 15-step prompt-tuning run no longer cut its loss by 0.5%); every
  workload's chat models get its own prompt.

Which one a model gets depends only on its tokenizer, so training (:mod:`tasks.training.worker`),
lm-eval (each test document carries the prompt rendered for the model under test) and serving
(:mod:`tasks.serving.router`) render the same text. Keeping the template in one place is what makes
a fine-tuned adapter's accuracy under lm-eval the accuracy it has in production.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROMPT_TEMPLATE = "Route this employee question to one expert.\nQuery: {query}\nExpert:"
SYSTEM_TEMPLATE = ("Route the user's question to the one expert who should answer it. "
                   "Experts: {experts}. Answer with the expert's name only.")
#: what a router answers when its completion names no expert and its workload has no fallback
NO_EXPERT = "(none)"
#: lm-eval joins context and continuation with this; training targets use the same separator.
TARGET_DELIMITER = " "


def _clean(query: str) -> str:
    return " ".join(query.split())


def format_prompt(query: str) -> str:
    """The plain prompt a causal-LM router without a chat template completes."""
    return PROMPT_TEMPLATE.format(query=_clean(query))


def format_target(expert: str) -> str:
    """The completion the router is trained to produce (its end token is appended after)."""
    return TARGET_DELIMITER + expert


def uses_chat_template(tokenizer: Any) -> bool:
    """Whether prompts for this tokenizer's model go through its chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def system_message(experts: Sequence[str] | None, system: str | None = None) -> str:
    """The chat rendering's system message: the workload's own (``system``, its file's prompt
    with the experts filled in) or the default naming ``experts``."""
    return system or SYSTEM_TEMPLATE.format(experts=", ".join(experts or ()))


def render_prompt(query: str, experts: Sequence[str] | None = None,
                  tokenizer: Any = None, system: str | None = None) -> str:
    """The text a causal-LM router completes with `` <expert>``.

    Args:
        query: the user's question (whitespace is normalised).
        experts: the workload's experts, named in the chat rendering's system message.
        tokenizer: the model's tokenizer; with a chat template, the chat rendering is used.
        system: the workload's system message (default: one naming ``experts``).
    """
    if tokenizer is None or not uses_chat_template(tokenizer):
        return format_prompt(query)
    messages = [{"role": "system", "content": system_message(experts, system)},
                {"role": "user", "content": _clean(query)}]
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text


def render_icl_prompt(query: str, shots: Sequence[Mapping[str, Any]],
                      experts: Sequence[str] | None = None, tokenizer: Any = None,
                      system: str | None = None) -> str:
    """The prompt preceded by solved examples (``{"query", "expert"}``, nearest last), each in
    the very format the model is asked to complete: earlier chat turns for a chat model, plain
    prompt + answer blocks otherwise."""
    if tokenizer is None or not uses_chat_template(tokenizer):
        solved = "".join(format_prompt(s["query"]) + format_target(s["expert"]) + "\n\n"
                         for s in shots)
        return solved + format_prompt(query)
    messages = [{"role": "system", "content": system_message(experts, system)}]
    for shot in shots:
        messages += [{"role": "user", "content": _clean(shot["query"])},
                     {"role": "assistant", "content": format_target(shot["expert"])}]
    messages.append({"role": "user", "content": _clean(query)})
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text


def end_token_id(tokenizer: Any) -> int:
    """The token a trained router ends its answer with: end of turn (chat) or end of text."""
    if uses_chat_template(tokenizer):
        for name in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
            token_id = tokenizer.convert_tokens_to_ids(name)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
                return token_id
    eos_token_id: int = tokenizer.eos_token_id
    return eos_token_id


def prompt_ids(tokenizer: Any, query: str, experts: Sequence[str] | None = None,
               system: str | None = None) -> list[int]:
    """Token ids of the rendered prompt, as training, latency measurement and serving feed them.

    The plain rendering starts with the tokenizer's BOS (when it has one); a chat template
    writes its own special tokens.
    """
    ids: list[int] = tokenizer(render_prompt(query, experts, tokenizer, system),
                               add_special_tokens=False)["input_ids"]
    if not uses_chat_template(tokenizer) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def answer_ids(tokenizer: Any, expert: str) -> list[int]:
    """Token ids of the trained answer: `` <expert>`` then the end token."""
    ids: list[int] = tokenizer(format_target(expert), add_special_tokens=False)["input_ids"]
    return ids + [end_token_id(tokenizer)]


def parse_expert(generated: str, experts: tuple[str, ...]) -> str | None:
    """The expert named at the start of a generated completion, or None if it names none."""
    words = generated.strip().split()
    if not words:
        return None
    first = words[0].strip(".,;:'\"")
    return first if first in experts else None
