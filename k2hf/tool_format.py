"""How K2-Chat function calling is written, in one place: the texts around the tool tokens, and parsing calls back.

LLM360 has not published the exact prompt text K2-Chat (10/31/24) was trained with; its tokenizer has the tool
tokens ``<tools>``, ``<tool_call>``, ``<tool_response>`` and their closing forms. k2hf writes a Hermes-style JSON
layout on those tokens (the wording below is k2hf's own)::

    {system}\\n\\n{TOOLS_INTRO}<tools>\\n{tool JSON}\\n...</tools>{TOOLS_OUTRO}<|endofsystemprompt|>
    <|beginofuser|>{user}<|beginofsystem|>{reply}<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>{eos}
    <|beginofuser|><tool_response>\\n{result}\\n</tool_response><|beginofsystem|>...

The Jinja template (``templates/k2_chat.jinja``) gets the two texts from here when it is installed, and the
structural encoder (:mod:`k2hf.chat_template`) builds the same pieces with the functions below; change the
wording here and both follow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .token_layouts import TOOL_CALL_END, TOOL_CALL_START

TOOLS_INTRO = ("You can call functions to help with the user's request. "
               "The available functions, one JSON signature per line:\n")
TOOLS_OUTRO = ("\nTo call a function, answer with a JSON object {\"name\": <function name>, \"arguments\": "
               "<arguments object>} between the tool-call tokens, one per call; each result comes back to you "
               "between the tool-response tokens.")

Tool = Mapping[str, Any] | Callable[..., Any]


def tool_schemas(tools: Sequence[Tool] | None) -> list[dict[str, Any]] | None:
    """JSON-schema tool definitions, Python functions converted as ``apply_chat_template`` does
    (transformers' ``get_json_schema``: type hints + a Google-style docstring)."""
    if not tools:
        return None
    from transformers.utils import get_json_schema

    return [dict(tool) if isinstance(tool, Mapping) else get_json_schema(tool) for tool in tools]


def tojson(value: Any) -> str:
    """JSON exactly as the chat template's ``tojson`` filter writes it."""
    return json.dumps(value, ensure_ascii=False)


def tools_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """What goes between ``<tools>`` and ``</tools>``."""
    return "\n" + "".join(tojson(tool) + "\n" for tool in tools)


def system_text(system: str, has_tools: bool) -> str:
    """The system message and, with tools, the introduction before ``<tools>``."""
    return system + ("\n\n" if system and has_tools else "") + (TOOLS_INTRO if has_tools else "")


def call_text(call: Mapping[str, Any]) -> str:
    """What goes between ``<tool_call>`` and ``</tool_call>`` for one call (``{"type": "function", "function":
    {...}}`` or the bare function dict); string arguments are written as they are."""
    function = call.get("function", call)
    arguments = function.get("arguments")
    arguments = arguments if isinstance(arguments, str) else tojson(arguments)
    return "\n" + '{"name": ' + tojson(function.get("name")) + ', "arguments": ' + arguments + "}" + "\n"


def response_text(content: Any) -> str:
    """What goes between ``<tool_response>`` and ``</tool_response>``."""
    return "\n" + (content if isinstance(content, str) else tojson(content)) + "\n"


_CALL = re.compile(re.escape(TOOL_CALL_START) + r"(.*?)(?:" + re.escape(TOOL_CALL_END) + r"|$)", re.DOTALL)


def parse_tool_calls(text: str) -> dict[str, Any]:
    """A generated reply (decoded with special tokens kept) -> ``{"content", "tool_calls"}``, in transformers'
    message form: ``tool_calls`` is ``[{"type": "function", "function": {"name", "arguments": dict}}]``.

    A call that is not a JSON object with a string ``name`` and object ``arguments`` is not raised: it is listed
    under ``"errors"`` (``{"text", "error"}``; the key is there only when something was malformed), and the
    remaining calls are kept. Chat control tokens and eos left in ``text`` are dropped from ``content``.
    """
    calls, errors = [], []
    for match in _CALL.finditer(text):
        raw = match.group(1).strip()
        try:
            call = json.loads(raw)
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError('not an object with a string "name"')
            arguments = call.get("arguments", {})
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            if not isinstance(arguments, dict):
                raise ValueError('"arguments" is not an object')
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            errors.append({"text": raw, "error": str(error)})
            continue
        calls.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    content = _CALL.sub("", text)
    for token in ("<|endoftext|>", "</s>", "<|endofchat|>", "<|beginofsystem|>", "<|beginofuser|>"):
        content = content.replace(token, "")
    result: dict[str, Any] = {"content": content.strip(), "tool_calls": calls}
    if errors:
        result["errors"] = errors
    return result


__all__ = ["TOOLS_INTRO", "TOOLS_OUTRO", "call_text", "parse_tool_calls", "response_text", "system_text",
           "tool_schemas", "tools_text"]
