"""spawnproxy: `run_object(Target())` in a fresh child; calls go through the proxy as written."""

from __future__ import annotations

from typing import Any

import spawnproxy
from benchmarks.peers.base import Unsupported
from benchmarks.target import Target

DIST = "spawnproxy"
NOTES = [
    "`spawnproxy.run_object(Target())` with the parent's own interpreter",
    "threads share one proxy; `p.make()` returns a proxy, released when dropped",
]


class SpawnproxyHandle:
    """A root proxy of a `Target` in a spawnproxy child."""

    def __init__(self) -> None:
        self._p: Any = spawnproxy.run_object(Target())

    def noop(self) -> None:
        self._p.noop()

    def add(self, a: int, b: int) -> Any:
        return self._p.add(a, b)

    def get_value(self) -> Any:
        return self._p.value

    def set_value(self, v: int) -> None:
        self._p.value = v

    def echo(self, x: Any) -> Any:
        return self._p.echo(x)

    def make_ref(self) -> None:
        ref = self._p.make()
        if not isinstance(ref, spawnproxy.ObjectProxy):
            raise Unsupported(f"p.make() came back as {type(ref).__name__}, not as a proxy")
        del ref

    def for_thread(self) -> SpawnproxyHandle:
        return self

    def close(self) -> None:
        spawnproxy.daemon_of(self._p).terminate()


def start() -> SpawnproxyHandle:
    """Start a child hosting a `Target`."""
    return SpawnproxyHandle()
