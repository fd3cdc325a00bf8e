"""The K2-Chat conversation format: Jinja chat template, and an injection-safe encoder that matches it.

Format (``eos`` is id 2, rendered as the tokenizer's ``eos_token``)::

    {system}<|endofsystemprompt|><|beginofuser|>{user}<|beginofsystem|>{reply}{eos} ... <|endofchat|>

The system part appears only when a system message (or tools) is given; the user/assistant part repeats per
turn. A finished conversation (last message from the assistant) ends with ``<|endofchat|>``; with
``add_generation_prompt=True`` it ends with ``<|beginofsystem|>`` for the model to continue. Function calling
(the ``k2_chat`` layout's tool tokens) follows transformers' conventions: ``tools=[...]`` (JSON schemas or Python
functions), assistant messages with ``tool_calls``, and ``role: "tool"`` results, written as
:mod:`k2hf.tool_format` describes.

``tokenizer.apply_chat_template`` renders text and then tokenizes it, so a user message containing the literal
string ``<|beginofuser|>`` would become a control token. :func:`encode_chat` builds the same ids from the
conversation's structure instead, encoding message text with ``split_special_tokens=True``; tests keep the two
paths identical on benign text, on every layout and on the released tokenizer files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from .records import Rejection
from .token_layouts import (
    BEGIN_OF_SYSTEM,
    BEGIN_OF_USER,
    END_OF_CHAT,
    END_OF_SYSTEM_PROMPT,
    K2_TOOL_TOKENS,
    TOOL_CALL_END,
    TOOL_CALL_START,
    TOOL_RESPONSE_END,
    TOOL_RESPONSE_START,
    TOOLS_END,
    TOOLS_START,
)
from .tokenizer import (  # noqa: F401 (the template helpers are re-exported: they install what this module encodes)
    apply_chat_template_to,
    encode_plain_text,
    k2_chat_template,
)
from .tool_format import TOOLS_OUTRO, call_text, response_text, system_text, tojson, tool_schemas, tools_text

Message = dict[str, Any]
#: A conversation: its messages, or ``{"messages": [...], "tools": [...]}`` (the form of TRL's datasets).
Conversation = Sequence[Message] | Mapping[str, Any]


class ConversationError(Rejection):
    """A conversation that the K2-Chat format cannot express; ``reason`` is a short code for reports."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(reason, message)


def split_conversation(conversation: Conversation) -> tuple[Sequence[Message], list[dict] | None]:
    """``(messages, tools)`` of either conversation form."""
    if isinstance(conversation, Mapping):
        return conversation["messages"], tool_schemas(conversation.get("tools"))
    return conversation, None


def _tool_calls(message: Message) -> list:
    return (message.get("tool_calls") or []) if message.get("role") == "assistant" else []


def validate_conversation(messages: Sequence[Message], tools: Sequence | None = None,
                          tool_tokens: bool = True) -> None:
    """Raise :class:`ConversationError` unless: optional first system message, then user and assistant
    alternating from user; an assistant message with ``tool_calls`` is followed by its ``tool`` results, then
    the assistant again. ``tool_tokens=False`` (a layout without them) rejects tools altogether."""
    if not messages:
        raise ConversationError("K2-Chat: empty conversation", "empty_conversation")
    if (tools or any(_tool_calls(m) for m in messages)) and not tool_tokens:
        raise ConversationError("K2-Chat: this tokenizer's layout has no tool tokens; use the k2_chat layout for "
                                "tools", "no_tool_tokens")
    roles = "system (first only), user, assistant" + (", tool" if tool_tokens else "")
    previous = "start"
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool") or (role == "tool" and not tool_tokens):
            raise ConversationError(f"K2-Chat: unknown role {role!r} at message {index}; roles are {roles}",
                                    "unknown_role")
        if index == 0 and role == "system":
            _check_content(message.get("content"), index)
            continue
        allowed = {"call": ["tool"], "tool": ["tool", "assistant"], "user": ["assistant"]}.get(previous, ["user"])
        if role not in allowed:
            raise ConversationError(
                f"K2-Chat: expected role {' or '.join(repr(r) for r in allowed)} at message {index}, got {role!r}; "
                "after an optional first system message, user and assistant alternate starting with user, and tool "
                "results follow the assistant message that called them", "non_alternating")
        calls = _tool_calls(message)
        content = message.get("content")
        if content is None and (calls or role == "tool"):
            content = ""
        if role == "tool" and not isinstance(content, str):
            content = tojson(content)
        _check_content(content, index)
        for call in calls:
            function = call.get("function", call) if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                raise ConversationError(f"K2-Chat: tool call in message {index} has no function name",
                                        "malformed_tool_call")
        previous = "call" if calls else role


def _check_content(content: Any, index: int) -> None:
    if not isinstance(content, str):
        raise ConversationError(f"K2-Chat: message content must be a string (message {index})", "non_string_content")


@dataclass(frozen=True)
class Segment:
    """One piece of a rendered conversation: either message text or a control token; ``trained`` marks replies
    (their text, tool calls and eos)."""

    text: str | None = None
    control: str | None = None
    trained: bool = False


def conversation_segments(
    messages: Sequence[Message], eos_token: str, add_generation_prompt: bool = False, validate: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None, tool_tokens: bool = True,
) -> Iterator[Segment]:
    """The K2-Chat format as a sequence of text and control-token segments (the template, structurally)."""
    if validate:
        validate_conversation(messages, tools, tool_tokens)
    start = 0
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    if system is not None or tools:
        yield Segment(text=system_text(system or "", bool(tools)))
        if tools:
            yield Segment(control=TOOLS_START)
            yield Segment(text=tools_text(tools))
            yield Segment(control=TOOLS_END)
            yield Segment(text=TOOLS_OUTRO)
        yield Segment(control=END_OF_SYSTEM_PROMPT)
        start = 1 if system is not None else 0
    previous = None
    for message in messages[start:]:
        role = message["role"]
        if role == "user":
            yield Segment(control=BEGIN_OF_USER)
            yield Segment(text=message["content"])
        elif role == "tool":
            if previous != "tool":
                yield Segment(control=BEGIN_OF_USER)
            yield Segment(control=TOOL_RESPONSE_START)
            yield Segment(text=response_text("" if message.get("content") is None else message["content"]))
            yield Segment(control=TOOL_RESPONSE_END)
        else:
            yield Segment(control=BEGIN_OF_SYSTEM)
            content = message.get("content") or ""
            if content:
                yield Segment(text=content, trained=True)
            for call in _tool_calls(message):
                yield Segment(control=TOOL_CALL_START, trained=True)
                yield Segment(text=call_text(call), trained=True)
                yield Segment(control=TOOL_CALL_END, trained=True)
            yield Segment(control=eos_token, trained=True)
        previous = role
    if add_generation_prompt:
        yield Segment(control=BEGIN_OF_SYSTEM)
    elif messages[-1]["role"] == "assistant":
        yield Segment(control=END_OF_CHAT)


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], tools: Sequence | None = None,
    add_generation_prompt: bool = False,
) -> dict[str, list[int]]:
    """Encode a conversation to K2-Chat ids without letting message text produce control tokens.

    ``tools`` are JSON-schema function definitions or Python functions, as for ``apply_chat_template``.
    Returns ``{"input_ids": [...], "assistant_masks": [...]}`` where the mask is 1 exactly on each reply's
    tokens, its tool calls and its eos (what ``apply_chat_template(..., return_assistant_tokens_mask=True)``
    marks); tool definitions and tool results are never marked.
    """
    conversation = {"messages": messages, "tools": tools} if tools else messages
    return encode_chats(tokenizer, [conversation], add_generation_prompt)[0]


def encode_chats(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    add_generation_prompt: bool = False,
    validate: bool = True,
) -> list[dict[str, list[int]]]:
    """:func:`encode_chat` for many conversations with one tokenizer call; ``validate=False`` skips
    re-validating conversations the caller has already checked."""
    return [
        {"input_ids": ids.tolist(), "assistant_masks": mask.astype(np.int64).tolist()}
        for ids, mask in encode_chats_arrays(tokenizer, conversations, add_generation_prompt, validate)
    ]


def _control_id(vocab: Mapping[str, int], token: str) -> int:
    token_id = vocab.get(token)
    if token_id is None:
        raise ConversationError(f"K2-Chat: the tokenizer has no {token} token (its layout is not a K2-Chat one)",
                                "missing_control_token")
    return token_id


def has_tool_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in K2_TOOL_TOKENS)


def encode_chats_arrays(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    add_generation_prompt: bool = False,
    validate: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`encode_chats` as ``(int32 ids, bool reply mask)`` arrays per conversation (the SFT packer's hot
    path): all message text goes through the tokenizer in one call and the conversations are assembled with a
    few whole-batch array operations instead of per-token Python work."""
    if not conversations:
        return []
    eos = tokenizer.eos_token
    vocab = tokenizer.get_vocab()  # once per call: building it is the costly part on a 32K vocabulary
    tool_tokens = all(token in vocab for token in K2_TOOL_TOKENS)
    control_ids: dict[str, int] = {}
    texts: list[str] = []
    seg_text: list[int] = []  # index into texts, or -1 for a control token
    seg_control: list[int] = []
    seg_trained: list[bool] = []
    conv_segments: list[int] = []
    for conversation in conversations:
        messages, tools = split_conversation(conversation)
        before = len(seg_text)
        for segment in conversation_segments(messages, eos, add_generation_prompt, validate, tools, tool_tokens):
            if segment.text is not None:
                seg_text.append(len(texts))
                texts.append(segment.text)
                seg_control.append(0)
            else:
                if segment.control not in control_ids:
                    control_ids[segment.control] = _control_id(vocab, segment.control)
                seg_text.append(-1)
                seg_control.append(control_ids[segment.control])
            seg_trained.append(segment.trained)
        conv_segments.append(len(seg_text) - before)
    encoded = encode_plain_text(tokenizer, texts) if texts else []
    text_lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    flat = np.fromiter(chain.from_iterable(encoded), np.int32, int(text_lengths.sum()))
    # one extra zero-length text at index -1 stands for "control token" in the lookups below
    text_starts = np.append(np.cumsum(text_lengths) - text_lengths, 0)
    text_lengths = np.append(text_lengths, 0)
    segment_text = np.asarray(seg_text, dtype=np.int64)
    is_text = segment_text >= 0
    lengths = np.where(is_text, text_lengths[segment_text], 1)
    starts = np.cumsum(lengths) - lengths
    token_is_text = np.repeat(is_text, lengths)
    ids = np.repeat(np.asarray(seg_control, dtype=np.int32), lengths)
    source = np.arange(len(ids)) + np.repeat(text_starts[segment_text] - starts, lengths)
    ids[token_is_text] = flat[source[token_is_text]]
    mask = np.repeat(np.asarray(seg_trained, dtype=bool), lengths)
    ends = np.append(starts, len(ids))[np.cumsum(conv_segments)]
    return list(zip(np.split(ids, ends[:-1]), np.split(mask, ends[:-1])))


__all__ = [
    "Conversation",
    "ConversationError",
    "Segment",
    "apply_chat_template_to",
    "conversation_segments",
    "encode_chat",
    "encode_chats",
    "encode_chats_arrays",
    "has_tool_tokens",
    "k2_chat_template",
    "split_conversation",
    "validate_conversation",
]
