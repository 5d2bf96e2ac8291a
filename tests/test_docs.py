"""Run every Python example in the documentation.

Each ```python block in `docs/*.md` and `README.md` runs on its own, in a fresh
namespace, so that a reader can paste any one of them into a session. A block preceded
by the line `<!-- no-test -->` is left out. A page that walks through one session,
marked by the line `<!-- one-session -->`, runs its blocks in order in one namespace.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_MARK = "<!-- no-test -->"
SESSION_MARK = "<!-- one-session -->"
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced Python block: where it sits and what it says."""

    path: Path
    number: int
    line: int
    source: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.number}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one Markdown file, numbered from 1, skips left out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    number = 0
    previous = ""
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue

        # Find the closing fence: the same character, at least as long.
        indent, fence, language = opening.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = [line[len(indent) :] for line in lines[i + 1 : end]]
        if language == "python":
            number += 1
            if previous != SKIP_MARK:
                blocks.append(Block(path, number, i + 1, "\n".join(body) + "\n"))
        previous = ""
        i = end + 1
    return blocks


def _pages() -> list[Path]:
    files = sorted((ROOT / "docs").glob("*.md"))
    readme = ROOT / "README.md"
    if readme.exists():
        files.insert(0, readme)
    return files


def _is_one_session(path: Path) -> bool:
    return SESSION_MARK in path.read_text(encoding="utf-8").splitlines()


BLOCKS = [
    block
    for path in _pages()
    if not _is_one_session(path)
    for block in python_blocks(path)
]
SESSIONS = [path for path in _pages() if _is_one_session(path)]


def _run(block: Block, namespace: dict) -> None:
    # Padding with blank lines makes tracebacks point at the line in the Markdown file.
    source = "\n" * block.line + block.source
    exec(compile(source, str(block.path), "exec"), namespace)


def test_the_docs_have_examples() -> None:
    assert BLOCKS, "No ```python blocks were found under docs/."


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_example_runs(block: Block) -> None:
    _run(block, {"__name__": f"docs_example_{block.number}"})


@pytest.mark.parametrize(
    "page", SESSIONS, ids=[path.relative_to(ROOT).as_posix() for path in SESSIONS]
)
def test_walkthrough_runs_in_order(page: Path) -> None:
    namespace: dict = {"__name__": "docs_walkthrough"}
    blocks = python_blocks(page)
    assert blocks, f"{page.name} is marked {SESSION_MARK} but has no examples."
    for block in blocks:
        _run(block, namespace)


def test_skip_mark_and_numbering(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n```python\nx = 1\n```\n\n<!-- no-test -->\n```python\nboom()\n```\n"
        "\n```text\nnot python\n```\n\n````python\ny = 2\n````\n",
        encoding="utf-8",
    )
    blocks = python_blocks(page)
    assert [(b.number, b.line, b.source) for b in blocks] == [
        (1, 3, "x = 1\n"),
        (3, 16, "y = 2\n"),
    ]


# The API reference renders the docstrings, so their examples are documentation too.
DOCSTRING_MODULES = sorted(
    path.stem for path in (ROOT / "src" / "gradaudit").glob("*.py")
)


@pytest.mark.parametrize("module_name", DOCSTRING_MODULES)
def test_docstring_examples_run(module_name: str) -> None:
    import doctest
    import importlib

    module = importlib.import_module(f"gradaudit.{module_name}")
    outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert outcome.failed == 0, f"{outcome.failed} docstring example(s) failed"
    source = (ROOT / "src" / "gradaudit" / f"{module_name}.py").read_text()
    if ">>> " in source:
        assert outcome.attempted > 0, "examples were written but none was found"
