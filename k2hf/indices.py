"""One parser for the index lists people type: ``--chunks 0-15,32``, ``--checkpoints 1,5,9`` or names."""

from __future__ import annotations

from .errors import UserError


def parse_index_list(text: str, what: str = "numbers") -> list[int]:
    """``"3,4,10-12"`` -> ``[3, 4, 10, 11, 12]`` (ranges inclusive, order kept)."""
    values: list[int] = []
    for part in text.split(","):
        a, dash, b = part.strip().partition("-")
        try:
            if dash:
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                values += range(lo, hi + 1)
            else:
                values.append(int(a))
        except ValueError:
            raise UserError(f"{text!r} is not a list of {what} such as 3,4,10-12") from None
    return values


def format_index_list(values: list[int], separator: str = ",") -> str:
    """The inverse of :func:`parse_index_list`: ``[0, 1, 2, 5]`` -> ``"0-2,5"`` (runs of consecutive values as
    ranges, order kept)."""
    parts: list[str] = []
    start = None
    for i, value in enumerate(values):
        start = value if start is None else start
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(f"{start}-{value}" if value != start else f"{value}")
            start = None
    return separator.join(parts)


def parse_selection(text: str) -> list[int | str]:
    """Numbers, ranges and names mixed (``"1,3-4,step_0000012"`` -> ``[1, 3, 4, "step_0000012"]``)."""
    picked: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        a, dash, b = part.partition("-")
        picked += parse_index_list(part) if a.isdigit() and (not dash or b.isdigit()) else [part]
    return picked


def index_list_arg(what: str = "numbers"):
    """An argparse ``type=`` for index lists of ``what`` (``chunk numbers``): a bad one is argparse's one-line
    error."""
    import argparse

    def parse(text: str) -> list[int]:
        try:
            return parse_index_list(text, what)
        except UserError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


__all__ = ["format_index_list", "index_list_arg", "parse_index_list", "parse_selection"]
