"""Chat with a K2 / K2-Chat checkpoint: one-shot or interactive, tokens streamed as they are generated.

User text is encoded with :func:`k2hf.encode_chat`, so a message that contains ``<|beginofsystem|>`` or
``<|endoftext|>`` stays plain text instead of turning into control tokens. With ``tools`` (K2-Chat 10/31/24's
function calling), :func:`generate_message` returns the reply as a message with its parsed ``tool_calls``, and
:func:`run_tool_loop` calls the given Python functions until the model answers in text.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import torch
from transformers import AutoTokenizer, TextStreamer

from .chat_template import Message, apply_chat_template_to, encode_chat
from .checkpoints import check_model_dir
from .modeling import K2ForCausalLM
from .tool_format import parse_tool_calls

logger = logging.getLogger(__name__)


class ReplyStreamer(TextStreamer):
    """Prints a reply as it is generated, without its eos: ``tokenizers`` does not skip a *normalized* special
    token when decoding, and the released K2 tokenizers' id 2 is one (so ``skip_special_tokens`` keeps it)."""

    def __init__(self, tokenizer, **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, **decode_kwargs)

    def put(self, value: torch.Tensor) -> None:
        if self.next_tokens_are_prompt:
            super().put(value)
            return
        ids = value.flatten()
        ids = ids[ids != self.tokenizer.eos_token_id]
        if ids.numel():
            super().put(ids)


def load_chat_model(model_dir: str | os.PathLike, device: str | None = None, dtype: str | torch.dtype = "auto", **kw):
    """Load model and tokenizer from a K2 checkpoint (``model_type`` k2 or llama, local dir or Hub id + revision)."""
    check_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, revision=kw.get("revision"))
    if tokenizer.chat_template is None:
        apply_chat_template_to(tokenizer)
    model = K2ForCausalLM.from_pretrained(model_dir, dtype=dtype, **kw)
    if device:
        model.to(device)
    return model.eval(), tokenizer


@torch.inference_mode()
def generate_reply(
    model: K2ForCausalLM,
    tokenizer,
    messages: list[Message],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    streamer: TextStreamer | None = None,
    tools: Sequence[Any] | None = None,
    skip_special_tokens: bool = True,
) -> str:
    """Generate the assistant's next reply to ``messages`` (greedy when ``temperature == 0``), stopping at eos.
    ``skip_special_tokens=False`` keeps the tool-call tokens in the text (what :func:`parse_tool_calls` reads)."""
    prompt = encode_chat(tokenizer, messages, tools=tools, add_generation_prompt=True)["input_ids"]
    ids = torch.tensor([prompt], device=model.device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    output = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
        **sampling,
    )
    reply = output[0, ids.shape[1] :].tolist()
    if reply and reply[-1] == tokenizer.eos_token_id:
        reply = reply[:-1]
    return tokenizer.decode(reply, skip_special_tokens=skip_special_tokens)


def generate_message(model: K2ForCausalLM, tokenizer, messages: list[Message], tools: Sequence[Any] | None = None,
                     **generation: Any) -> Message:
    """The assistant's next message, ``{"role": "assistant", "content", "tool_calls"}`` (transformers' form;
    ``tool_calls`` only when it made some), with ``"errors"`` listing calls it wrote that do not parse."""
    text = generate_reply(model, tokenizer, messages, tools=tools, skip_special_tokens=False, **generation)
    parsed = parse_tool_calls(text)
    message: Message = {"role": "assistant", "content": parsed["content"]}
    if parsed["tool_calls"]:
        message["tool_calls"] = parsed["tool_calls"]
    if "errors" in parsed:
        message["errors"] = parsed["errors"]
    return message


def run_tool_loop(model: K2ForCausalLM, tokenizer, messages: list[Message], tools: Sequence[Callable[..., Any]],
                  max_rounds: int = 4, schemas: Sequence[Mapping[str, Any]] | None = None,
                  **generation: Any) -> list[Message]:
    """Chat with function calling: generate, call each requested function (one of ``tools``, by name) with its
    arguments, append the results as ``tool`` messages, and repeat until a reply without calls (or
    ``max_rounds`` replies). Returns the conversation with every new message. A call to an unknown function or
    one that raises becomes a ``{"error": ...}`` result the model sees, not an exception.

    The prompt describes the functions with ``schemas`` when given, else with each function's schema from its
    signature and docstring (transformers' ``get_json_schema``)."""
    by_name = {tool.__name__: tool for tool in tools}
    history = list(messages)
    for _ in range(max_rounds):
        message = generate_message(model, tokenizer, history, tools=schemas or tools, **generation)
        message.pop("errors", None)
        history.append(message)
        if not message.get("tool_calls"):
            break
        for call in message["tool_calls"]:
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            history.append({"role": "tool", "content": _call_tool(by_name, name, arguments)})
    return history


def _call_tool(by_name: Mapping[str, Callable[..., Any]], name: str, arguments: dict) -> str:
    if name not in by_name:
        return json.dumps({"error": f"unknown function {name!r}; available: {sorted(by_name)}"})
    try:
        result = by_name[name](**arguments)
    except Exception as error:  # noqa: BLE001 (the model sees the failure, as a tool result)
        logger.warning("tool %s(%s) failed: %s", name, arguments, error)
        return json.dumps({"error": f"{type(error).__name__}: {error}"})
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


def show_message(message: Message, out: TextIO = sys.stdout) -> None:
    """Print an assistant message: its text, then each tool call as ``name({arguments})`` and any malformed one."""
    if message.get("content"):
        print(message["content"], file=out)
    for call in message.get("tool_calls", []):
        function = call["function"]
        print(f"[tool call] {function['name']}({json.dumps(function['arguments'], ensure_ascii=False)})", file=out)
    for error in message.get("errors", []):
        print(f"[malformed tool call] {error['error']}: {error['text']}", file=out)


def chat_loop(
    model: K2ForCausalLM,
    tokenizer,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    read_line: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    tools: Sequence[Any] | None = None,
) -> list[Message]:
    """Interactive chat: ``/reset`` clears the history, ``/exit`` or end of input quits. Returns the history.
    With ``tools`` (function definitions), the model's calls are shown and you type each call's result."""
    history: list[Message] = [{"role": "system", "content": system}] if system else []
    streamer = ReplyStreamer(tokenizer)
    print("K2 chat — /reset clears the conversation, /exit quits.", file=out)
    generation = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    while True:
        try:
            line = read_line("you> ")
        except EOFError:
            break
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            history = history[:1] if system else []
            print("(conversation cleared" + (", system prompt kept)" if system else ")"), file=out)
            continue
        history.append({"role": "user", "content": line})
        if not tools:
            print("k2> ", end="", file=out, flush=True)
            reply = generate_reply(model, tokenizer, history, streamer=streamer, **generation)
            history.append({"role": "assistant", "content": reply})
            continue
        try:
            for _ in range(8):  # a reply, and more replies while it calls tools
                message = generate_message(model, tokenizer, history, tools=tools, **generation)
                show_message(message, out)
                message.pop("errors", None)
                history.append(message)
                if not message.get("tool_calls"):
                    break
                for call in message["tool_calls"]:
                    history.append({"role": "tool", "content": read_line(f"result of {call['function']['name']}> ")})
        except EOFError:
            break
    return history


__all__ = ["ReplyStreamer", "chat_loop", "generate_message", "generate_reply", "load_chat_model", "run_tool_loop"]
