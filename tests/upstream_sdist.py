"""Source distributions of upstream projects for tests that run their code (never copied into this project).

``sdist(package, version)`` fetches one with pip (the ordinary client, from the package index) into
``$K2HF_UPSTREAM_CACHE`` (default ``~/.cache/k2hf/upstream``) once, and returns its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


class UpstreamUnavailable(RuntimeError):
    """The sdist could not be fetched, or it does not ship what a test needs."""


def cache_root() -> Path:
    return Path(os.environ.get("K2HF_UPSTREAM_CACHE", Path.home() / ".cache" / "k2hf" / "upstream"))


def sdist(package: str, version: str) -> Path:
    """The ``.tar.gz`` sdist of ``package==version`` (fetched on first use)."""
    folder = cache_root() / f"{package}-{version}" / "sdist"
    stem = package.replace("-", "_")
    found = [*folder.glob(f"{stem}-*.tar.gz"), *folder.glob(f"{package}-*.tar.gz")]
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"{package}=={version}", "-d", str(folder)], capture_output=True, text=True)
        if fetched.returncode != 0:
            raise UpstreamUnavailable(f"pip could not fetch the {package} {version} sdist: {fetched.stderr[-300:]}")
        found = [*folder.glob(f"{stem}-*.tar.gz"), *folder.glob(f"{package}-*.tar.gz")]
    return found[0]
