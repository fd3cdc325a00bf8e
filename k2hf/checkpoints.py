"""Every checkpoint of a training, in training order: a Hub repo's ``ckpt_NNN`` branches or a k2hf run dir.

```python
import k2hf.checkpoints

for ckpt in k2hf.checkpoints.list("LLM360/K2"):            # ckpt_001 ... ckpt_360, with revision= for each
    print(ckpt.name, ckpt.chunk)                              # chunk trained last, from K2's real order
model = k2hf.checkpoints.load("LLM360/K2", "ckpt_120", dtype="auto")
for ckpt in k2hf.checkpoints.list("outputs/pretrain/run"):  # chunk, mid-chunk step and spike-evidence checkpoints
    print(ckpt.name, ckpt.kind, ckpt.global_step, ckpt.tokens_seen, ckpt.chunk)
```

A run dir's checkpoints come from its owner, :class:`k2hf.formats.RunDir` (the one lister the trainer uses too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .formats import CHUNK_CHECKPOINT, Checkpoint, RunDir
from .release import K2_HUB_MODEL, k2_chunk_order


class CheckpointError(UserError):
    """A source with no such checkpoint, or a source that is neither a run dir, a model dir nor a Hub repo."""


def looks_local(source: str | os.PathLike) -> bool:
    """A path rather than a Hub repo id (``org/name`` or ``name``)."""
    text = str(source)
    return os.path.exists(text) or text.startswith((".", "/", "~")) or text.count("/") > 1


def check_model_dir(source: str | os.PathLike, tokenizer: bool = True) -> None:
    """Refuse, in one line, a local model source that cannot be a checkpoint: missing, not a folder, without a
    readable ``config.json`` (never fall back to a default config: K2's default is the 65B shape) or, when
    ``tokenizer``, without tokenizer files. Hub ids pass through to the Hub client."""
    if not looks_local(source):
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{source} does not exist (a local path, not a Hub repo id)")
    if not path.is_dir():
        raise CheckpointError(f"{source} is a file: give the checkpoint folder (config.json, *.safetensors, tokenizer)")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{source} has no config.json: not a model checkpoint (a K2 checkpoint folder holds "
                              "config.json, *.safetensors and the tokenizer)")
    try:
        json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config} is not readable JSON ({error}): re-save the checkpoint") from None
    if tokenizer and not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise CheckpointError(f"{source} has no tokenizer files (tokenizer.json / tokenizer.model): save the K2 "
                              "tokenizer there (`k2hf tokenizer LLAMA_TOKENIZER_MODEL DIR` or k2hf.save_tokenizer)")


def list_checkpoints(source: str | os.PathLike, order: list[int] | None = None) -> list[Checkpoint]:
    """The checkpoints of ``source`` in training order.

    ``source``: a k2hf run dir (chunk, mid-chunk step and spike-evidence checkpoints, each with its step, tokens
    seen and chunk from its saved trainer state), a single model dir, or a Hub model repo id (its ``ckpt_NNN``
    branches in numeric order). ``order`` gives the chunk behind each ``ckpt_N`` of a Hub repo; for
    ``LLM360/K2`` it defaults to K2's real order.
    """
    path = Path(source)
    if path.is_dir():
        if RunDir.is_run_dir(path):
            return RunDir(path).checkpoints()
        if (path / "config.json").is_file():
            return [Checkpoint(name=path.name, kind="model", path=path)]
        raise CheckpointError(f"{path} is neither a k2hf run dir (no {RunDir.CHECKPOINTS}/) nor a model dir "
                              "(no config.json)")
    if path.exists():
        raise CheckpointError(f"{source} is a file: give a run dir, a model dir or a Hub repo id")
    if looks_local(source):
        raise CheckpointError(f"{source} does not exist (a local path); give a run dir, a model dir or a Hub repo id")
    return _hub_checkpoints(str(source), order)


def _hub_checkpoints(repo_id: str, order: list[int] | None) -> list[Checkpoint]:
    from huggingface_hub import HfApi

    if order is None and repo_id.lower() == K2_HUB_MODEL.lower():
        order = k2_chunk_order()
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        refs = HfApi().list_repo_refs(repo_id, repo_type="model")
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id} is not a model repo on the Hub (nor a local dir)") from None
    except OfflineModeIsEnabled:
        raise CheckpointError(f"cannot list {repo_id}: the Hub is offline here (HF_HUB_OFFLINE=1)") from None
    except HfHubHTTPError as error:
        raise CheckpointError(f"cannot list {repo_id} on the Hub: {str(error).splitlines()[0]}") from None
    numbered = sorted((int(m.group(1)), b.name) for b in refs.branches if (m := CHUNK_CHECKPOINT.match(b.name)))
    if not numbered:
        raise CheckpointError(f"{repo_id} has no ckpt_NNN branches (it has: {sorted(b.name for b in refs.branches)})")
    return [
        Checkpoint(name=name, kind="chunk", number=n, repo_id=repo_id, revision=name,
                   chunk=order[n - 1] if order and 1 <= n <= len(order) else None)
        for n, name in numbered
    ]


def find(checkpoints: list[Checkpoint], which: str | int | Checkpoint) -> Checkpoint:
    """Pick one: a :class:`Checkpoint`, a name (``ckpt_003``, ``step_0000012``), or N for ``ckpt_N``."""
    if isinstance(which, Checkpoint):
        return which
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        n = int(which)
        numbered = {c.number: c for c in checkpoints if c.number is not None}
        if n not in numbered:
            span = f"1..{max(numbered)}" if numbered else "none"
            raise CheckpointError(f"there is no ckpt_{n:03d} (checkpoint numbers here: {span})")
        return numbered[n]
    for checkpoint in checkpoints:
        if checkpoint.name == which:
            return checkpoint
    names = [c.name for c in checkpoints]
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
    raise CheckpointError(f"no checkpoint named {which!r} (have: {shown})")


def table(checkpoints: list[Checkpoint]) -> str:
    """``k2hf checkpoints list``: name, kind, step, tokens seen, chunk trained last and where to load it from."""
    def dash(value) -> str:
        return "-" if value is None else f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)

    lines = [f"{'name':<24} {'kind':<15} {'step':>9} {'tokens seen':>14} {'chunk':>6}  load with"]
    for c in checkpoints:
        lines.append(f"{c.name:<24} {c.kind:<15} {dash(c.global_step):>9} {dash(c.tokens_seen):>14} "
                     f"{dash(c.chunk):>6}  {c.location}")
    return "\n".join(lines)


def load(source: str | os.PathLike, which: str | int | Checkpoint, **from_pretrained_kwargs: Any):
    """Load one checkpoint of ``source`` as a :class:`~k2hf.modeling.K2ForCausalLM` (``dtype=``, ``device_map=``
    and every other ``from_pretrained`` argument pass through)."""
    from .modeling import K2ForCausalLM

    checkpoint = which if isinstance(which, Checkpoint) else find(list_checkpoints(source), which)
    name_or_path, kwargs = checkpoint.from_pretrained_args()
    return K2ForCausalLM.from_pretrained(name_or_path, **kwargs, **from_pretrained_kwargs)


def load_with_tokenizer(source: str | os.PathLike, which: str | int | Checkpoint, **from_pretrained_kwargs: Any):
    """:func:`load`, and the tokenizer saved with that checkpoint (the same folder or Hub revision)."""
    from transformers import AutoTokenizer

    checkpoint = which if isinstance(which, Checkpoint) else find(list_checkpoints(source), which)
    name_or_path, kwargs = checkpoint.from_pretrained_args()
    return load(source, checkpoint, **from_pretrained_kwargs), AutoTokenizer.from_pretrained(name_or_path, **kwargs)


list = list_checkpoints  # noqa: A001  `k2hf.checkpoints.list(source)`; nothing below may call the builtin

__all__ = ["Checkpoint", "CheckpointError", "check_model_dir", "find", "list", "list_checkpoints", "load",
           "load_with_tokenizer", "looks_local", "table"]
