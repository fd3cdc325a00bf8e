"""The one base class of user errors: a mistake in input, config or arguments that the user can fix.

The ``k2hf`` CLI prints these as one line (what is wrong and what to do) and exits with code 2; anything else
is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Something the user can fix; the message says what and how."""


__all__ = ["UserError"]
