"""The token layouts LLM360 released for K2, by name: which tokens follow the LLaMA vocabulary, at which ids.

=================  ===========================================================================================
``k2``             ``LLM360/K2`` (base, the 360 checkpoints): 18 code tokens 32000-32017 (32018 tokens); the
                   tokenizer prepends ``<s>`` when special tokens are added (the pretraining rows have no BOS).
``k2_chat_060124`` K2-Chat of June 2024: + the 4 chat tokens at 32018-32021 (32022 tokens), no BOS.
``k2_chat``        ``LLM360/K2-Chat`` today (10/31/24, function calling): + 6 tool tokens at 32018-32023, then
                   the chat tokens at 32024-32027 (32028 tokens), no BOS.
=================  ===========================================================================================

All three name id 2 ``<|endoftext|>`` (an added token with ``normalized: true``: the text ``<|endoftext|>`` is
matched at the start of a text piece or after a space, and the text ``</s>`` stays text), keep ``<unk>`` (0,
normalized) and ``<s>`` (1, not special) as the released files do, and pad every model to 32032 embedding rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UserError

#: StarCoder's code tokens, ids 32000-32017 in K2 (this order).
K2_CODE_TOKENS: tuple[str, ...] = (
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<empty_output>",
    "<commit_before>",
    "<commit_msg>",
    "<commit_after>",
    "<reponame>",
)

END_OF_SYSTEM_PROMPT = "<|endofsystemprompt|>"
BEGIN_OF_SYSTEM = "<|beginofsystem|>"  # starts an assistant ("system" in K2's naming) reply
BEGIN_OF_USER = "<|beginofuser|>"
END_OF_CHAT = "<|endofchat|>"

#: K2-Chat control tokens, in their id order in both chat layouts.
K2_CHAT_TOKENS: tuple[str, ...] = (END_OF_SYSTEM_PROMPT, BEGIN_OF_SYSTEM, BEGIN_OF_USER, END_OF_CHAT)

TOOL_RESPONSE_START, TOOL_CALL_START, TOOLS_START = "<tool_response>", "<tool_call>", "<tools>"
TOOL_RESPONSE_END, TOOL_CALL_END, TOOLS_END = "</tool_response>", "</tool_call>", "</tools>"
#: K2-Chat 10/31/24's tool tokens, ids 32018-32023 (this order, as released).
K2_TOOL_TOKENS: tuple[str, ...] = (
    TOOL_RESPONSE_START, TOOL_CALL_START, TOOLS_START, TOOL_RESPONSE_END, TOOL_CALL_END, TOOLS_END)

EOS_TOKEN = "<|endoftext|>"  # id 2's name in every released K2 tokenizer
LEGACY_EOS_TOKEN = "</s>"  # id 2's name in LLaMA's SentencePiece model (and in k2hf tokenizers before layouts)
EOS_ID = 2
BOS_ID = 1
PAD_ID = 0
UNK_ID = 0


@dataclass(frozen=True)
class TokenLayout:
    """One released K2 tokenizer layout: the tokens added after the base vocabulary, and whether BOS is added."""

    name: str
    added_tokens: tuple[str, ...]
    adds_bos: bool
    description: str

    @property
    def has_chat(self) -> bool:
        return END_OF_CHAT in self.added_tokens

    @property
    def has_tools(self) -> bool:
        return TOOL_CALL_START in self.added_tokens

    def ids(self, base_size: int = 32000) -> dict[str, int]:
        """Token -> id on a base vocabulary of ``base_size`` pieces (32000 for LLaMA's)."""
        return {token: base_size + i for i, token in enumerate(self.added_tokens)}


LAYOUTS: Mapping[str, TokenLayout] = {
    layout.name: layout
    for layout in (
        TokenLayout("k2", K2_CODE_TOKENS, True, "LLM360/K2 (base): code tokens 32000-32017, BOS added"),
        TokenLayout("k2_chat_060124", K2_CODE_TOKENS + K2_CHAT_TOKENS, False,
                    "K2-Chat-060124: chat tokens 32018-32021"),
        TokenLayout("k2_chat", K2_CODE_TOKENS + K2_TOOL_TOKENS + K2_CHAT_TOKENS, False,
                    "LLM360/K2-Chat (10/31/24): tool tokens 32018-32023, chat tokens 32024-32027"),
    )
}
DEFAULT_LAYOUT = "k2_chat"  # what LLM360/K2-Chat ships today


class LayoutError(UserError, ValueError):
    """A tokenizer whose layout is not the one asked for (ids would mean other tokens)."""


def get_layout(name: str) -> TokenLayout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise LayoutError(f"unknown tokenizer layout {name!r}; known: {', '.join(LAYOUTS)}") from None


def detect_layout(tokenizer) -> str | None:
    """The name of the layout whose added tokens ``tokenizer`` has at exactly that layout's ids (on its base
    vocabulary, whatever its size), or ``None`` for anything else."""
    vocab = tokenizer.get_vocab()
    base_size = vocab.get(K2_CODE_TOKENS[0])
    if base_size is None:
        return None
    extra = {token for token in (*K2_TOOL_TOKENS, *K2_CHAT_TOKENS) if token in vocab}
    for layout in LAYOUTS.values():
        if set(layout.added_tokens) - set(K2_CODE_TOKENS) == extra and all(
                vocab.get(token) == i for token, i in layout.ids(base_size).items()):
            return layout.name
    return None


def check_layout(tokenizer, expected: str, what: str) -> str:
    """Raise :class:`LayoutError` unless ``tokenizer`` has layout ``expected`` (returns it)."""
    get_layout(expected)
    found = detect_layout(tokenizer)
    if found != expected:
        found_text = f"layout {found!r}" if found else "no known K2 layout"
        raise LayoutError(f"{what}: its tokenizer has {found_text}, not {expected!r}; rebuild it with "
                          f"`k2hf tokenizer BASE OUT --layout {expected}` or set the recipe's `layout` to match")
    return found


__all__ = [
    "BEGIN_OF_SYSTEM",
    "BEGIN_OF_USER",
    "BOS_ID",
    "DEFAULT_LAYOUT",
    "END_OF_CHAT",
    "END_OF_SYSTEM_PROMPT",
    "EOS_ID",
    "EOS_TOKEN",
    "K2_CHAT_TOKENS",
    "K2_CODE_TOKENS",
    "K2_TOOL_TOKENS",
    "LAYOUTS",
    "LEGACY_EOS_TOKEN",
    "LayoutError",
    "PAD_ID",
    "TOOLS_END",
    "TOOLS_START",
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "TOOL_RESPONSE_END",
    "TOOL_RESPONSE_START",
    "TokenLayout",
    "UNK_ID",
    "check_layout",
    "detect_layout",
    "get_layout",
]
