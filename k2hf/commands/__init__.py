"""The CLI's command groups, one module each: a ``register(subparsers)`` that adds the group's parser and its
flags beside the handlers that run them. :mod:`k2hf.cli` only collects them and turns user errors into one line."""
