"""A dropped proxy is released within 1 s, idle or not, over every transport (issue 14, item 4)."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import spawnproxy
from tests.conftest import wait_until
from tests.test_serve import _serve

pytestmark = pytest.mark.timeout(60)

# The bound the documentation promises (docs/reliability.md).
BOUND = 1.0

SCRIPT = """
import threading, time

class Tracked:
    # Travels by reference (a lock cannot be pickled); writes a file once the child lets go of it.
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
    def __del__(self):
        with open(self.path, "w") as f:
            f.write("released")

def make(path):
    return Tracked(path)

kept = []

def keep(f):
    kept.append(f)

def forget_soon(delay):
    # A thread of the child's drops the parent's objects, while no call runs.
    def run():
        time.sleep(delay)
        del kept[:]
    threading.Thread(target=run, daemon=True).start()

def apply(f):
    return f()
"""


def released_within(path: Path, drop: Any) -> float:
    """Drop a proxy (`drop()`), make no call; how long until the child wrote `path` (inf: not within 3 s)."""
    started = time.monotonic()
    drop()
    gc.collect()
    while time.monotonic() - started < 3.0:
        if path.exists():
            return time.monotonic() - started
        time.sleep(0.01)
    return float("inf")


def test_a_local_child_releases_a_dropped_proxy_while_the_parent_is_idle(tmp_path: Path) -> None:
    """No call follows the drop: the child still lets go of the object within 1 s."""
    mod = spawnproxy.run_script(SCRIPT)
    try:
        proxies = [mod.make(str(tmp_path / "released"))]
        assert released_within(tmp_path / "released", proxies.clear) < BOUND
    finally:
        mod.terminate_daemon()


def test_a_proxy_made_on_another_threads_lane_is_released_while_idle(tmp_path: Path) -> None:
    """A proxy whose answer came on a thread's lane, dropped after that thread ended: released within 1 s."""
    mod = spawnproxy.run_script(SCRIPT)
    try:
        proxies: list[Any] = []
        worker = threading.Thread(target=lambda: proxies.append(mod.make(str(tmp_path / "released"))))
        worker.start()
        worker.join()
        assert released_within(tmp_path / "released", proxies.clear) < BOUND
    finally:
        mod.terminate_daemon()


@pytest.mark.parametrize("transport", ["tcp", "unix", "tls"])
def test_a_client_of_a_served_daemon_releases_a_dropped_proxy_while_idle(
    transport: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A client keeps its connection (another proxy) but drops one and stays idle: released within 1 s."""
    tls = request.getfixturevalue("tls_files") if transport == "tls" else None
    server = _serve(transport, tmp_path, tls, SCRIPT)
    try:
        root = server.connect()
        proxies = [root.make(str(tmp_path / "released"))]
        assert released_within(tmp_path / "released", proxies.clear) < BOUND
        assert root.apply(spawnproxy.by_ref(lambda: "still usable")) == "still usable"
    finally:
        server.terminate()


def exports(proxy: Any) -> int:
    """How many of the parent's objects the child holds references to (asks the child nothing)."""
    return len(spawnproxy.daemon_of(proxy)._session.exports)


@pytest.mark.parametrize("transport", ["local", "tcp", "unix", "tls"])
def test_a_parent_object_the_child_drops_while_the_parent_is_idle_is_released(
    transport: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A thread of the child's drops a by_ref object between calls: the parent lets go of it within 1 s."""
    if transport == "local":
        server, root = None, spawnproxy.run_script(SCRIPT)
    else:
        tls = request.getfixturevalue("tls_files") if transport == "tls" else None
        server = _serve(transport, tmp_path, tls, SCRIPT)
        root = server.connect()
    try:
        root.keep(spawnproxy.by_ref(lambda: None))
        assert exports(root) == 1
        root.forget_soon(0.1)
        started = time.monotonic()
        assert wait_until(lambda: exports(root) == 0, timeout=3.0)
        assert time.monotonic() - started < 0.1 + BOUND
    finally:
        if server is None:
            root.terminate_daemon()
        else:
            server.terminate()


def test_a_parent_object_named_in_an_answer_is_released_while_the_parent_is_idle() -> None:
    """The child sends back the parent's object in an answer, then drops it: released within 1 s, no call."""
    mod = spawnproxy.run_script(SCRIPT)
    try:
        lock = threading.Lock()
        assert mod.apply(spawnproxy.by_ref(lambda: lock)) is lock
        started = time.monotonic()
        assert wait_until(lambda: exports(mod) == 0, timeout=3.0)
        assert time.monotonic() - started < BOUND
    finally:
        mod.terminate_daemon()
