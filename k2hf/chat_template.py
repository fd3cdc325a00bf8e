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
from importlib import resources
from typing import Any

from transformers import PreTrainedTokenizerBase

from .tokenizer import BEGIN_OF_SYSTEM, BEGIN_OF_USER, END_OF_CHAT, END_OF_SYSTEM_PROMPT, encode_plain_text

Message = dict[str, Any]


def k2_chat_template() -> str:
    """The K2-Chat Jinja template (with ``{% generation %}`` markers around each reply and its eos)."""
    return resources.files("k2hf").joinpath("templates/k2_chat.jinja").read_text(encoding="utf-8")


def apply_chat_template_to(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Install the K2-Chat template on any K2 tokenizer (e.g. one loaded from a Hub K2 checkpoint); returns it."""
    missing = [t for t in (END_OF_SYSTEM_PROMPT, BEGIN_OF_SYSTEM, BEGIN_OF_USER, END_OF_CHAT) if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"not a K2 tokenizer: missing chat tokens {missing} (build one with k2hf.build_k2_tokenizer)")
    tokenizer.chat_template = k2_chat_template()
    return tokenizer


class ConversationError(ValueError):
    """A conversation that the K2-Chat format cannot express; ``reason`` is a short code for reports."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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
            raise ConversationError(f"K2-Chat: message content must be a string (message {index})", "non_string_content")


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
    """:func:`encode_chat` for many conversations with one tokenizer call (what the SFT packer uses);
    ``validate=False`` skips re-validating conversations the caller has already checked."""
    eos = tokenizer.eos_token
    all_segments = [list(conversation_segments(m, eos, add_generation_prompt, validate)) for m in conversations]
    texts = [seg.text for segments in all_segments for seg in segments if seg.text is not None]
    encoded = iter(encode_plain_text(tokenizer, texts) if texts else [])
    control_ids: dict[str, int] = {}
    results = []
    for segments in all_segments:
        input_ids: list[int] = []
        masks: list[int] = []
        for segment in segments:
            if segment.text is not None:
                ids = next(encoded)
            else:
                if segment.control not in control_ids:
                    control_ids[segment.control] = tokenizer.convert_tokens_to_ids(segment.control)
                ids = [control_ids[segment.control]]
            input_ids.extend(ids)
            masks.extend([int(segment.trained)] * len(ids))
        results.append({"input_ids": input_ids, "assistant_masks": masks})
    return results


__all__ = [
    "ConversationError",
    "Segment",
    "apply_chat_template_to",
    "conversation_segments",
    "encode_chat",
    "encode_chats",
    "k2_chat_template",
    "validate_conversation",
]
