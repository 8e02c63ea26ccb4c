"""spawnproxy: `run_object(Target())` in a fresh child; calls go through the proxy as written."""

from __future__ import annotations

import asyncio
from typing import Any

import spawnproxy
from benchmarks.peers.base import ProxyHandle, Unsupported
from benchmarks.target import Target

DIST = "spawnproxy"
NOTES = [
    "`spawnproxy.run_object(Target())` with the parent's own interpreter",
    "threads share one proxy; `p.make()` returns a proxy, released when dropped",
    "streaming: `sum(p.numbers(n))`; one round trip per item: `p.next_of(g)` in a loop",
    "asyncio: `asyncio.gather` of `spawnproxy.aio(p).add(i, 1)`",
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

    def stream_sum(self, n: int) -> int:
        return sum(self._p.numbers(n))

    def step_sum(self, n: int) -> int:
        generator, step = self._p.numbers(n), self._p.next_of  # each step() is one round trip
        total = 0
        try:
            while True:
                total += step(generator)
        except StopIteration:
            return total

    def gather_adds(self, n: int) -> None:
        async def gather() -> list[Any]:
            view = spawnproxy.aio(self._p)
            return await asyncio.gather(*(view.add(i, 1) for i in range(n)))

        results = asyncio.run(gather())
        if results != [i + 1 for i in range(n)]:
            raise AssertionError("wrong answer: gathered adds")

    def close(self) -> None:
        spawnproxy.daemon_of(self._p).terminate()


def start() -> SpawnproxyHandle:
    """Start a child hosting a `Target`."""
    return SpawnproxyHandle()
