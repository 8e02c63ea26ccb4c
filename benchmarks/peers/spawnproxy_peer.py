"""spawnproxy: `run_object(Target())` in a fresh child; calls go through the proxy as written."""

from __future__ import annotations

from typing import Any

import spawnproxy
from benchmarks.peers.base import ProxyHandle, Unsupported
from benchmarks.target import Target

DIST = "spawnproxy"
NOTES = [
    "`spawnproxy.run_object(Target())` with the parent's own interpreter",
    "threads share one proxy; `p.make()` returns a proxy, released when dropped",
]


class SpawnproxyHandle(ProxyHandle):
    """A root proxy of a `Target` in a spawnproxy child."""

    def __init__(self) -> None:
        self._p: Any = spawnproxy.run_object(Target())

    def make_ref(self) -> None:
        ref = self._p.make()
        if not isinstance(ref, spawnproxy.ObjectProxy):
            raise Unsupported(f"p.make() came back as {type(ref).__name__}, not as a proxy")
        del ref

    def close(self) -> None:
        spawnproxy.daemon_of(self._p).terminate()


def start() -> SpawnproxyHandle:
    """Start a child hosting a `Target`."""
    return SpawnproxyHandle()
