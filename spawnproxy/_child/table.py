"""The child's table of objects that the parent holds references to.

Shipped to the child as source: standard library only, CPython 3.8 syntax;
uses nothing else of the package.

Each time an object is sent to the parent by reference its count goes up by
one; the parent releases each reference it received once, in batches.  An
object stays alive while its count is above zero.  Threads the child starts
may add objects (the arguments of a callback sent by reference) while the
main thread serves: changes take a lock.
"""

import threading


class ObjectTable:
    """Map object ids to objects with a count of outstanding references."""

    def __init__(self):
        self._objects = {}  # oid -> [object, count]
        self._by_identity = {}  # id(object) -> oid
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._objects)

    def pin(self, obj):
        """Register an object for the life of the child (the root); return its id."""
        oid = self.add(obj)
        with self._lock:
            self._objects[oid][1] += 1 << 62
        return oid

    def add(self, obj):
        """Count one more reference to `obj` held by the parent; return its id."""
        with self._lock:
            oid = self._by_identity.get(id(obj))
            if oid is not None:
                entry = self._objects[oid]
                entry[1] += 1
                return oid
            oid = self._next
            self._next += 1
            self._objects[oid] = [obj, 1]
            self._by_identity[id(obj)] = oid
            return oid

    def get(self, oid):
        try:
            return self._objects[oid][0]
        except KeyError:
            raise LookupError(
                "object %r is not (or no longer) held in the child; was its proxy released?" % (oid,)
            ) from None

    def release(self, oids):
        """Drop one reference for each id listed (an id may repeat)."""
        objects = self._objects
        dropped = []  # deleted outside the lock: a __del__ may run, and use the table
        with self._lock:
            for oid in oids:
                entry = objects.get(oid)
                if entry is None:
                    continue
                entry[1] -= 1
                if entry[1] <= 0:
                    del objects[oid]
                    del self._by_identity[id(entry[0])]
                    dropped.append(entry)
        del dropped[:]
