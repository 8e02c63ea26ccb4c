"""Values and proxies told apart: `is_proxy`, and `obtain` for a local copy of what a proxy stands for.

The rule they serve is in docs/guides/values-and-proxies.md.

Interface layer: uses `_handle`, `_proxy`, `_serialize` and `_child.protocol`.
"""

from __future__ import annotations

from typing import TypeVar

from . import _serialize
from ._child import protocol
from ._errors import SerializationError
from ._handle import label_of, request
from ._proxy import ObjectProxy, handle_of

__all__ = ["is_proxy", "obtain"]

T = TypeVar("T")


def is_proxy(x: object) -> bool:
    """Whether `x` is a proxy of an object living in a child (and not a value).

    True for the root proxy, attribute reads and results that stayed in the
    child; false for everything that came back by value.  Never asks the child.

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("import threading\\nnumbers = [1, 2]")
        >>> spawnproxy.is_proxy(mod), spawnproxy.is_proxy(mod.numbers)
        (True, True)
        >>> spawnproxy.is_proxy(mod.numbers.copy())
        False
        >>> spawnproxy.is_proxy(mod.threading.Lock())
        True
        >>> mod.terminate_daemon()
    """
    # The type, not isinstance(): a proxy's __class__ is its own, but nothing about x is asked.
    return issubclass(type(x), ObjectProxy)


def obtain(x: T) -> T:
    """A local copy of what the proxy `x` stands for; a value is returned as it is.

    The object is pickled in the child and loaded here: nothing is shared, and
    changing the copy leaves the child's object alone.  Where no copy can be
    made it raises `SerializationError` saying why (the child cannot pickle
    the object, or the parent cannot load the pickle); the proxy stays usable.

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("numbers = [1, 2]")
        >>> copy = spawnproxy.obtain(mod.numbers)
        >>> copy.append(3)
        >>> copy, mod.numbers == [1, 2], spawnproxy.is_proxy(copy)
        ([1, 2, 3], True, False)
        >>> spawnproxy.obtain(42)
        42
        >>> mod.terminate_daemon()
    """
    if not is_proxy(x):
        return x
    handle = handle_of(x)  # type: ignore[arg-type]
    label = label_of(handle)
    made, data = request(handle, "obtain", (), f"obtain({label})")
    if not made:
        raise SerializationError(f"no copy of {label} can be made: the child cannot pickle it: {data}")
    try:
        return _serialize.decode(protocol.TAG_PICKLE, data)  # type: ignore[no-any-return]
    except Exception as exc:
        raise SerializationError(
            f"no copy of {label} can be made: its pickle cannot be loaded in the parent: {type(exc).__name__}: {exc}"
        ) from exc
