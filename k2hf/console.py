"""Where library logs go when k2hf runs as a program (the CLI and the training scripts): one plain line each on
stderr. Library code only logs; programs call :func:`configure_logging` once."""

from __future__ import annotations

import logging


def configure_logging(level: int = logging.INFO) -> None:
    """Show k2hf's own log records (INFO and up) as ``[k2hf] message``; leaves other loggers alone."""
    logger = logging.getLogger("k2hf")
    if not any(getattr(h, "_k2hf", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[k2hf] %(message)s"))
        handler._k2hf = True
        logger.addHandler(handler)
    logger.setLevel(level)
