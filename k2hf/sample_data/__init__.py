"""Small corpora bundled with k2hf (hand-written, in the shapes of real pretraining sources) for demos and tests."""

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

#: subset name -> (file under sample_data/pretrain, text field)
PRETRAIN_SAMPLES: dict[str, tuple[str, str]] = {
    "web": ("web.jsonl", "text"),
    "wiki": ("wiki.jsonl", "text"),
    "code": ("code.jsonl", "content"),
}


def sample_path(*parts: str) -> Path:
    """Filesystem path of a bundled sample file."""
    return Path(str(resources.files(__name__).joinpath(*parts)))


def sample_texts() -> Iterator[str]:
    """Every document of the bundled pretraining samples."""
    for file_name, field in PRETRAIN_SAMPLES.values():
        with open(sample_path("pretrain", file_name), encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)[field]
