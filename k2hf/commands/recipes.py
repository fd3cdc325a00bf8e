"""``k2hf recipes list | path NAME | copy NAME DIR``: the recipes shipped with k2hf."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    recipes = sub.add_parser("recipes", help="the bundled recipes: list, path, copy one to start from")
    commands = recipes.add_subparsers(dest="recipes_command", required=True)
    commands.add_parser("list", help="every bundled recipe with its kind and summary").set_defaults(func=_list)
    path = commands.add_parser("path", help="where a bundled recipe is installed (e.g. for --config_file)")
    path.add_argument("name", help="e.g. accelerate/zero3 (see `k2hf recipes list`)")
    path.set_defaults(func=_path)
    copy = commands.add_parser("copy", help="copy a bundled recipe to edit")
    copy.add_argument("name", help="e.g. pretrain/tiny_stage1 (see `k2hf recipes list`)")
    copy.add_argument("dest", help="a folder (created if needed) or a .yaml file path")
    copy.add_argument("--overwrite", action="store_true", help="replace an existing file")
    copy.set_defaults(func=_copy)


def _list(args: argparse.Namespace) -> int:
    from k2hf.bundled import KINDS, list_recipes

    recipes = list_recipes()
    width = max(len(r.name) for r in recipes)
    kind = None
    for recipe in recipes:
        if recipe.kind != kind:
            kind = recipe.kind
            print(f"{'' if recipe is recipes[0] else chr(10)}# {KINDS[kind][2]}")
        print(f"{recipe.name:<{width}}  {recipe.summary}")
    return 0


def _path(args: argparse.Namespace) -> int:
    from k2hf.bundled import find_recipe

    print(find_recipe(args.name).path)
    return 0


def _copy(args: argparse.Namespace) -> int:
    from k2hf.bundled import copy_recipe

    target = copy_recipe(args.name, args.dest, overwrite=args.overwrite)
    print(f"wrote {target} (paths inside are relative to it; `k2hf:...` names files shipped with k2hf)")
    return 0
