"""The one base class of user errors: a mistake in input, config or arguments that the user can fix.

The ``k2hf`` CLI prints these as one line (what is wrong and what to do) and exits with code 2; anything else
is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Something the user can fix; the message says what and how."""


def hub_access_problem(error: BaseException) -> str | None:
    """One line for an error that only means a Hub repo could not be reached or found (offline, no network, no
    such repo, revision or file), looking through the exception's causes; ``None`` for anything else.

    transformers and huggingface_hub wrap these in ``OSError``s with long tracebacks; to a user of the CLI they
    are one fact and one thing to do.
    """
    from huggingface_hub import constants
    from huggingface_hub import errors as hub

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, hub.OfflineModeIsEnabled | hub.LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE:
            return ("the Hub is offline here (HF_HUB_OFFLINE=1) and the files are not in the local cache: a local "
                    "path? it does not exist here; otherwise go online once to cache them")
        if isinstance(seen, hub.RepositoryNotFoundError | hub.RevisionNotFoundError | hub.EntryNotFoundError):
            return f"{str(seen).splitlines()[0]} (a local path? it does not exist here)"
        if isinstance(seen, ConnectionError) or type(seen).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
            return (f"cannot reach the Hub ({type(seen).__name__}: {seen}): a local path? it does not exist here; "
                    "otherwise check the network, or set HF_HUB_OFFLINE=1 to use cached files")
        seen = seen.__cause__ or seen.__context__
    return None


__all__ = ["UserError", "hub_access_problem"]
