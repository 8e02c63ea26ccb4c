"""An operand the other side cannot load fails that call alone (SPEC §6): the child lives on."""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import spawnproxy
from spawnproxy import ScriptDefinition
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import os
state = [1]
def f(*args, **kwargs):
    return len(args) + len(kwargs)
def add(x):
    state.append(x)
    return list(state)
def pid():
    return os.getpid()
"""

THING = """
__version__ = "2.0"
class Thing:
    def __init__(self, n):
        self.n = n
"""


def _module(directory: Path, name: str, source: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def parent_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Any]]:
    """A module only the parent can import: call the fixture's value once the child runs.

    Added to the parent's sys.path after the child started, so that even a child of the
    parent's own interpreter (which takes the parent's sys.path at start-up) lacks it.
    """

    def load() -> Any:
        _module(tmp_path / "parent", "sp_parent_only", THING)
        monkeypatch.syspath_prepend(str(tmp_path / "parent"))
        return importlib.import_module("sp_parent_only")

    yield load
    sys.modules.pop("sp_parent_only", None)


def _frames_mapped(pid: int) -> int:
    """How many mappings of spawnproxy's large-frame memfds the process holds."""
    with open(f"/proc/{pid}/maps") as f:
        return sum("spawnproxy-frame" in line for line in f)


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(lambda m, thing: m.f(thing), id="positional"),
        pytest.param(lambda m, thing: m.f(1, x=thing), id="keyword"),
        pytest.param(lambda m, thing: m.f([1, {"k": (thing,)}]), id="nested"),
    ],
)
def test_unloadable_argument_fails_that_call_alone(
    parent_only: Callable[[], Any], send: Callable[[Any, Any], Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """A parent-only object as an argument raises SerializationError naming it; the child and its state live on."""
    m = spawnproxy.run_script(SCRIPT)
    try:
        pid = m.pid()
        assert m.add(2) == [1, 2]
        thing = parent_only().Thing(3)
        capfd.readouterr()
        with pytest.raises(spawnproxy.SerializationError, match=r"sp_parent_only.*cannot be loaded in the child"):
            send(m, thing)
        with pytest.raises(spawnproxy.SerializationError, match="No module named 'sp_parent_only'"):
            send(m, thing)
        assert m.add(3) == [1, 2, 3]
        assert m.pid() == pid
        assert m.f(1, 2, x=3) == 3
        # The child's own traceback is not printed on the parent's stderr (it did not die).
        assert "Traceback" not in capfd.readouterr().err
    finally:
        m.terminate_daemon()


def test_other_callers_aio_and_nested_calls_go_on(parent_only: Callable[[], Any]) -> None:
    """Threads, aio and a call nested in a callback: each unloadable request fails alone, the others get their answers."""
    m = spawnproxy.run_script(SCRIPT + "def call_back(cb):\n    return cb()\n")
    try:
        thing = parent_only().Thing(3)
        errors: list[BaseException] = []

        def good(i: int) -> None:
            try:
                for j in range(50):
                    assert m.f(*range(i + j % 3)) == i + j % 3
            except BaseException as exc:  # reported below
                errors.append(exc)

        def bad() -> None:
            for _ in range(50):
                try:
                    m.f(thing)
                except spawnproxy.SerializationError:
                    continue
                errors.append(AssertionError("no SerializationError"))

        threads = [threading.Thread(target=good, args=(i,)) for i in range(3)] + [threading.Thread(target=bad)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors

        async def main() -> Any:
            with pytest.raises(spawnproxy.SerializationError, match="sp_parent_only"):
                await spawnproxy.aio(m).f(thing)
            return await spawnproxy.aio(m).f(1)

        assert asyncio.run(main()) == 1

        def nested() -> str:
            try:
                m.f(x=thing)
            except spawnproxy.SerializationError as exc:
                return "caught: %s" % exc
            return "no error"

        assert m.call_back(spawnproxy.by_ref(nested)).startswith("caught: keyword argument 'x'")
        assert m.add(2) == [1, 2]
    finally:
        m.terminate_daemon()


def test_message_names_the_argument(parent_only: Callable[[], Any]) -> None:
    """The error says which argument could not be loaded, and that the call did not run."""
    m = spawnproxy.run_script(SCRIPT)
    try:
        thing = parent_only().Thing(3)
        with pytest.raises(spawnproxy.SerializationError, match=r"keyword argument 'x'.*did not run"):
            m.f(1, x=thing)
        with pytest.raises(spawnproxy.SerializationError, match=r"argument 1\b"):
            m.f(1, [thing])
    finally:
        m.terminate_daemon()


def test_unloadable_argument_in_another_interpreter(child_python: str, parent_only: Callable[[], Any]) -> None:
    """The same on a child of another Python version, which never sees the parent's sys.path."""
    m = spawnproxy.run_script(SCRIPT, python_exe=child_python)
    try:
        thing = parent_only().Thing(3)
        with pytest.raises(spawnproxy.SerializationError, match="No module named 'sp_parent_only'"):
            m.f(thing)
        assert m.add(2) == [1, 2]
    finally:
        m.terminate_daemon()


def test_other_version_of_a_module_gets_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module both sides have, in different versions: the error names the child's version."""
    _module(tmp_path / "child", "sp_twin", '__version__ = "1.0"\n')
    _module(tmp_path / "parent", "sp_twin", THING)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "child"))
    m = spawnproxy.run_script(SCRIPT, env=env)
    try:
        monkeypatch.syspath_prepend(str(tmp_path / "parent"))
        monkeypatch.delitem(sys.modules, "sp_twin", raising=False)
        twin = importlib.import_module("sp_twin")
        with pytest.raises(
            spawnproxy.SerializationError, match=r"'Thing'.*sp_twin is 1\.0 in the child: the parent's version"
        ):
            m.f(twin.Thing(1))
        assert m.add(2) == [1, 2]
    finally:
        sys.modules.pop("sp_twin", None)
        m.terminate_daemon()


def test_failed_frame_releases_its_out_of_band_buffers(parent_only: Callable[[], Any]) -> None:
    """A large request that cannot be loaded leaves no mapping or descriptor behind in the child."""
    m = spawnproxy.run_script(SCRIPT)
    try:
        blob = os.urandom(4 << 20)
        assert m.f(blob) == 1  # one memfd kept for the next large frame
        pid = m.pid()
        fds, maps = psutil.Process(pid).num_fds(), _frames_mapped(pid)
        thing = parent_only().Thing(3)
        for _ in range(5):
            with pytest.raises(spawnproxy.SerializationError):
                m.f(blob, thing, bytearray(blob))
        assert m.f(blob) == 1
        gc.collect()
        assert psutil.Process(pid).num_fds() <= fds
        assert _frames_mapped(pid) <= maps
    finally:
        m.terminate_daemon()


def test_parent_objects_in_a_failed_frame_are_released(parent_only: Callable[[], Any]) -> None:
    """by_ref objects sent with an unloadable argument (before or after it) are released by the child."""
    m = spawnproxy.run_script(SCRIPT)
    try:
        thing = parent_only().Thing(3)
        session = spawnproxy.daemon_of(m)._session
        root = m.f  # a proxy sent back travels as a persistent id too
        for _ in range(3):
            with pytest.raises(spawnproxy.SerializationError, match="argument 2 "):
                m.f(spawnproxy.by_ref(len), root, thing, spawnproxy.by_ref(sorted), x=spawnproxy.by_ref(max))
        assert wait_until(lambda: m.f() == 0 and len(session.exports) == 0, timeout=5)
    finally:
        m.terminate_daemon()


def test_served_daemon_fails_the_call_not_the_client(parent_only: Callable[[], Any]) -> None:
    """A served daemon answers an unloadable argument with SerializationError; that client and others go on."""
    server = spawnproxy.serve(ScriptDefinition(SCRIPT))
    try:
        first = spawnproxy.connect(server.address, authkey=server.authkey)
        second = spawnproxy.connect(server.address, authkey=server.authkey)
        assert first.add(2) == [1, 2]
        thing = parent_only().Thing(3)
        with pytest.raises(spawnproxy.SerializationError, match="No module named 'sp_parent_only'"):
            first.f(x=thing)
        assert first.add(3) == [1, 2, 3]
        assert second.add(4) == [1, 2, 3, 4]
    finally:
        server.terminate()


CALLBACK_SCRIPT = """
import sp_twin
def run(cb):
    try:
        cb(sp_twin.Thing(1))
    except AttributeError as exc:
        return "caught: %s | %s" % (exc, exc.__cause__)
    return "no error"
def twice(cb):
    return cb(2) * 2
"""


def test_callback_argument_the_parent_cannot_load_fails_the_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A callback's argument the parent cannot load fails that callback in the child with the load error's own type."""
    _module(tmp_path / "child", "sp_twin", THING)
    _module(tmp_path / "parent", "sp_twin", '__version__ = "1.0"\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "child"))
    m = spawnproxy.run_script(CALLBACK_SCRIPT, env=env)
    try:
        monkeypatch.syspath_prepend(str(tmp_path / "parent"))
        monkeypatch.delitem(sys.modules, "sp_twin", raising=False)
        importlib.import_module("sp_twin")
        seen: list[Any] = []
        answer = m.run(spawnproxy.by_ref(seen.append))
        assert answer.startswith("caught: ")
        assert "'Thing'" in answer and "cannot be loaded in the parent; the request did not run" in answer
        assert seen == []
        assert m.twice(spawnproxy.by_ref(lambda x: x + 1)) == 6
    finally:
        sys.modules.pop("sp_twin", None)
        m.terminate_daemon()


def test_child_objects_in_a_callback_frame_the_parent_cannot_load_are_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's objects sent by reference with a callback argument the parent cannot load are released."""
    _module(tmp_path / "child", "sp_twin", THING)
    _module(tmp_path / "parent", "sp_twin", '__version__ = "1.0"\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "child"))
    script = CALLBACK_SCRIPT + (
        "import threading\n"
        "def locks(cb):\n"
        "    try:\n"
        "        cb(threading.Lock(), sp_twin.Thing(1), threading.Lock(), x=threading.Lock())\n"
        "    except AttributeError:\n"
        "        return 'caught'\n"
    )
    m = spawnproxy.run_script(script, env=env)
    try:
        monkeypatch.syspath_prepend(str(tmp_path / "parent"))
        monkeypatch.delitem(sys.modules, "sp_twin", raising=False)
        importlib.import_module("sp_twin")
        session = spawnproxy.daemon_of(m)._session
        baseline = session.request("stats", (), "stats")[3]["objects"]
        for _ in range(3):
            assert m.locks(spawnproxy.by_ref(print)) == "caught"
        gc.collect()
        assert wait_until(lambda: session.request("stats", (), "stats")[3]["objects"] == baseline, timeout=5)
    finally:
        sys.modules.pop("sp_twin", None)
        m.terminate_daemon()


def test_callback_result_the_child_cannot_load_fails_the_callback(parent_only: Callable[[], Any]) -> None:
    """A callback's result the child cannot load fails that callback in the child, not the child."""
    m = spawnproxy.run_script(
        "def run(cb):\n    try:\n        cb()\n    except Exception as exc:\n        return 'caught: %s' % exc\n"
        "    return 'no error'\n" + SCRIPT
    )
    try:
        module = parent_only()
        answer = m.run(spawnproxy.by_ref(lambda: module.Thing(1)))
        assert answer.startswith("caught: ") and "sp_parent_only" in answer
        assert m.add(2) == [1, 2]
    finally:
        m.terminate_daemon()


@pytest.mark.parametrize("child_python", ["3.8"], indirect=True)
def test_numpy_2_array_to_a_numpy_1_child_says_so(child_python: str, tmp_path: Path) -> None:
    """A NumPy 2 array sent to a child with NumPy 1 (here a stand-in package): the error explains numpy._core."""
    numpy = pytest.importorskip("numpy")
    if not numpy.__version__.startswith("2."):
        pytest.skip("the parent's NumPy is not NumPy 2")
    # A child with NumPy 1's layout: numpy.core, and no numpy._core.
    _module(tmp_path / "numpy1" / "numpy", "__init__", '__version__ = "1.24.4"\n')
    _module(tmp_path / "numpy1" / "numpy" / "core", "__init__", "")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "numpy1"))
    m = spawnproxy.run_script(SCRIPT, python_exe=child_python, env=env)
    try:
        with pytest.raises(
            spawnproxy.SerializationError,
            match=r"(?s)No module named 'numpy\._core'.*the parent has NumPy 2, the child NumPy 1\.24\.4",
        ):
            m.f(numpy.arange(3))
        assert m.f(numpy.arange(3).tolist()) == 1
    finally:
        m.terminate_daemon()
