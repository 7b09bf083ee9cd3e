"""The examples of docs/library.md run, in order, in one namespace, and print what the page says.

Each ```python block may be followed by an ```output block: the block's printed text must equal
it, as in a doctest.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "library.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def examples(text: str) -> list[tuple[int, str, str | None]]:
    """(line, code, expected output or None) for each python block of a Markdown page."""
    blocks = [
        (m.group(1), m.group(2), text[: m.start()].count("\n") + 1) for m in FENCE.finditer(text)
    ]
    found = []
    for i, (lang, body, line) in enumerate(blocks):
        if lang != "python":
            continue
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        expected = following[1] if following and following[0] == "output" else None
        found.append((line, body, expected))
    return found


def test_the_page_has_the_examples() -> None:
    found = examples(PAGE.read_text())
    assert len(found) == 4
    assert all(expected is not None for _, _, expected in found)


def test_examples_run_and_print_what_the_page_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_library"}
    for line, code, expected in examples(PAGE.read_text()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{PAGE}:{line}", "exec"), namespace)
        if expected is not None:
            assert out.getvalue() == expected, (
                f"docs/library.md line {line}: printed output differs"
            )


def test_a_wrong_output_block_is_caught() -> None:
    page = "```python\nprint(1 + 1)\n```\n\n```output\n3\n```\n"
    ((_, code, expected),) = examples(page)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    assert expected == "3\n" and out.getvalue() != expected
