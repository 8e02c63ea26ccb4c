"""Remote exceptions (SPEC §3.5): own type, remote frames, RemoteError, child still usable."""

from __future__ import annotations

import traceback

import pytest

import spawnproxy
from tests.targets.sample import Service

pytestmark = pytest.mark.timeout(60)


def test_remote_exception_keeps_type_and_message() -> None:
    """A ValueError raised in the child is a ValueError here, with its message."""
    service = spawnproxy.run_object(Service())
    try:
        with pytest.raises(ValueError, match="nope"):
            service.fail("nope")
        assert service.add(1, 2) == 3  # still usable
    finally:
        service.terminate_daemon()


def test_remote_traceback_shows_remote_frames() -> None:
    """The printed traceback contains the child's frames, with the script's lines."""
    mod = spawnproxy.run_script("def inner():\n    raise KeyError('deep')\n\ndef outer():\n    inner()\n")
    try:
        with pytest.raises(KeyError) as info:
            mod.outer()
        text = "".join(traceback.format_exception(info.value))
        assert "in outer" in text and "in inner" in text
        assert "raise KeyError('deep')" in text
        assert "<spawnproxy-child" not in text  # spawnproxy's own frames are left out
    finally:
        mod.terminate_daemon()


def test_unrebuildable_type_becomes_remote_error() -> None:
    """An exception class defined only in the child becomes RemoteError with its name."""
    mod = spawnproxy.run_script("class Oops(Exception):\n    pass\ndef fail():\n    raise Oops('bad')")
    try:
        with pytest.raises(spawnproxy.RemoteError, match="Oops: bad") as info:
            mod.fail()
        assert info.value.remote_type == "__spawnproxy_script__.Oops"
        assert "raise Oops('bad')" in info.value.remote_traceback
        assert mod.fail.__name__ == "fail"
    finally:
        mod.terminate_daemon()


def test_exception_chain_is_kept() -> None:
    """raise ... from ... keeps its cause."""
    mod = spawnproxy.run_script(
        "def f():\n    try:\n        1 / 0\n    except ZeroDivisionError as e:\n        raise ValueError('wrapped') from e"
    )
    try:
        with pytest.raises(ValueError) as info:
            mod.f()
        assert isinstance(info.value.__cause__, ZeroDivisionError)
    finally:
        mod.terminate_daemon()


def test_errors_are_not_attribute_errors() -> None:
    """No spawnproxy error is an AttributeError, so hasattr cannot hide a dead child."""
    for name in (
        "SpawnProxyError",
        "DaemonStartError",
        "DaemonDiedError",
        "DaemonTerminatedError",
        "RemoteError",
        "CallTimeoutError",
        "SerializationError",
    ):
        cls = getattr(spawnproxy, name)
        assert issubclass(cls, spawnproxy.SpawnProxyError)
        assert not issubclass(cls, AttributeError)
        assert cls.__module__ == "spawnproxy"
    assert issubclass(spawnproxy.CallTimeoutError, TimeoutError)
    mod = spawnproxy.run_script("x = 1")
    mod.terminate_daemon()
    with pytest.raises(spawnproxy.DaemonTerminatedError):
        hasattr(mod.x, "real")


@pytest.mark.parametrize(
    ("script", "match"),
    [
        ("def broken(:\n", "SyntaxError"),
        ("raise RuntimeError('at import')", "RuntimeError: at import"),
        ("import no_such_module_xyz", "ModuleNotFoundError"),
    ],
)
def test_failing_script_raises_daemon_start_error(script: str, match: str) -> None:
    """A script that fails raises DaemonStartError with the remote traceback; no process is left."""
    with pytest.raises(spawnproxy.DaemonStartError, match=match) as info:
        spawnproxy.run_script(script)
    assert info.value.remote_traceback


def test_missing_module_and_class_raise_daemon_start_error() -> None:
    """A missing module or class fails at start with DaemonStartError."""
    with pytest.raises(spawnproxy.DaemonStartError, match="No module named 'nope_nope'"):
        spawnproxy.run_module("nope_nope")
    with pytest.raises(spawnproxy.DaemonStartError, match="has no attribute 'NoSuchClass'"):
        spawnproxy.run_object(spawnproxy.InstanceDefinition("io", "NoSuchClass"))
