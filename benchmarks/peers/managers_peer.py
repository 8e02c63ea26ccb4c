"""multiprocessing.managers: a `Target` registered in a `BaseManager` whose server is spawned.

The proxy type extends `NamespaceProxy` (the standard library's proxy that forwards attribute
reads and writes) with the methods, and ``make`` is mapped to a registered type so that its result
comes back as a proxy (reference-counted by the manager's server).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.managers import BaseManager, NamespaceProxy  # type: ignore[attr-defined]
from typing import Any

from benchmarks.peers.base import ProxyHandle
from benchmarks.target import Target

DIST = None
NOTES = [
    "BaseManager(ctx=spawn) with a NamespaceProxy subclass, so `p.value` reads and writes forward",
    "`make` maps to a registered type: the result is a proxy, increfed and decrefed by the server",
    "each thread gets its own connection to the server (the managers' own design)",
]


class TargetProxy(NamespaceProxy):  # type: ignore[misc]
    """Methods of `Target` plus the attribute access of `NamespaceProxy`."""

    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__", "noop", "add", "echo", "make")

    def noop(self) -> None:
        self._callmethod("noop")

    def add(self, a: int, b: int) -> Any:
        return self._callmethod("add", (a, b))

    def echo(self, x: Any) -> Any:
        return self._callmethod("echo", (x,))

    def make(self) -> Any:
        return self._callmethod("make")


class BenchManager(BaseManager):
    """A manager that serves `Target`."""


BenchManager.register("Target", Target, proxytype=TargetProxy, method_to_typeid={"make": "Holder"})
BenchManager.register("Holder", create_method=False)


class ManagersHandle(ProxyHandle):
    """A manager server and a proxy of the `Target` it hosts."""

    def __init__(self) -> None:
        self._manager = BenchManager(ctx=multiprocessing.get_context("spawn"))
        self._manager.start()
        self._p: Any = self._manager.Target()  # type: ignore[attr-defined]

    def close(self) -> None:
        del self._p
        self._manager.shutdown()


def start() -> ManagersHandle:
    """Start a manager server hosting a `Target`."""
    return ManagersHandle()
