"""Chat with a K2 / K2-Chat checkpoint: one-shot or interactive, tokens streamed as they are generated.

User text is encoded with :func:`k2hf.encode_chat`, so a message that contains ``<|beginofsystem|>`` or ``</s>``
stays plain text instead of turning into control tokens.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO

import torch
from transformers import AutoTokenizer, TextStreamer

from .chat_template import Message, apply_chat_template_to, encode_chat
from .checkpoints import check_model_dir
from .modeling import K2ForCausalLM


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
) -> str:
    """Generate the assistant's next reply to ``messages`` (greedy when ``temperature == 0``), stopping at eos."""
    ids = torch.tensor([encode_chat(tokenizer, messages, add_generation_prompt=True)["input_ids"]], device=model.device)
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
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)


def chat_loop(
    model: K2ForCausalLM,
    tokenizer,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    read_line: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> list[Message]:
    """Interactive chat: ``/reset`` clears the history, ``/exit`` or end of input quits. Returns the history."""
    history: list[Message] = [{"role": "system", "content": system}] if system else []
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    print("K2 chat — /reset clears the conversation, /exit quits.", file=out)
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
        print("k2> ", end="", file=out, flush=True)
        reply = generate_reply(model, tokenizer, history, max_new_tokens, temperature, streamer=streamer)
        history.append({"role": "assistant", "content": reply})
    return history


__all__ = ["chat_loop", "generate_reply", "load_chat_model"]
