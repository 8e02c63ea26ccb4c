"""The parent's table of its own objects that a child holds by reference (`by_ref`).

The mirror of the child's `_child/table.py`: each time an object is sent by reference
its count goes up by one; the child releases each reference it received once,
in batches, when its stand-in is collected.  An entry made with `weak=True`
holds only a weak reference: the parent's object may go, and a child that
uses it afterwards gets a clear `ReferenceError`.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import weakref
from typing import Any

from ._child.codec import method_names

Target = Any  # int | tuple[int | str, ...]


class ExportTable:
    """Map ids to the parent's objects a child references, with counts; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects: dict[int, list[Any]] = {}  # oid -> [object or weak reference, count, weak, identity key]
        self._by_identity: dict[tuple[int, bool], int] = {}
        self._ids = itertools.count(1)
        self._types: dict[type, tuple[tuple[str, ...], bool]] = {}

    def __len__(self) -> int:
        return len(self.objects)

    def add(self, obj: Any, weak: bool) -> tuple[str, int, bool, tuple[str, ...], bool]:
        """Count one more reference held by the child; return the persistent id to send."""
        tp = type(obj)
        described = self._types.get(tp)
        if described is None:
            # Methods are reached by path in the child (one round trip per call); an
            # object without __bool__ and __len__ is true there without asking.
            truthy = not (hasattr(tp, "__bool__") or hasattr(tp, "__len__"))
            described = self._types[tp] = (tuple(method_names(tp)), truthy)  # type: ignore[no-untyped-call]
        key = (id(obj), weak)
        with self._lock:
            found = self._by_identity.get(key)
            entry = None if found is None else self.objects[found]
            if found is not None and entry is not None and _deref(entry) is obj:
                oid = found
                entry[1] += 1
            else:
                oid = next(self._ids)
                held: Any = obj
                if weak:
                    held = weakref.WeakMethod(obj) if inspect.ismethod(obj) else weakref.ref(obj)
                self.objects[oid] = [held, 1, weak, key]
                self._by_identity[key] = oid
        return ("local", oid, callable(obj), described[0], described[1])

    def get(self, target: Target) -> Any:
        """The object a target (an id, or a path from one) names in the parent."""
        oid = target if type(target) is int else target[0]
        entry = self.objects.get(oid)
        if entry is None:
            raise LookupError(f"object {oid} is not (or no longer) held in the parent; was it released?")
        obj = _deref(entry)
        if obj is None:
            raise ReferenceError(f"the parent's object {oid} passed with by_ref(..., weak=True) no longer exists there")
        if type(target) is not int:
            for name in target[1:]:
                obj = getattr(obj, name)
        return obj

    def release(self, targets: list[Target]) -> None:
        """Drop one reference for each id listed (an id may repeat)."""
        dropped = []  # let go of outside the lock: a __del__ may run
        with self._lock:
            for target in targets:
                oid = target if type(target) is int else target[0]
                entry = self.objects.get(oid)
                if entry is None:
                    continue
                entry[1] -= 1
                if entry[1] <= 0:
                    del self.objects[oid]
                    if self._by_identity.get(entry[3]) == oid:
                        del self._by_identity[entry[3]]
                    dropped.append(entry)
        del dropped[:]

    def clear(self) -> None:
        """Forget every object (the child has ended)."""
        with self._lock:
            dropped = list(self.objects.values())
            self.objects.clear()
            self._by_identity.clear()
        del dropped[:]


def _deref(entry: list[Any]) -> Any:
    return entry[0]() if entry[2] else entry[0]
