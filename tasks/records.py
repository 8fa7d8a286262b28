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
from typing import Any

from tasks.config import EXPERTS, ROUTE_TOOL

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
    "You are the router of a company assistant. Send each employee question to exactly one expert "
    "agent by calling route_to. Use out_of_scope when no expert fits."
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


def route_tool_schema(experts: tuple[str, ...] = EXPERTS) -> dict[str, Any]:
    """The OpenAI tool definition of ``route_to(expert=...)``."""
    return {
        "type": "function",
        "function": {
            "name": ROUTE_TOOL,
            "description": "Hand the question to one expert agent.",
            "parameters": {
                "type": "object",
                "properties": {"expert": {"type": "string", "enum": list(experts)}},
                "required": ["expert"],
            },
        },
    }


def make_request(query: str, experts: tuple[str, ...] = EXPERTS) -> dict[str, Any]:
    """An OpenAI chat request asking the router to route ``query``."""
    return {
        "messages": [
            {"role": "system", "content": ROUTER_SYSTEM_PROMPT},
            {"role": "user", "content": query},
        ],
        "tools": [route_tool_schema(experts)],
        "tool_choice": "required",
    }


def make_response(expert: str, call_id: str) -> dict[str, Any]:
    """An OpenAI chat response whose decision is the tool call ``route_to(expert=...)``."""
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": ROUTE_TOOL,
                                "arguments": json.dumps({"expert": expert}),
                            },
                        }
                    ],
                },
            }
        ],
    }


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


def route_of(response: Any) -> str:
    """The expert a router response chose: the ``route_to`` tool call, else the message text."""
    try:
        message = response["choices"][0]["message"]
    except (TypeError, KeyError, IndexError) as exc:
        raise RecordError("response.choices[0].message is missing") from exc
    if not isinstance(message, dict):
        raise RecordError("response.choices[0].message is not an object")
    for call in message.get("tool_calls") or []:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        if function.get("name") != ROUTE_TOOL:
            continue
        arguments = function.get("arguments")
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError as exc:
            raise RecordError(f"{ROUTE_TOOL} arguments are not valid JSON: {exc.msg}") from exc
        if not isinstance(arguments, dict) or not isinstance(arguments.get("expert"), str):
            raise RecordError(f"{ROUTE_TOOL} call has no string 'expert' argument")
        return arguments["expert"]
    content = message.get("content")
    if isinstance(content, str) and content.strip():
        return content.strip()
    raise RecordError(f"response has neither a {ROUTE_TOOL} tool call nor text content")
