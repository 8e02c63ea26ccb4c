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

    def make(self) -> Holder:
        """Return an unpicklable object, which must come back as a remote reference."""
        return Holder()
