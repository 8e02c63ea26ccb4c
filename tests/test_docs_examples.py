"""Every runnable Python example in README.md and docs/ runs cleanly in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_TIMEOUT = 60  # seconds one example may run
SKIP_MARK = "not run"

# An opening fence: indentation, three or more backticks, then the info string.
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")


def _python_blocks(path: Path) -> list[tuple[int, str]]:
    """Return (line number of the opening fence, code) for each runnable python block in `path`."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence, info = opening.group("indent", "fence", "info")
        start = index
        body = []
        index += 1
        while index < len(lines) and lines[index].strip() != fence:
            body.append(lines[index])
            index += 1
        index += 1  # past the closing fence
        words = info.strip().split()
        if words and words[0] == "python" and SKIP_MARK not in info:
            code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in body)
            blocks.append((start + 1, textwrap.dedent(code) + "\n"))
    return blocks


def _collect() -> list[tuple[str, str]]:
    """Return (id, code) for every runnable example, the id being `path:line`."""
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    examples = []
    for source in sources:
        if not source.is_file():
            continue
        name = source.relative_to(ROOT).as_posix()
        for line, code in _python_blocks(source):
            examples.append((f"{name}:{line}", code))
    return examples


EXAMPLES = _collect()


@pytest.mark.docs
@pytest.mark.timeout(90)
@pytest.mark.parametrize("code", [code for _, code in EXAMPLES], ids=[ident for ident, _ in EXAMPLES])
def test_example_runs(code: str) -> None:
    """The example exits with status 0 when run on its own in a fresh interpreter."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"example still running after {EXAMPLE_TIMEOUT} s\n"
            f"--- code ---\n{code}\n"
            f"--- stdout ---\n{_text(exc.stdout)}\n"
            f"--- stderr ---\n{_text(exc.stderr)}"
        )
    assert result.returncode == 0, (
        f"example exited with status {result.returncode}\n"
        f"--- code ---\n{code}\n"
        f"--- stdout ---\n{result.stdout}\n"
        f"--- stderr ---\n{result.stderr}"
    )


def _text(output: str | bytes | None) -> str:
    """Return captured output as text (TimeoutExpired may hold bytes or None)."""
    if output is None:
        return ""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output
