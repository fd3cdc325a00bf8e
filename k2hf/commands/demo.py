"""``k2hf demo``: the whole K2 story on the bundled sample data, on CPU."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the K2 story on built-in sample data, on CPU")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--prompt", default="What is the highest mountain in Africa?")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from k2hf.demo import run_demo

    run_demo(args.out, prompt=args.prompt)
    return 0
