"""``k2hf chat``, ``k2hf export``, ``k2hf tokenizer``: use a K2 checkpoint, convert it, build its tokenizer."""

from __future__ import annotations

import argparse

from ._common import given


def register(sub: argparse._SubParsersAction) -> None:
    chat = sub.add_parser("chat", help="chat with a K2 checkpoint (interactive, or one shot with --prompt)")
    chat.add_argument("model", help="checkpoint dir or Hub id (K2 or LLaMA format)")
    chat.add_argument("--prompt", help="one user message; print the streamed reply and exit")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--tools", help="JSON file: a list of function definitions (JSON schema); the model's calls "
                                      "are shown (K2-Chat 10/31/24 function calling)")
    chat.add_argument("--max-new-tokens", type=int, help="default: 256")
    chat.add_argument("--temperature", type=float, help="0 = greedy (the default)")
    chat.add_argument("--device", default=None, help="e.g. cuda, cpu (default: where the weights load)")
    chat.add_argument("--revision", default=None, help="Hub revision, e.g. ckpt_360")
    chat.set_defaults(func=_chat)

    export = sub.add_parser("export", help="write a plain model_type=llama copy of a K2 checkpoint")
    export.add_argument("model", help="K2 checkpoint dir")
    export.add_argument("--to", choices=["llama"], default="llama")
    export.add_argument("out", help="output dir")
    export.set_defaults(func=_export)

    tok = sub.add_parser("tokenizer", help="build K2's tokenizer from a LLaMA SentencePiece tokenizer.model")
    tok.add_argument("base", help="tokenizer.model or a dir holding it")
    tok.add_argument("out", help="output dir")
    tok.add_argument("--layout", choices=["k2", "k2_chat_060124", "k2_chat"], default="k2_chat",
                     help="which released layout: k2 (LLM360/K2 base), k2_chat_060124, k2_chat (LLM360/K2-Chat "
                          "today, with tool tokens; default)")
    tok.set_defaults(func=_tokenizer)


def _chat(args: argparse.Namespace) -> int:
    from k2hf.chat import ReplyStreamer, chat_loop, generate_message, generate_reply, load_chat_model, show_message

    tools = _read_tools(args.tools) if args.tools else None
    model, tokenizer = load_chat_model(args.model, device=args.device, revision=args.revision)
    options = given(args, "max_new_tokens", "temperature")
    if args.prompt is None:
        chat_loop(model, tokenizer, args.system, tools=tools, **options)
        return 0
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    if tools:
        show_message(generate_message(model, tokenizer, messages, tools=tools, **options))
        return 0
    generate_reply(model, tokenizer, messages, streamer=ReplyStreamer(tokenizer), **options)
    return 0


def _read_tools(path: str) -> list:
    import json

    from k2hf.errors import UserError

    try:
        with open(path, encoding="utf-8") as file:
            tools = json.load(file)
    except (OSError, ValueError) as error:
        raise UserError(f"--tools {path}: cannot read a JSON list of function definitions ({error})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise UserError(f"--tools {path}: expected a JSON list of function definitions (JSON schema objects)")
    return tools


def _export(args: argparse.Namespace) -> int:
    from k2hf.conversion import export_to_llama

    out = export_to_llama(args.model, args.out)
    print(f"wrote a model_type=llama checkpoint to {out}")
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from k2hf.tokenizer import build_k2_tokenizer, save_tokenizer

    tokenizer = build_k2_tokenizer(args.base, layout=args.layout)
    save_tokenizer(tokenizer, args.out)
    print(f"wrote K2 tokenizer, layout {args.layout} ({len(tokenizer)} tokens) to {args.out}")
    return 0
