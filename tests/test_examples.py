"""Every script in examples/ runs to completion."""

from __future__ import annotations

import pathlib

import pytest

from tests.conftest import run_python

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: pathlib.Path) -> None:
    """The example exits 0 and prints what it shows."""
    result = run_python(f"import runpy; runpy.run_path({str(path)!r}, run_name='__main__')", timeout=100)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_class_from_parents_main_travels_by_value() -> None:
    """An instance of a class defined in the parent's __main__ reaches the child (through dill)."""
    result = run_python(
        "import spawnproxy\n"
        "class Box:\n"
        "    def __init__(self):\n"
        "        self.items = []\n"
        "    def put(self, x):\n"
        "        self.items.append(x)\n"
        "        return len(self.items)\n"
        "box = spawnproxy.run_object(Box())\n"
        "assert box.put('a') == 1 and box.put('b') == 2\n"
        "print('ok')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
