"""is_proxy and obtain (SPEC §6): values and proxies told apart, a local copy on demand."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spawnproxy

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import threading
numbers = [1, 2, {"k": [3]}]
lock = threading.Lock()
class Local:
    def __init__(self, n):
        self.n = n
    def __repr__(self):
        return "Local(%d)" % self.n
    def double(self):
        return 2 * self.n
def make(n):
    return Local(n)
def nested():
    return {"lock": lock}
def same(x):
    return x
"""


@pytest.fixture
def mod() -> Iterator[Any]:
    proxy = spawnproxy.run_script(SCRIPT)
    yield proxy
    proxy.terminate_daemon()


def test_is_proxy_tells_proxies_from_values(mod: Any) -> None:
    """Root, attribute reads, methods and results that stay in the child are proxies; values are not."""
    assert spawnproxy.is_proxy(mod)
    assert spawnproxy.is_proxy(mod.numbers)
    assert spawnproxy.is_proxy(mod.make)
    assert spawnproxy.is_proxy(mod.lock)
    local = mod.make(3)
    assert spawnproxy.is_proxy(local) and repr(local) == "Local(3)"
    assert spawnproxy.is_proxy(local.double) and local.double() == 6
    assert spawnproxy.is_proxy(mod.nested()["lock"])
    for value in (mod.same(5), mod.numbers.copy(), mod.nested()["lock"].locked(), 5, None, [mod]):
        assert not spawnproxy.is_proxy(value)


def test_obtain_makes_an_independent_copy(mod: Any) -> None:
    """obtain() loads a copy made in the child: changing it leaves the child's object alone."""
    copy = spawnproxy.obtain(mod.numbers)
    assert copy == [1, 2, {"k": [3]}] and type(copy) is list and not spawnproxy.is_proxy(copy)
    copy[2]["k"].append(4)
    copy.append(5)
    assert mod.numbers == [1, 2, {"k": [3]}]
    assert spawnproxy.obtain(mod.numbers[2]) == {"k": [3]}


def test_obtain_passes_values_through(mod: Any) -> None:
    """A value is returned as it is, the very same object."""
    value = [1, object()]
    assert spawnproxy.obtain(value) is value
    assert spawnproxy.obtain(None) is None


def test_obtain_says_why_the_child_cannot_pickle(mod: Any) -> None:
    """An object the child cannot pickle: SerializationError with the child's error; the proxy stays usable."""
    with pytest.raises(spawnproxy.SerializationError, match=r"child cannot pickle it: TypeError: .*lock"):
        spawnproxy.obtain(mod.lock)
    assert mod.lock.locked() is False
    assert mod.same(1) == 1


def test_obtain_says_why_the_parent_cannot_load(mod: Any) -> None:
    """An object of a class only the child has: SerializationError with the parent's load error."""
    local = mod.make(4)
    with pytest.raises(spawnproxy.SerializationError, match=r"cannot be loaded in the parent: .*__spawnproxy_script__"):
        spawnproxy.obtain(local)
    assert local.n == 4 and repr(local) == "Local(4)"


def test_a_result_that_cannot_be_loaded_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A result whose pickle names a module the parent lacks becomes a proxy, with a DEBUG record saying why."""
    (tmp_path / "sp_child_only.py").write_text(textwrap.dedent("class Thing:\n    pass\n"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    m = spawnproxy.run_script("import sp_child_only\ndef make():\n    return [sp_child_only.Thing()]\n", env=env)
    try:
        with caplog.at_level(logging.DEBUG, logger="spawnproxy"):
            result = m.make()
        assert spawnproxy.is_proxy(result)
        records = [r for r in caplog.records if "stays in the child as a proxy" in r.getMessage()]
        assert len(records) == 1 and records[0].levelno == logging.DEBUG
        assert "sp_child_only" in records[0].getMessage() and "builtins.list" in records[0].getMessage()
        with pytest.raises(spawnproxy.SerializationError, match="No module named 'sp_child_only'"):
            spawnproxy.obtain(result)
        # Once the parent can import the module, the copy loads.
        monkeypatch.syspath_prepend(str(tmp_path))
        copy = spawnproxy.obtain(result)
        assert type(copy) is list and type(copy[0]).__name__ == "Thing"
        assert len(result) == 1
    finally:
        sys.modules.pop("sp_child_only", None)
        importlib.invalidate_caches()
        m.terminate_daemon()


def test_obtain_and_is_proxy_over_a_served_daemon() -> None:
    """A client of a served daemon tells proxies from values and copies what a proxy stands for."""
    server = spawnproxy.serve(spawnproxy.ScriptDefinition(SCRIPT))
    try:
        root = spawnproxy.connect(server.address, authkey=server.authkey)
        assert spawnproxy.is_proxy(root) and spawnproxy.is_proxy(root.numbers)
        copy = spawnproxy.obtain(root.numbers)
        copy.append(4)
        assert copy == [1, 2, {"k": [3]}, 4] and root.numbers == [1, 2, {"k": [3]}]
        with pytest.raises(spawnproxy.SerializationError, match="child cannot pickle it"):
            spawnproxy.obtain(root.lock)
    finally:
        server.terminate()
