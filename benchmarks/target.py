"""The object every peer's server hosts: the same class, the same methods, for all peers."""

from __future__ import annotations

import threading
from typing import Any


class Holder:
    """An object tied to its process (it holds a lock), so it can only travel as a reference."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


class Target:
    """The remote object under test."""

    def __init__(self) -> None:
        self.value = 0

    def noop(self) -> None:
        """Do nothing: the cost of a call is all transport."""

    def add(self, a: int, b: int) -> int:
        """Add two small arguments."""
        return a + b

    def echo(self, x: Any) -> Any:
        """Return the argument unchanged (bandwidth cases)."""
        return x

    def numbers(self, n: int) -> Any:
        """Yield 0, 1, ..., n - 1 (streaming cases)."""
        yield from range(n)

    def next_of(self, iterator: Any) -> Any:
        """``next(iterator)``: one item per call (the streaming case's one-round-trip-per-item baseline)."""
        return next(iterator)

    def make(self) -> Holder:
        """Return an unpicklable object, which must come back as a remote reference."""
        return Holder()
