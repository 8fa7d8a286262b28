"""The log record contract (DESIGN.md, "Contracts"), version 1.

A record is one JSON object modelled on OpenAI chat-completion logs, so any agent framework can emit
it::

    {"schema_version": 1, "id": "...", "timestamp": "2026-11-20T09:14:03.120Z",
     "workload_id": "router", "client_id": "hr-portal", "model": "teacher-70b",
     "request": {"messages": [...], "tools": [...]},
     "response": {"choices": [{"message": {"tool_calls": [{"function":
                  {"name": "route_to", "arguments": "{\"expert\": \"banking\"}"}}]}}]},
     "latency_ms": 1830.2, "ttft_ms": 912.0, "usage": {...},
     "feedback": {"rating": -1, "comment": "...", "source": "user"}}        # feedback optional

Feedback can also arrive later as its own event keyed by the record id::

    {"kind": "feedback", "id": "...", "timestamp": "...", "rating": 1, "source": "user"}

The *label* of a record is the expert the router chose: the ``expert`` argument of its
``route_to`` tool call, or, for agents that answer in text, the message content.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from tasks.core.workload import Decision

SCHEMA_VERSION = 1

#: Deepest nesting of objects and arrays a record or feedback event may have. A chat log nests a
#: dozen levels at most; Python's JSON parser and writer recurse once per level and give out near
#: a thousand, so deeper input is refused with this reason before anything parses or writes it.
MAX_NESTING = 64

#: Columns of a flattened record: what ingestion stages, validation checks and the store keeps.
FLAT_COLUMNS: tuple[str, ...] = (
    "id",
    "timestamp",
    "workload_id",
    "client_id",
    "model",
    "query",
    "route",
    "latency_ms",
    "ttft_ms",
    "rating",
    "feedback_source",
    "feedback_comment",
    "source_file",
    "raw",
)

ROUTER_SYSTEM_PROMPT = (
    "You are the router of a company assistant. Send each question to exactly one expert agent "
    "by calling the routing tool."
)


def nesting_depth(value: Any, limit: int = MAX_NESTING) -> int:
    """How many levels of objects and arrays ``value`` nests (a scalar is 0), counted without
    recursion; the count stops at ``limit + 1``, so a hostile value costs no more than that."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return deepest


def nesting_error(value: Any, limit: int = MAX_NESTING) -> str | None:
    """Why ``value`` is nested too deeply to accept, or None."""
    if nesting_depth(value, limit) > limit:
        return f"nested more than {limit} levels deep (objects and arrays); the limit is {limit}"
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity``: Python's parser
    accepts them, JSON does not, and a NaN latency or rating would otherwise become "missing"
    without a word. Files and HTTP parse with this one rule.

    Raises:
        json.JSONDecodeError: the text is not JSON.
        ValueError: it uses a non-standard constant (the message names it).
    """
    return json.loads(text, parse_constant=_refuse_constant)


def non_finite_error(value: Any) -> str | None:
    """Why ``value`` (already parsed, e.g. a Parquet row; its nesting checked first by
    :func:`nesting_error`) holds a number JSON cannot write (NaN or an infinity), or None; the
    same rule as :func:`loads_strict` for input that did not come as JSON text."""
    stack = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"non-standard JSON constant {item!r} at {where.lstrip('.') or 'top level'}"
        if isinstance(item, dict):
            stack.extend((child, f"{where}.{key}") for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def id_problem(value: Any, what: str = "id") -> str | None:
    """Why ``value`` cannot be a record's or feedback event's id, or None: an id is a string
    with at least one character that is not white space (the intake and ingestion refuse the
    same ids)."""
    if value is None:
        return f"{what} is missing"
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"{what} is empty or blank"
    return None


def route_tool_schema(experts: Sequence[str] | None = None,
                      decision: Decision | None = None) -> dict[str, Any]:
    """The OpenAI tool definition of the router's tool (``route_to(expert=...)`` by default),
    its argument's choices listed when ``experts`` are given."""
    decision = decision or Decision()
    argument: dict[str, Any] = {"type": "string"}
    if experts:
        argument["enum"] = list(experts)
    return {
        "type": "function",
        "function": {
            "name": decision.tool,
            "description": "Hand the question to one expert agent.",
            "parameters": {
                "type": "object",
                "properties": {decision.argument: argument},
                "required": [decision.argument],
            },
        },
    }


def make_request(query: str, experts: Sequence[str] | None = None,
                 decision: Decision | None = None, system: str | None = None
                 ) -> dict[str, Any]:
    """An OpenAI chat request asking the agent to decide on ``query``: the router's tool
    (``tool_call``), one tool per expert (``function_name``) or none (``content``)."""
    decision = decision or Decision()
    request: dict[str, Any] = {"messages": [
        {"role": "system", "content": system or ROUTER_SYSTEM_PROMPT},
        {"role": "user", "content": query},
    ]}
    if decision.kind == "tool_call":
        request.update(tools=[route_tool_schema(experts, decision)], tool_choice="required")
    elif decision.kind == "function_name":
        request.update(tools=[{"type": "function", "function": {
            "name": name, "parameters": {"type": "object", "properties": {}}}}
            for name in experts or ()], tool_choice="required")
    return request


def make_response(expert: str, call_id: str, decision: Decision | None = None
                  ) -> dict[str, Any]:
    """An OpenAI chat response holding the decision ``expert`` where ``decision`` says to
    look (default: the tool call ``route_to(expert=...)``)."""
    decision = decision or Decision()
    if decision.kind == "content":
        message: dict[str, Any] = {"role": "assistant", "content": expert}
        finish = "stop"
    else:
        function = ({"name": decision.tool,
                     "arguments": json.dumps({decision.argument: expert})}
                    if decision.kind == "tool_call" else {"name": expert, "arguments": "{}"})
        message = {"role": "assistant", "content": None,
                   "tool_calls": [{"id": call_id, "type": "function", "function": function}]}
        finish = "tool_calls"
    return {"object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": finish, "message": message}]}


class RecordError(ValueError):
    """A record that does not follow the contract; the message says why."""


def query_of(request: Any) -> str:
    """The last user message of an OpenAI chat request."""
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        raise RecordError("request.messages is missing or not a list")
    for message in reversed(request["messages"]):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise RecordError("the user message has no text content")
            return content
    raise RecordError("request.messages has no user message")


def route_of(response: Any, decision: Decision | None = None) -> str:
    """The decision a logged response holds, read as its workload's file says (``decision``;
    default: the router's ``route_to(expert=...)`` tool call):

    - ``tool_call``: the named argument of the named tool call, else the message's text (a
      router that answers in words);
    - ``function_name``: the name of the function a tool-calling agent called;
    - ``content``: the message's text.
    """
    decision = decision or Decision()
    try:
        message = response["choices"][0]["message"]
    except (TypeError, KeyError, IndexError) as exc:
        raise RecordError("response.choices[0].message is missing") from exc
    if not isinstance(message, dict):
        raise RecordError("response.choices[0].message is not an object")
    calls = [function for call in message.get("tool_calls") or []
             if isinstance(call, dict) and isinstance(function := call.get("function"), dict)]
    content = message.get("content")
    text = content.strip() if isinstance(content, str) and content.strip() else None
    if decision.kind == "function_name":
        for function in calls:
            if isinstance(name := function.get("name"), str) and name:
                return name
        raise RecordError("response has no tool call naming a function (the workload's "
                          "decision is the function's name)")
    if decision.kind == "content":
        if text is None:
            raise RecordError("response has no text content (the workload's decision is the "
                              "message's text)")
        return text
    tool, argument = decision.tool, decision.argument
    for function in calls:
        if function.get("name") != tool:
            continue
        arguments = function.get("arguments")
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError as exc:
            raise RecordError(f"{tool} arguments are not valid JSON: {exc.msg}") from exc
        value = arguments.get(argument) if isinstance(arguments, dict) else None
        if not isinstance(value, str):
            raise RecordError(f"{tool} call has no string {argument!r} argument")
        return value
    if text is not None:
        return text
    raise RecordError(f"response has neither a {tool} tool call nor text content")
