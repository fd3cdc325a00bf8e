"""The K2-Chat conversation format: Jinja chat template, and an injection-safe encoder that matches it.

Format (``eos`` is id 2, rendered as the tokenizer's ``eos_token``)::

    {system}<|endofsystemprompt|><|beginofuser|>{user}<|beginofsystem|>{reply}{eos} ... <|endofchat|>

The system part appears only when a system message is given; the user/assistant part repeats per turn. A
finished conversation (last message from the assistant) ends with ``<|endofchat|>``; with
``add_generation_prompt=True`` it ends with ``<|beginofsystem|>`` for the model to continue.

``tokenizer.apply_chat_template`` renders text and then tokenizes it, so a user message containing the literal
string ``<|beginofuser|>`` would become control token 32020. :func:`encode_chat` builds the same ids from the
conversation's structure instead, encoding message text with ``split_special_tokens=True``; tests keep the two
paths identical on benign text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from .records import Rejection
from .tokenizer import (  # noqa: F401 (the template helpers are re-exported: they install what this module encodes)
    BEGIN_OF_SYSTEM,
    BEGIN_OF_USER,
    END_OF_CHAT,
    END_OF_SYSTEM_PROMPT,
    apply_chat_template_to,
    encode_plain_text,
    k2_chat_template,
)

Message = dict[str, Any]


class ConversationError(Rejection):
    """A conversation that the K2-Chat format cannot express; ``reason`` is a short code for reports."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(reason, message)


def validate_conversation(messages: Sequence[Message]) -> None:
    """Raise :class:`ConversationError` unless: optional first system message, then user/assistant alternating."""
    if not messages:
        raise ConversationError("K2-Chat: empty conversation", "empty_conversation")
    offset = 1 if messages[0].get("role") == "system" else 0
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ConversationError(
                f"K2-Chat: unknown role {role!r} at message {index}; roles are system (first only), user, assistant",
                "unknown_role",
            )
        if index >= offset:
            expected = "user" if (index - offset) % 2 == 0 else "assistant"
            if role != expected:
                raise ConversationError(
                    f"K2-Chat: expected role {expected!r} at message {index}, got {role!r}; after an optional first "
                    "system message, user and assistant must alternate starting with user",
                    "non_alternating",
                )
        if not isinstance(message.get("content"), str):
            raise ConversationError(f"K2-Chat: message content must be a string (message {index})",
                                    "non_string_content")


@dataclass(frozen=True)
class Segment:
    """One piece of a rendered conversation: either message text or a control token; ``trained`` marks replies."""

    text: str | None = None
    control: str | None = None
    trained: bool = False


def conversation_segments(
    messages: Sequence[Message], eos_token: str, add_generation_prompt: bool = False, validate: bool = True
) -> Iterator[Segment]:
    """The K2-Chat format as a sequence of text and control-token segments (the template, structurally)."""
    if validate:
        validate_conversation(messages)
    start = 0
    if messages[0]["role"] == "system":
        yield Segment(text=messages[0]["content"])
        yield Segment(control=END_OF_SYSTEM_PROMPT)
        start = 1
    for message in messages[start:]:
        if message["role"] == "user":
            yield Segment(control=BEGIN_OF_USER)
            yield Segment(text=message["content"])
        else:
            yield Segment(control=BEGIN_OF_SYSTEM)
            yield Segment(text=message["content"], trained=True)
            yield Segment(control=eos_token, trained=True)
    if add_generation_prompt:
        yield Segment(control=BEGIN_OF_SYSTEM)
    elif messages[-1]["role"] == "assistant":
        yield Segment(control=END_OF_CHAT)


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool = False
) -> dict[str, list[int]]:
    """Encode a conversation to K2-Chat ids without letting message text produce control tokens.

    Returns ``{"input_ids": [...], "assistant_masks": [...]}`` where the mask is 1 exactly on each reply's
    tokens and its eos (what ``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks).
    """
    return encode_chats(tokenizer, [messages], add_generation_prompt)[0]


def encode_chats(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    add_generation_prompt: bool = False,
    validate: bool = True,
) -> list[dict[str, list[int]]]:
    """:func:`encode_chat` for many conversations with one tokenizer call; ``validate=False`` skips
    re-validating conversations the caller has already checked."""
    return [
        {"input_ids": ids.tolist(), "assistant_masks": mask.astype(np.int64).tolist()}
        for ids, mask in encode_chats_arrays(tokenizer, conversations, add_generation_prompt, validate)
    ]


def encode_chats_arrays(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    add_generation_prompt: bool = False,
    validate: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`encode_chats` as ``(int32 ids, bool reply mask)`` arrays per conversation (the SFT packer's hot
    path): all message text goes through the tokenizer in one call and the conversations are assembled with a
    few whole-batch array operations instead of per-token Python work."""
    if not conversations:
        return []
    eos = tokenizer.eos_token
    control_ids: dict[str, int] = {}
    texts: list[str] = []
    seg_text: list[int] = []  # index into texts, or -1 for a control token
    seg_control: list[int] = []
    seg_trained: list[bool] = []
    conv_segments: list[int] = []
    for messages in conversations:
        before = len(seg_text)
        for segment in conversation_segments(messages, eos, add_generation_prompt, validate):
            if segment.text is not None:
                seg_text.append(len(texts))
                texts.append(segment.text)
                seg_control.append(0)
            else:
                if segment.control not in control_ids:
                    control_ids[segment.control] = tokenizer.convert_tokens_to_ids(segment.control)
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
    "ConversationError",
    "Segment",
    "apply_chat_template_to",
    "conversation_segments",
    "encode_chat",
    "encode_chats",
    "encode_chats_arrays",
    "k2_chat_template",
    "validate_conversation",
]
