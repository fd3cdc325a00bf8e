"""SFT source adapters: the real datasets' schemas -> K2-Chat ``messages``, with every rejection counted.

* ``openhermes``: OpenHermes-2.5, ``conversations: [{from: system|human|gpt, value}]``
* ``flan``: FLAN collections, ``inputs`` / ``targets`` (task/template fields are ignored)
* ``do_not_answer``: Do-Not-Answer, ``question`` + a safe response column (configurable; rows whose
  ``<model>_harmful`` flag is set are rejected as ``harmful_response``)
* ``messages``: generic ``messages: [{role, content}]`` (plus ``tool_calls`` and ``tool`` messages, and a
  ``tools`` column, as TRL's conversational datasets have them)

K2-Chat 10/31/24's sources:

* ``infinity_instruct``: Infinity-Instruct, ``conversations: [{from: human|gpt, value}]`` (``label``,
  ``langdetect``, ``source`` are ignored)
* ``jiuzhang``: JiuZhang3.0-Corpus-SFT, ``input`` / ``output``
* ``glaive_function_calling``: glaive-function-calling-v2 in sharegpt form, ``conversations`` with ``from`` in
  human / gpt / function_call / observation and ``tools`` as a JSON string: a ``function_call`` turn becomes
  an assistant tool call, an ``observation`` a ``tool`` message; a call or tool list whose JSON does not parse
  is rejected (``malformed_tool_call`` / ``malformed_tools``)

Local files (JSON/JSONL, Parquet, CSV) are read here; a Hub id goes through ``datasets.load_dataset``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from k2hf.chat_template import Conversation, split_conversation, validate_conversation
from k2hf.recipes import recipe_path
from k2hf.records import Record, Rejection, read_records

Messages = list[dict[str, Any]]
OPENHERMES_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
GLAIVE_ROLES = {**OPENHERMES_ROLES, "function_call": "call", "observation": "tool"}


def _field(row: dict, name: str) -> Any:
    if name not in row or row[name] is None:
        raise Rejection("missing_field", f"no field {name!r}")
    return row[name]


def _sharegpt_turns(row: dict, roles: dict[str, str]) -> Iterator[tuple[str, Any]]:
    turns = _field(row, "conversations")
    if not isinstance(turns, list):
        raise Rejection("malformed_conversation", "conversations is not a list")
    for turn in turns:
        if not isinstance(turn, dict):
            raise Rejection("malformed_conversation", "a turn is not an object")
        role = roles.get(turn.get("from"))
        if role is None:
            raise Rejection("unknown_role", f"from={turn.get('from')!r}")
        yield role, turn.get("value")


def openhermes(row: dict, **_: Any) -> Messages:
    return [{"role": role, "content": value} for role, value in _sharegpt_turns(row, OPENHERMES_ROLES)]


def infinity_instruct(row: dict, **_: Any) -> Messages:
    return openhermes(row)  # the same sharegpt form; its label / langdetect / source columns are not needed


def jiuzhang(row: dict, **_: Any) -> Messages:
    return [{"role": "user", "content": _field(row, "input")},
            {"role": "assistant", "content": _field(row, "output")}]


def _json_field(value: Any, reason: str, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as error:
        raise Rejection(reason, f"{what} is not valid JSON ({error.msg} at {error.pos})") from None


def glaive_function_calling(row: dict, **_: Any) -> Conversation:
    tools = _json_field(row.get("tools") or "[]", "malformed_tools", "tools")
    if not isinstance(tools, list) or not all(isinstance(t, dict) and "name" in t for t in tools):
        raise Rejection("malformed_tools", "tools is not a list of function definitions")
    messages: Messages = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.append({"role": "system", "content": row["system"]})
    for role, value in _sharegpt_turns(row, GLAIVE_ROLES):
        if role != "call":
            messages.append({"role": role, "content": value})
            continue
        call = _json_field(value, "malformed_tool_call", "a function_call")
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise Rejection("malformed_tool_call", 'a function_call is not an object with a "name"')
        arguments = _json_field(call.get("arguments", {}), "malformed_tool_call", "a function_call's arguments")
        tool_call = {"type": "function", "function": {"name": call["name"], "arguments": arguments}}
        if messages and messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls"):
            messages[-1]["tool_calls"] = [tool_call]  # "gpt: I'll look that up" then the call: one reply
        elif messages and messages[-1].get("tool_calls") and messages[-1]["role"] == "assistant":
            messages[-1]["tool_calls"].append(tool_call)
        else:
            messages.append({"role": "assistant", "content": "", "tool_calls": [tool_call]})
    functions = [{"type": "function", "function": tool} for tool in tools]
    return {"messages": messages, "tools": functions} if functions else messages


def flan(row: dict, **_: Any) -> Messages:
    return [{"role": "user", "content": _field(row, "inputs")},
            {"role": "assistant", "content": _field(row, "targets")}]


def do_not_answer(row: dict, response_column: str = "GPT4_response", harmful_column: str | None = "auto",
                  **_: Any) -> Messages:
    if harmful_column == "auto":
        harmful_column = response_column.replace("_response", "_harmful")
    if harmful_column and row.get(harmful_column) not in (None, "", 0, "0", False):
        raise Rejection("harmful_response", f"{harmful_column}={row.get(harmful_column)!r}")
    return [{"role": "user", "content": _field(row, "question")},
            {"role": "assistant", "content": _field(row, response_column)}]


MESSAGE_KEYS = ("role", "content", "tool_calls")


def messages(row: dict, messages_column: str = "messages", **_: Any) -> Conversation:
    value = _field(row, messages_column)
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise Rejection("malformed_conversation", f"{messages_column} is not a list of messages")
    conversation = [{k: m[k] for k in MESSAGE_KEYS if m.get(k) is not None or k == "content"} for m in value]
    tools = _json_field(row.get("tools"), "malformed_tools", "tools") if row.get("tools") else None
    return {"messages": conversation, "tools": tools} if tools else conversation


ADAPTERS = {"openhermes": openhermes, "flan": flan, "do_not_answer": do_not_answer, "messages": messages,
            "infinity_instruct": infinity_instruct, "jiuzhang": jiuzhang,
            "glaive_function_calling": glaive_function_calling}


def to_conversation(kind: str, row: dict, options: dict[str, Any], tool_tokens: bool = True) -> Conversation:
    """Adapt and validate one row (``tool_tokens``: the tokenizer's layout has them); raises
    :class:`~k2hf.records.Rejection` with a reason code."""
    conversation = ADAPTERS[kind](row, **options)
    turns, tools = split_conversation(conversation)
    validate_conversation(turns, tools, tool_tokens)  # its ConversationError is a Rejection too
    if not any(m["role"] == "assistant" for m in turns):
        raise Rejection("no_assistant_turn", "nothing to train on")
    if any(not m["content"].strip() for m in turns
           if m["role"] in ("user", "assistant") and not m.get("tool_calls")):
        raise Rejection("empty_message", "a user or assistant message is empty")
    return conversation


def read_rows(paths: list[str] | None, hub: dict[str, Any] | None) -> Iterator[tuple[int, Record]]:
    """``(record, item)`` for every record of the source, numbered across its files; ``item`` is ``(line, row)``
    or the :class:`~k2hf.records.Rejection` of a record that cannot be read."""
    if hub is not None:
        from datasets import load_dataset

        spec = dict(hub)
        stream = load_dataset(spec.pop("path"), split=spec.pop("split", "train"), streaming=True, **spec)
        yield from ((index, (index, row)) for index, row in enumerate(stream))
        return
    index = 0
    for path in paths or []:
        for item in read_records(path):
            yield index, item
            index += 1


def resolve_paths(patterns: list[str], base_dir: str) -> list[str]:
    import glob

    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(recipe_path(pattern, base_dir), recursive=True))
        if not matched:
            raise FileNotFoundError(f"{pattern!r} matches no file (looked in {base_dir})")
        files.extend(os.path.normpath(m) for m in matched)
    return files
