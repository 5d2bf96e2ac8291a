"""Set up a local environment and run gradaudit's demo or its tests.

This is the whole quick start: on a fresh machine with Python 3.11 or newer,

    python3 dev.py demo     # installs into .venv if needed, then runs `gradaudit demo`
    python3 dev.py test     # installs into .venv if needed, then lints, builds the
                            # documentation site and tests

The environment lives in `.venv/` next to this file. It is reinstalled only when
`pyproject.toml` changes, so repeated runs start at once.
"""

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if sys.platform == "win32" else "bin")
STAMP = VENV / "gradaudit-install.stamp"


def _run(*command: str | Path) -> None:
    completed = subprocess.run([str(part) for part in command], cwd=ROOT)
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def ensure_environment() -> None:
    """Create `.venv` and install gradaudit with its test extras, once."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not BIN.exists():
        print("Creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    print("Installing gradaudit and its test tools into .venv ...", flush=True)
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[test]")
    STAMP.write_text(wanted)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in {"demo", "test"}:
        sys.exit("usage: python3 dev.py demo | test [pytest arguments]")
    ensure_environment()
    if argv[0] == "demo":
        _run(BIN / "gradaudit", "demo", *argv[1:])
        return
    _run(BIN / "ruff", "format", "--check", "src", "tests", "bench", "dev.py")
    _run(BIN / "ruff", "check", "src", "tests", "bench", "dev.py")
    _run(BIN / "mypy")
    # The documentation site: a broken link or anchor, or a docstring griffe cannot
    # parse, fails the build (mkdocs.yml sets `strict`). `site/` is git-ignored.
    _run(BIN / "mkdocs", "build", "--strict", "--site-dir", ROOT / "site")
    _run(BIN / "python", "-m", "pytest", *argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
