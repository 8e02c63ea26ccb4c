"""Proxies: local stand-ins for objects that live in a child.

The only module that knows wrapt.  An `ObjectProxy` is a `wrapt.BaseObjectProxy`
whose wrapped object is a `Remote` handle: wrapt forwards every special
method to the handle (in C), and the handle's class holds the one explicit
table that turns each of them into a request to the child.  `ObjectProxy`
itself only overrides what wrapt must not do for a remote object (its own
repr, pickling, in-place operators that would replace the wrapped object).

A proxy's target is an object id in the child's table, or a path from one
(`(id, "name", ...)`): the first-level attributes of the root and the methods
read through a proxy are reached by path, so `p.method(x)` is one round trip.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import wrapt

from . import _serialize
from ._child import protocol
from ._errors import CallTimeoutError, SerializationError
from ._signatures import rebuild_signature

if TYPE_CHECKING:
    from ._daemon import DaemonProxy
    from ._session import Session

Target = Any  # int | tuple[int | str, ...]
_log = logging.getLogger("spawnproxy")


class _Ref:
    """One reference the parent holds on a child object; released when collected."""

    __slots__ = ("_releases", "oid")

    def __init__(self, oid: int, releases: collections.deque[int]) -> None:
        self.oid = oid
        self._releases = releases

    def __del__(self) -> None:
        # Never blocks, never sends: the release rides along the next request.
        self._releases.append(self.oid)


def _operands(args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    if kwargs:
        named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    return named


class Remote:
    # The handle a proxy wraps: where the object is and how to reach it.  No
    # docstring on purpose: wrapt copies the wrapped object's __doc__ when it
    # makes a proxy, and that must stay a local, free read.

    __slots__ = (
        "__weakref__",
        "_sp_base",
        "_sp_cache",
        "_sp_callable",
        "_sp_daemon",
        "_sp_info",
        "_sp_label",
        "_sp_names",
        "_sp_ref",
        "_sp_session",
        "_sp_stream",
        "_sp_target",
    )

    def __init__(
        self,
        daemon: DaemonProxy,
        session: Session,
        target: Target,
        ref: _Ref | None,
        info: Any,
        names: dict[str, bool] | None,
        base: Remote | None,
        label: str,
        is_callable: bool,
    ) -> None:
        setter = object.__setattr__
        setter(self, "_sp_daemon", daemon)
        setter(self, "_sp_session", session)
        setter(self, "_sp_target", target)
        setter(self, "_sp_ref", ref)
        setter(self, "_sp_info", info)
        setter(self, "_sp_names", names)  # the root's attributes: name -> callable
        setter(self, "_sp_base", base)  # what a path starts from
        setter(self, "_sp_label", label)
        setter(self, "_sp_cache", {})
        setter(self, "_sp_callable", is_callable)
        setter(self, "_sp_stream", None)  # the batches read ahead of a remote iterator

    @staticmethod
    def _spawnproxy_ref_(handle: Remote) -> tuple[Session, Target]:
        return handle._sp_session, handle._sp_target

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise _serialize.NeedsReferences(
            f"a proxy of {self._sp_label} cannot be pickled: it only travels as an argument of a call to its own child"
        )

    # -- requests ------------------------------------------------------------------

    def _sp_request(self, op: str, operands: tuple[Any, ...], what: object, named: Any = None) -> Any:
        """Send a request about this object; `named` lists (or makes) the operands for errors."""
        session = self._sp_session
        describe = named if callable(named) else (lambda: named) if named is not None else _no_operands
        reply = session.request(op, (self._sp_target, *operands), what, describe)
        how = reply[2]
        if how == protocol.VALUE:
            return reply[3]
        return self._sp_result(how, reply[3], what)

    def _sp_reply(self, reply: tuple[Any, ...], what: object) -> Any:
        """The result a reply carries: a value, a proxy, or the remote exception raised."""
        how = reply[2]
        if how == protocol.VALUE:
            return reply[3]
        return self._sp_result(how, reply[3], what)

    def _sp_result(self, how: int, payload: Any, what: object) -> Any:
        if how == protocol.ERROR:
            raise _serialize.rebuild_exception(payload)
        if how == protocol.REF:
            oid, key, info = payload[0], payload[1], payload[2]
            session = self._sp_session
            if info is None:
                info = session.types.get(key)
            if len(payload) > 3:
                _by_reference_because(what, info, payload[3])
            handle = Remote(
                self._sp_daemon,
                session,
                oid,
                _Ref(oid, session.releases),
                info,
                None,
                None,
                f"the result of {what}",
                bool(info and info[3]),
            )
            return make_proxy(handle)
        if how == protocol.SAME:
            return make_proxy(self)
        if how == protocol.BASE:
            return make_proxy(self._sp_base or self)
        raise SerializationError(f"unexpected reply kind {how!r} to {what}")

    def _sp_path(self, name: str, is_callable: bool) -> Any:
        target = self._sp_target
        path = (target, name) if type(target) is int else target + (name,)
        handle = Remote(
            self._sp_daemon,
            self._sp_session,
            path,
            self._sp_ref,
            None,
            None,
            self._sp_base or self,
            f"{self._sp_label}.{name}",
            is_callable,
        )
        return make_proxy(handle)

    # -- attributes ---------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        session = self._sp_session
        if session.closed:
            # A lazy proxy would need no round trip: say at once that the child is gone.
            session.check(f"reading {self._sp_label}.{name}")
        cached = self._sp_cache.get(name)
        if cached is not None:
            return cached
        what = Label(("reading {}.{}", self._sp_label, name))
        names = self._sp_names
        if names is not None and name not in names:
            names[name] = self._sp_request("attrinfo", (name,), what)
        known = self._sp_known(name)
        if known is not None:
            return known
        return self._sp_attribute(name, session.request("getattr", (self._sp_target, name), what), what)

    # The steps of an attribute read that `aio` shares (it awaits the requests between them).

    def _sp_known(self, name: str) -> Any:
        """The attribute's proxy if it is reached by path with no round trip (then cached), else None."""
        names = self._sp_names
        if names is not None:
            # The root: its first-level attributes are proxies, reached by path.
            is_callable = names.get(name)
            if is_callable is None:
                return None
        elif self._sp_info is not None and name in self._sp_info[2]:
            is_callable = True  # a method of the object's type
        else:
            return None
        proxy = self._sp_cache[name] = self._sp_path(name, is_callable)
        return proxy

    def _sp_attribute(self, name: str, reply: tuple[Any, ...], what: object) -> Any:
        """The attribute a `getattr` reply gives."""
        if reply[2] == protocol.PATH:
            # Something callable: remembered, so that the next `p.x.method()` is one
            # round trip.  It is reached by path at each use, so it never goes stale.
            proxy = self._sp_cache[name] = self._sp_path(name, reply[3])
            return proxy
        return self._sp_reply(reply, what)

    def __setattr__(self, name: str, value: Any) -> None:
        self._sp_cache.pop(name, None)
        if self._sp_names is not None:
            self._sp_names[name] = callable(value)
        self._sp_request("setattr", (name, value), f"setting {self._sp_label}.{name}", [("the value", value)])

    def __delattr__(self, name: str) -> None:
        self._sp_cache.pop(name, None)
        if self._sp_names is not None:
            self._sp_names.pop(name, None)
        self._sp_request("delattr", (name,), f"deleting {self._sp_label}.{name}")

    def __dir__(self) -> list[str]:
        return self._sp_request("dir", (), f"dir({self._sp_label})")  # type: ignore[no-any-return]

    def _sp_doc(self) -> Any:
        return self.__getattr__("__doc__")

    @property
    def __signature__(self) -> Any:
        encoded = self._sp_request("signature", (), f"inspect.signature({self._sp_label})")
        return rebuild_signature(encoded)

    # -- calls and operators --------------------------------------------------------

    def _sp_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # _sp_request, inline, with Session.call: every call passes here.  Labels and operand
        # lists are only needed for errors: made lazily.
        what = Label(("{}()", self._sp_label))
        reply = self._sp_session.call(self._sp_target, args, kwargs, what, lambda: _operands(args, kwargs))
        how = reply[2]
        if how == protocol.VALUE:
            return reply[3]
        return self._sp_result(how, reply[3], what)

    def _sp_op(self, name: str, *args: Any) -> Any:
        return self._sp_request(
            "op", (name, args), Label(("{1}({0})", self._sp_label, name)), (lambda: _operands(args)) if args else None
        )

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return self._sp_op("exit", exc_type, exc, None)
        except SerializationError:
            # The exception cannot travel: tell the context manager what it was.
            return self._sp_op("exit", RuntimeError, RuntimeError(repr(exc)), None)

    def __pow__(self, other: Any, modulo: Any = None) -> Any:
        if modulo is None:
            return self._sp_op("pow", other)
        return self._sp_op("pow", other, modulo)

    # -- iteration: batches, read ahead ---------------------------------------------------

    def _sp_iter(self) -> Stream:
        stream: Stream | None = self._sp_stream
        if stream is not None:
            return stream
        stream = Stream(self, call_iter=True)
        if stream.own:
            # iter(x) is x: x is an iterator, and next(p) must take from the same batches.
            object.__setattr__(self, "_sp_stream", stream)
        return stream

    def _sp_next(self) -> Any:
        stream = self._sp_stream
        if stream is None:
            stream = Stream(self, call_iter=False)
            object.__setattr__(self, "_sp_stream", stream)
        return next(stream)


# Items in the first batch of a stream, and the most in any batch; each batch is
# STEP times the last, so that a short loop stays short and a long one goes fast.
FIRST_BATCH = 16
MAX_BATCH = 4096
STEP = 4


def _by_reference_because(what: object, info: Any, modules: list[str]) -> None:
    """Log why a result came back as a proxy: its pickle names modules the parent cannot import."""
    kind = f"{info[0]}.{info[1]}" if info else "an object"
    _log.debug(
        "the result of %s, a %s, stays in the child as a proxy: it cannot be loaded here "
        "(ModuleNotFoundError: the parent cannot import %s)",
        what,
        kind,
        ", ".join(modules),
    )


def batch_sizes() -> Iterator[int]:
    """The sizes of the batches a stream asks for, after the first."""
    size = FIRST_BATCH
    while True:
        size = min(size * STEP, MAX_BATCH)
        yield size


def batch_of(reply: tuple[Any, ...], what: object) -> tuple[list[Any], Any, Any]:
    """(items, end, new iterator) of the reply to a `batch` request; raises the error it carries."""
    if reply[2] == protocol.VALUE:
        return reply[3]  # type: ignore[no-any-return]
    if reply[2] == protocol.ERROR:
        raise _serialize.rebuild_exception(reply[3])
    raise SerializationError(f"unexpected reply kind {reply[2]!r} to {what}")


def iterator_of(handle: Remote, ref: Any) -> tuple[Target, _Ref | None]:
    """The target and reference of the iterator a stream takes its batches from (after the first)."""
    if ref is None:
        return handle._sp_target, handle._sp_ref  # the object is its own iterator
    # iter() made a new iterator in the child: it is held there for this stream.
    oid, key, info = ref
    session = handle._sp_session
    if info is not None:
        session.types[key] = info
    return oid, _Ref(oid, session.releases)


class Stream:
    """A local iterator over a remote one: items come in batches, the next batch asked for
    before the current one is handed out (so the child makes it while the parent consumes).

    Dropping the stream (a `break` out of the loop) gives up the batch asked for and
    releases the remote iterator: a remote generator no one else holds is closed there,
    and its `finally` runs.  `close()` closes it explicitly.
    """

    __slots__ = ("__weakref__", "_buffer", "_end", "_pending", "_ref", "_session", "_sizes", "_target", "_what", "own")

    def __init__(self, handle: Remote, call_iter: bool) -> None:
        session = handle._sp_session
        self._session = session
        self._what = Label(("iterating over {}", handle._sp_label))
        self._sizes = batch_sizes()
        self._pending: int | None = None
        self._ref: _Ref | None = None
        self._buffer: collections.deque[Any] = collections.deque()
        reply = session.request("batch", (handle._sp_target, FIRST_BATCH, call_iter), self._what)
        items, end, ref = batch_of(reply, self._what)
        self.own = ref is None
        self._target, self._ref = iterator_of(handle, ref)
        self._take(items, end)

    def _take(self, items: list[Any], end: Any) -> None:
        self._end = end
        if end is None:
            self._pending = self._session.submit("batch", (self._target, next(self._sizes), False), self._what)
        self._buffer.extend(items)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        try:
            return self._buffer.popleft()
        except IndexError:
            return self._refill()

    def _refill(self) -> Any:
        while not self._buffer:
            end = self._end
            if end is not None:
                if end is True:
                    raise StopIteration
                self._end = True  # the exception ended the iterator: it is raised once
                raise _serialize.rebuild_exception(end)
            rid = self._pending
            self._pending = None
            if rid is None:  # the last batch request failed: ask again
                rid = self._session.submit("batch", (self._target, next(self._sizes), False), self._what)
            try:
                reply = self._session.collect(rid, self._what, keep_on_timeout=True)
            except CallTimeoutError:
                self._pending = rid  # still coming: the next call to next() waits for it again
                raise
            if reply[2] != protocol.VALUE:
                self._end = True
            items, end, _ = batch_of(reply, self._what)
            self._take(items, end)
        return self._buffer.popleft()

    def close(self) -> None:
        """Stop iterating and close the remote iterator (a generator's `finally` runs)."""
        rid, self._pending = self._pending, None
        if rid is not None:
            self._session.abandon(rid)
        self._buffer.clear()
        if self._end is None:
            self._end = True
            self._session.request("close", (self._target,), Label(("closing {}", self._what)))

    def __del__(self) -> None:
        try:
            rid = self._pending
            session = self._session
        except AttributeError:
            return  # the first batch failed
        if rid is not None:
            session.abandon_later(rid)
        # Dropping the reference now (it may be the last one) and sending its release at
        # once closes an abandoned remote generator now, not at the next call.
        self._ref = None
        session.flush_releases_nowait()


class Label(tuple):  # type: ignore[type-arg]
    """A request's name for error messages, formatted only if an error needs it.

    Made as ``Label((template, *args))``: tuple's own constructor, with no
    Python frame to pay on every call.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return str(self[0]).format(*self[1:])


def _no_operands() -> list[tuple[str, Any]]:
    return []


def _forward(op: str) -> Any:
    def forward(self: Remote, *args: Any) -> Any:
        return self._sp_op(op, *args)

    forward.__name__ = f"__{op}__"
    return forward


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
for _dunder, _op in FORWARDED.items():
    setattr(Remote, _dunder, _forward(_op))
INPLACE = [
    d
    for d in FORWARDED
    if d.startswith("__i")
    and FORWARDED[d].startswith("i")
    and d not in ("__int__", "__index__", "__iter__", "__invert__")
]


_object_getattribute = object.__getattribute__
_proxy_getattribute = wrapt.BaseObjectProxy.__getattribute__


class ObjectProxy(wrapt.BaseObjectProxy):  # type: ignore[misc,type-arg]
    """The type of every proxy: a local stand-in for an object living in a child.

    Attribute access, calls and operators are forwarded to the child; results
    come back as values or as proxies of their own (see the guide "Values and
    proxies").  Its only own attribute is `terminate_daemon()`.

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("greeting = 'hello'")
        >>> isinstance(mod.greeting, spawnproxy.ObjectProxy)
        True
        >>> mod.greeting.upper()
        'HELLO'
        >>> mod.terminate_daemon()
    """

    _spawnproxy_ref_ = staticmethod(lambda proxy: Remote._spawnproxy_ref_(proxy.__wrapped__))

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
                if cached is not None and handle._sp_session._failure is None:
                    return cached
        return _proxy_getattribute(self, name)

    def __getattr__(self, name: str) -> Any:
        if name == "__wrapped__":  # asked by wrapt's pure-Python proxy before it is set
            raise ValueError("wrapper has not been initialised")
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


def proxy_maker(owner_ref: Any) -> Any:
    """How a session makes the proxy of a child's object sent inside a message.

    `owner_ref` is a weak reference to the owner of the session (a `DaemonProxy`, or a
    network connection): the session must not keep it alive.
    """

    def make(oid: int, info: Any) -> ObjectProxy | None:
        owner = owner_ref()
        if owner is None:
            return None
        session = owner._session
        label = "an object of the child's"
        handle = Remote(
            owner, session, oid, _Ref(oid, session.releases), info, None, None, label, bool(info and info[3])
        )
        return make_proxy(handle)

    return make


# What a proxy answers itself, whatever the remote object has by that name.
_OWN_NAMES = frozenset(dir(CallableObjectProxy)) | {"__wrapped__", "__dict__", "__weakref__"}


def make_proxy(handle: Remote) -> ObjectProxy:
    if handle._sp_callable:
        return CallableObjectProxy(handle)
    return ObjectProxy(handle)


def handle_of(proxy: ObjectProxy) -> Remote:
    if not isinstance(proxy, ObjectProxy):
        raise TypeError(f"expected a spawnproxy proxy, not {type(proxy).__name__}")
    return proxy.__wrapped__  # type: ignore[no-any-return]
