"""What a request about a child's object carries besides its operands.

`Label` names the request in error messages (formatted only if one is
raised), `named_operands` names its operands for them (made lazily too), and
`Reference` is the parent's hold on a child object the request answered with:
collected, it is released.  Used by the handle, the streams and the asyncio
view; standard library only.
"""

from __future__ import annotations

import collections
from typing import Any


class Reference:
    """One reference the parent holds on a child object; released when collected."""

    __slots__ = ("_releases", "oid")

    def __init__(self, oid: int, releases: collections.deque[int]) -> None:
        self.oid = oid
        self._releases = releases

    def __del__(self) -> None:
        # Never blocks, never sends: the release rides along the next request.
        self._releases.append(self.oid)


class Label(tuple):  # type: ignore[type-arg]
    """A request's name for error messages, formatted only if an error needs it.

    Made as ``Label((template, *args))``: tuple's own constructor, with no
    Python frame to pay on every call.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return str(self[0]).format(*self[1:])


def named_operands(args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """The operands of a call, named for error messages ("argument 0", "keyword argument 'x'")."""
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    if kwargs:
        named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    return named


def no_operands() -> list[tuple[str, Any]]:
    """The operands of a request that has none, for error messages."""
    return []
