"""Every ```python block in README.md and docs/**/*.md runs, unless it is marked a fragment.

The rule (docs/contributing.md): a ```python block runs; a block that cannot run on its own (it
names things defined elsewhere, needs a Redis Cluster, a real provider or a worker process) gets
``<!-- fragment -->`` on the line right before its fence, which renders as nothing on GitHub and
in MkDocs. Blocks of other languages (```sh, ```text, bare ```) are never run.

A page runs like a reader reads it: its runnable blocks, in order, in one namespace, in a fresh
interpreter of their own (one subprocess per page, all pages at once, each with a timeout). A
failure points at the file and line of the block. Blocks that use Redis read
``MPSTATE_REDIS_URL`` and ``MPSTATE_PREFIX``, the variables the ``mpstate`` CLI reads too: here
the suite's private server and a prefix of the page's own, deleted afterwards.

A tiny parser rather than pytest-examples: pytest-examples runs every block on its own, and pages
here build on their earlier blocks; the marker and the per-page namespace take 30 lines.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from key_cleanup import delete_prefix

ROOT = Path(__file__).resolve().parent.parent
FRAGMENT = "<!-- fragment -->"
PAGE_TIMEOUT_S = 60

_FENCE = re.compile(r"^(`{3,})([\w+-]*)")


@dataclass(frozen=True)
class Block:
    path: Path
    #: 1-based line of the block's first line of code.
    line: int
    language: str
    code: str
    fragment: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks_of(path: Path) -> Iterator[Block]:
    """The fenced blocks of one Markdown file (fences at the start of a line only)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    row = 0
    while row < len(lines):
        opening = _FENCE.match(lines[row])
        if opening is None:
            if re.match(r"^\s+```python", lines[row]):
                raise AssertionError(
                    f"{path.relative_to(ROOT)}:{row + 1}: an indented ```python fence is not "
                    "collected; start it at the beginning of the line"
                )
            row += 1
            continue
        fence, language = opening.groups()
        start = row + 1
        row = start
        while row < len(lines) and lines[row].rstrip() != fence:
            row += 1
        fragment = start >= 2 and lines[start - 2].strip() == FRAGMENT
        yield Block(path, start + 1, language, "\n".join(lines[start:row]) + "\n", fragment)
        row += 1


def python_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks_of(page) if block.language == "python"]


def program(blocks: list[Block]) -> str:
    """One script running ``blocks`` in order in one namespace, each compiled under its own
    file:line so a traceback names the Markdown line."""
    parts = ["namespace = {'__name__': '__main__'}"]
    for block in blocks:
        source = "\n" * (block.line - 1) + block.code
        parts.append(
            f"exec(compile({source!r}, {block.where.rsplit(':', 1)[0]!r}, 'exec'), namespace)"
        )
    return "\n".join(parts) + "\n"


RUNNABLE_PAGES = sorted({block.path for block in python_blocks() if not block.fragment}, key=str)


@pytest.fixture(scope="module")
def page_runs(redis_url: str) -> Iterator[dict[Path, tuple[subprocess.Popen[str], str]]]:
    """Every page's program, started at once (each in its own interpreter and prefix)."""
    client = redis.Redis.from_url(redis_url)
    runs = {}
    for page in RUNNABLE_PAGES:
        prefix = f"docs{uuid.uuid4().hex[:12]}"
        blocks = [block for block in blocks_of(page) if block.language == "python"]
        env = {
            **os.environ,
            "MPSTATE_REDIS_URL": redis_url,
            "MPSTATE_PREFIX": prefix,
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
        }
        process = subprocess.Popen(
            [sys.executable, "-c", program([b for b in blocks if not b.fragment])],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        runs[page] = (process, prefix)
    try:
        yield runs
    finally:
        for process, prefix in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            delete_prefix(client, prefix)
        client.close()


@pytest.mark.parametrize(
    "page", RUNNABLE_PAGES, ids=[str(page.relative_to(ROOT)) for page in RUNNABLE_PAGES]
)
def test_the_python_blocks_of_a_page_run_as_written(
    page: Path, page_runs: dict[Path, tuple[subprocess.Popen[str], str]]
) -> None:
    process, _ = page_runs[page]
    try:
        output, _ = process.communicate(timeout=PAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{page.relative_to(ROOT)} ran over {PAGE_TIMEOUT_S} s:\n{output}")
    assert process.returncode == 0, output


def test_fragments_are_few_and_marked_right_before_their_fence() -> None:
    blocks = python_blocks()
    runnable = [block for block in blocks if not block.fragment]
    assert runnable, "no runnable ```python block found"
    for page in pages():
        lines = page.read_text(encoding="utf-8").splitlines()
        for row, line in enumerate(lines):
            if line.strip() == FRAGMENT:
                following = lines[row + 1] if row + 1 < len(lines) else ""
                assert following.startswith("```python"), (
                    f"{page.relative_to(ROOT)}:{row + 1}: {FRAGMENT} must be right before a "
                    "```python fence"
                )


def test_the_parser_finds_fences_fragments_and_languages(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\nx = 1\n```\n\n<!-- fragment -->\n```python\ny(\n```\n"
        "```sh\nmake test\n```\n````python\n```\nnested = 1\n````\n",
        encoding="utf-8",
    )
    found = [(b.line, b.language, b.fragment, b.code) for b in blocks_of(page)]
    assert found == [
        (3, "python", False, "x = 1\n"),
        (8, "python", True, "y(\n"),
        (11, "sh", False, "make test\n"),
        (14, "python", False, "```\nnested = 1\n"),
    ]
