"""Build k2hf's wheel from the checkout and install it into a fresh venv, as a user of `pip install k2hf` gets it.

The venv has only the wheel's k2hf; its third-party dependencies come from the test venv through a ``.pth`` line
(re-installing torch and the rest would take minutes and, here, a CUDA torch). That line adds the test venv's
``site-packages`` as a plain path, so the ``.pth`` hooks in it (the editable install of the checkout) never run:
``import k2hf`` there finds the installed wheel, not the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import REPO_ROOT

IGNORED = shutil.ignore_patterns(".git", ".venv*", "outputs", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", "runs")


def _source_files() -> list[str]:
    """The checkout's files as git has them (tracked and untracked-not-ignored), or None without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [line for line in out.splitlines() if (REPO_ROOT / line).is_file()]


def build_wheel(work: Path) -> Path:
    """The wheel of the checkout as it is now, built from a clean copy (no build/ left in the checkout)."""
    src = work / "src"
    files = _source_files()
    if files is None:
        shutil.copytree(REPO_ROOT, src, ignore=IGNORED)
    else:
        for rel in files:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, src / rel)
    try:  # the test venv's setuptools when it is new enough; else pip's isolated build (package index needed)
        import setuptools

        isolation = [] if int(setuptools.__version__.split(".")[0]) >= 68 else None
    except ImportError:
        isolation = None
    flags = ["--no-build-isolation"] if isolation is not None else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *flags, "-w", str(work / "dist"),
                    str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (work / "dist").glob("k2hf-*.whl")
    return wheel


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def install_in_fresh_venv(wheel: Path, venv: Path) -> Path:
    """A venv with the wheel installed (no editable k2hf in sight); returns its bin dir."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, text=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(purelib) / "k2hf_test_dependencies.pth").write_text("\n".join(paths) + "\n")
    return venv / "bin"
