"""Proxies: the wrapt classes that stand, locally, for objects living in a child.

The only module that knows wrapt, and the bottom of the proxy layer: it
imports nothing of spawnproxy's.  An `ObjectProxy` is a
`wrapt.BaseObjectProxy` whose wrapped object is a handle (`_handle.Remote`):
wrapt forwards every special method to the handle (in C), and the handle's
class turns each of them into a request to the child.  `ObjectProxy` itself
only overrides what wrapt must not do for a remote object (its own repr,
pickling, iteration, in-place operators that would replace the wrapped
object).

The proxy knows its handle only through the handle's `_sp_*` names (its
cache, `_sp_call`, `_sp_op`, `_sp_iter`, `_sp_next`, `_sp_doc`, `_sp_daemon`,
`_sp_callable`): a handle forwards every other attribute to the remote object,
so its own names must be ones no remote attribute can shadow.  `FORWARDED` is
the one table of forwarded special methods; the handle's class is built from
it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import wrapt

if TYPE_CHECKING:
    from ._handle import Remote


# The one table of forwarded special methods: dunder -> the child's operator name.
FORWARDED = {
    "__str__": "str",
    "__repr__": "repr",
    "__format__": "format",
    "__len__": "len",
    "__hash__": "hash",
    "__bool__": "bool",
    "__contains__": "contains",
    "__getitem__": "getitem",
    "__setitem__": "setitem",
    "__delitem__": "delitem",
    "__iter__": "iter",
    "__next__": "next",
    "__reversed__": "reversed",
    "__lt__": "lt",
    "__le__": "le",
    "__eq__": "eq",
    "__ne__": "ne",
    "__gt__": "gt",
    "__ge__": "ge",
    "__neg__": "neg",
    "__pos__": "pos",
    "__abs__": "abs",
    "__invert__": "invert",
    "__int__": "int",
    "__float__": "float",
    "__complex__": "complex",
    "__index__": "index",
    "__bytes__": "bytes",
    "__round__": "round",
    "__trunc__": "trunc",
    "__floor__": "floor",
    "__ceil__": "ceil",
    "__enter__": "enter",
    "__divmod__": "divmod",
    "__rdivmod__": "rdivmod",
    "__rpow__": "rpow",
    "__ipow__": "ipow",
}
for _op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "lshift", "rshift", "and", "or", "xor"):
    FORWARDED[f"__{_op}__"] = _op
    FORWARDED[f"__r{_op}__"] = f"r{_op}"
    FORWARDED[f"__i{_op}__"] = f"i{_op}"
INPLACE = [
    d
    for d in FORWARDED
    if d.startswith("__i")
    and FORWARDED[d].startswith("i")
    and d not in ("__int__", "__index__", "__iter__", "__invert__")
]


_object_getattribute = object.__getattribute__
# This thread's last remote attribute read that raised AttributeError: (id of the proxy, name, error).
_missed = threading.local()
_proxy_getattribute = wrapt.BaseObjectProxy.__getattribute__


def _reference(proxy: ObjectProxy) -> Any:
    """(session, target): what the serializer sends for a proxy passed back to its own child."""
    handle = _object_getattribute(proxy, "__wrapped__")
    return handle._spawnproxy_ref_(handle)


class ObjectProxy(wrapt.BaseObjectProxy):  # type: ignore[misc,type-arg]
    """The type of every proxy: a local stand-in for an object living in a child.

    Attribute access, calls and operators are forwarded to the child; results
    come back as values or as proxies of their own (see the guide "Values and
    proxies").  Its only own attribute is `terminate_daemon()`.

    Reading this from `help(proxy)`?  Outside IPython, `help()` documents the
    type of its argument, and a proxy's is this class.  The remote object's own
    documentation: `help(proxy)` in IPython or Jupyter (see the guide "In IPython
    and Jupyter"), or `print(proxy.__doc__)` anywhere.

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("greeting = 'hello'")
        >>> isinstance(mod.greeting, spawnproxy.ObjectProxy)
        True
        >>> mod.greeting.upper()
        'HELLO'
        >>> mod.terminate_daemon()
    """

    _spawnproxy_ref_ = staticmethod(_reference)

    def terminate_daemon(self, timeout: float = 5.0) -> None:
        """End the child this proxy belongs to; idempotent.

        Example:
            >>> import spawnproxy
            >>> mod = spawnproxy.run_script("x = 1")
            >>> mod.x.terminate_daemon()
            >>> spawnproxy.daemon_of(mod).is_alive()
            False
        """
        self.__wrapped__._sp_daemon.terminate(timeout)

    def __repr__(self) -> str:
        return repr(self.__wrapped__)

    def __getattribute__(self, name: str) -> Any:
        # A remote attribute read before (`p.add` of `p.add(1, 2)`) is found in the handle's
        # cache here.  wrapt's own lookup would first fail on the proxy, raising and
        # catching an AttributeError, and then fail again on the handle: twice the time
        # of the call's own Python work.  Names of the proxy's own are never taken from it.
        if name not in _OWN_NAMES:
            try:
                handle = _object_getattribute(self, "__wrapped__")
            except (AttributeError, ValueError):  # wrapt is still setting the proxy up
                pass
            else:
                cached = handle._sp_cache.get(name)
                if cached is not None and handle._sp_session.failure is None:
                    return cached
                if not name.startswith("_self_"):  # wrapt keeps those on the proxy itself
                    try:
                        return getattr(handle, name)
                    except AttributeError as error:
                        # Python calls __getattr__ next, and wrapt's own lookup would call it
                        # first: either would ask the child again.  It raises this one instead.
                        _missed.last = (id(self), name, error)  # not self: it would outlive its use
                        raise
        return _proxy_getattribute(self, name)

    def __getattr__(self, name: str) -> Any:
        if name == "__wrapped__":  # asked by wrapt's pure-Python proxy before it is set
            raise ValueError("wrapper has not been initialised")
        missed = _missed.__dict__.pop("last", None)
        if missed is not None and missed[0] == id(self) and missed[1] == name:
            raise missed[2]
        return getattr(self.__wrapped__, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        # Local on purpose: isinstance() consults __class__, and a remote
        # round trip there would make every failed isinstance() check a call.
        return type(self)

    def __iter__(self) -> Any:
        return _object_getattribute(self, "__wrapped__")._sp_iter()

    def __next__(self) -> Any:
        return _object_getattribute(self, "__wrapped__")._sp_next()

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__wrapped__.__reduce_ex__(protocol)

    def __reduce__(self) -> Any:
        return self.__wrapped__.__reduce_ex__(2)

    def __pow__(self, other: Any, *modulo: Any) -> Any:
        return self.__wrapped__.__pow__(other, *modulo)


def _inplace(dunder: str) -> Any:
    op = FORWARDED[dunder]

    def inplace(self: ObjectProxy, other: Any) -> Any:
        # A mutable object is changed in place (the answer is SAME: this proxy);
        # an immutable one gives a new value, to which the local name is rebound.
        return _object_getattribute(self, "__wrapped__")._sp_op(op, other)

    inplace.__name__ = dunder
    return inplace


for _dunder in INPLACE:
    setattr(ObjectProxy, _dunder, _inplace(_dunder))


class CallableObjectProxy(ObjectProxy):
    """A proxy of a callable remote object (a function, a method, a class, ...)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Not self.__wrapped__: that would pass through ObjectProxy.__getattribute__.
        return _object_getattribute(self, "__wrapped__")._sp_call(args, kwargs)


class _Doc:
    """`__doc__` of proxies: the class docstring on the class, the remote one on an instance.

    A data descriptor, so that it wins over the `__doc__` wrapt copies into
    each proxy, and so that pydoc (which reads it with object.__getattribute__)
    shows the remote docstring.
    """

    def __init__(self, class_doc: str | None) -> None:
        self._class_doc = class_doc

    def __get__(self, proxy: ObjectProxy | None, owner: type | None = None) -> Any:
        if proxy is None:
            return self._class_doc
        return proxy.__wrapped__._sp_doc()

    def __set__(self, proxy: ObjectProxy, value: Any) -> None:
        proxy.__wrapped__.__doc__ = value


for _cls in (ObjectProxy, CallableObjectProxy):
    type.__setattr__(_cls, "__doc__", _Doc(_cls.__doc__))


# What a proxy answers itself, whatever the remote object has by that name.
_OWN_NAMES = frozenset(dir(CallableObjectProxy)) | {"__wrapped__", "__dict__", "__weakref__"}


def make_proxy(handle: Remote) -> ObjectProxy:
    """The proxy wrapping `handle`: callable if the remote object is."""
    if handle._sp_callable:
        return CallableObjectProxy(handle)
    return ObjectProxy(handle)


def handle_of(proxy: ObjectProxy) -> Remote:
    """The handle a proxy wraps; a TypeError for anything that is not a proxy."""
    if not isinstance(proxy, ObjectProxy):
        raise TypeError(f"expected a spawnproxy proxy, not {type(proxy).__name__}")
    return proxy.__wrapped__  # type: ignore[no-any-return]
