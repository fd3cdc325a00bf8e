"""``k2hf`` command line: a thin dispatcher. Each subcommand imports its implementation only when it runs."""

from __future__ import annotations

import argparse
import sys


def _chat(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from .chat import chat_loop, generate_reply, load_chat_model

    model, tokenizer = load_chat_model(args.model, device=args.device, revision=args.revision)
    if args.prompt is None:
        chat_loop(model, tokenizer, args.system, args.max_new_tokens, args.temperature)
        return 0
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    generate_reply(model, tokenizer, messages, args.max_new_tokens, args.temperature, streamer=streamer)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .conversion import export_to_llama

    out = export_to_llama(args.model, args.out)
    print(f"wrote a model_type=llama checkpoint to {out}")
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from .tokenizer import build_k2_tokenizer

    tokenizer = build_k2_tokenizer(args.base)
    tokenizer.save_pretrained(args.out)
    print(f"wrote K2 tokenizer ({len(tokenizer)} tokens) to {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, prompt=args.prompt)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="k2hf", description="LLM360 K2 on the Hugging Face stack.")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="chat with a K2 checkpoint (interactive, or one shot with --prompt)")
    chat.add_argument("model", help="checkpoint dir or Hub id (K2 or LLaMA format)")
    chat.add_argument("--prompt", help="one user message; print the streamed reply and exit")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
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
    tok.set_defaults(func=_tokenizer)

    demo = sub.add_parser("demo", help="the K2 story on built-in sample data, on CPU")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--prompt", default="What is the highest mountain in Africa?")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
