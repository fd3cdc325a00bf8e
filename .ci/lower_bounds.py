"""Print pip constraints pinning the packages k2hf promises ranges for at their lower bounds (from pyproject).

Used by .ci/oldest: a range in pyproject is a tested range. torch stays at the CPU build the README installs.
"""

import re
import sys
from pathlib import Path

import tomllib

PINNED = ("transformers", "trl", "accelerate", "peft", "datasets", "lm-eval", "infini-gram")


def lower_bounds(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    bounds = {}
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", requirement)
        if match and match.group(1) in PINNED:
            bounds[match.group(1)] = match.group(2)
    missing = sorted(set(PINNED) - bounds.keys())
    if missing:
        sys.exit(f"pyproject.toml gives no lower bound for {missing}")
    return bounds


if __name__ == "__main__":
    for name, version in lower_bounds(Path(__file__).resolve().parents[1] / "pyproject.toml").items():
        print(f"{name}=={version}")
