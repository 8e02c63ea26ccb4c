"""The handle a proxy wraps: where a child's object is, and the requests that reach it.

A `Remote` holds the session, the target (an object id in the child's table,
or a path from one: `(id, "name", ...)`), the reference that keeps the object
alive there, what the child said of its type and a cache of the attributes
read by path.  The first-level attributes of the root and the methods read
through a proxy are reached by path, so `p.method(x)` is one round trip.  It
turns each reply into the result: a value, a new proxy (`_proxy.make_proxy`)
or the remote exception raised here.

The handle forwards attribute access to the remote object, so its own names
carry the `_sp_` prefix (no remote attribute can shadow them) and are for
the proxy classes only.  Everything else, `_aio` first, uses the module
functions at the end (`session_of`, `label_of`, `result_of`, ...).

Uses the session's request interface, `_proxy` (the wrapt classes and the
table of forwarded special methods: the proxy classes know the handle only by
its `_sp_*` names, so the arrow goes this way), `_requests`, `_streams`,
`_serialize_errors`, `_signatures` and the wire's names.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._child import protocol
from ._errors import SerializationError
from ._proxy import FORWARDED, ObjectProxy, make_proxy
from ._requests import Label, Reference, named_operands, no_operands
from ._serialize import NeedsReferences
from ._serialize_errors import rebuild_exception
from ._signatures import rebuild_signature
from ._streams import Stream, open_stream

if TYPE_CHECKING:
    from ._daemon import DaemonProxy
    from ._session import Session

Target = Any  # int | tuple[int | str, ...]
_log = logging.getLogger("spawnproxy")

# Bound once: every call's reply is read with them.
VALUE = protocol.VALUE
ERROR = protocol.ERROR
REF = protocol.REF
TYPE_METHODS = protocol.TYPE_METHODS
TYPE_CALLABLE = protocol.TYPE_CALLABLE


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
        ref: Reference | None,
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
        raise NeedsReferences(
            f"a proxy of {self._sp_label} cannot be pickled: it only travels as an argument of a call to its own child"
        )

    # -- requests ------------------------------------------------------------------

    def _sp_request(self, op: str, operands: tuple[Any, ...], what: object, named: Any = None) -> Any:
        """Send a request about this object; `named` lists (or makes) the operands for errors."""
        session = self._sp_session
        describe = named if callable(named) else (lambda: named) if named is not None else no_operands
        _, _, how, payload = session.request(op, (self._sp_target, *operands), what, describe)
        if how == VALUE:
            return payload
        return self._sp_result(how, payload, what)

    def _sp_reply(self, reply: tuple[Any, ...], what: object) -> Any:
        """The result a reply carries: a value, a proxy, or the remote exception raised."""
        _, _, how, payload = reply
        if how == VALUE:
            return payload
        return self._sp_result(how, payload, what)

    def _sp_result(self, how: int, payload: Any, what: object) -> Any:
        if how == ERROR:
            raise rebuild_exception(payload)
        if how == REF:
            oid, key, info, *unloadable = payload
            session = self._sp_session
            if info is None:
                info = session.types.get(key)
            if unloadable:
                _by_reference_because(what, info, unloadable[0])
            return held_proxy(self._sp_daemon, session, oid, info, f"the result of {what}")
        if how == protocol.SAME:
            return make_proxy(self)
        if how == protocol.BASE:
            return make_proxy(self if self._sp_base is None else self._sp_base)
        raise SerializationError(f"unexpected reply kind {how!r} to {what}")

    def _sp_path(self, name: str, is_callable: bool) -> ObjectProxy:
        return make_proxy(self._sp_path_handle(name, is_callable))

    def _sp_path_handle(self, name: str, is_callable: bool) -> Remote:
        target = self._sp_target
        path = (target, name) if type(target) is int else target + (name,)
        return Remote(
            self._sp_daemon,
            self._sp_session,
            path,
            self._sp_ref,
            None,
            None,
            self if self._sp_base is None else self._sp_base,  # not `or`: a handle's truth is remote
            f"{self._sp_label}.{name}",
            is_callable,
        )

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
        elif self._sp_info is not None and name in self._sp_info[TYPE_METHODS]:
            is_callable = True  # a method of the object's type
        else:
            return None
        proxy = self._sp_cache[name] = self._sp_path(name, is_callable)
        return proxy

    def _sp_attribute(self, name: str, reply: tuple[Any, ...], what: object) -> Any:
        """The attribute a `getattr` reply gives."""
        _, _, how, payload = reply
        if how == protocol.PATH:
            # Something callable: remembered, so that the next `p.x.method()` is one
            # round trip.  It is reached by path at each use, so it never goes stale.
            proxy = self._sp_cache[name] = self._sp_path(name, payload)
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
        # Not through __getattr__, which reaches a root's attributes by path: a docstring is a str.
        return self._sp_request("getattr", ("__doc__",), Label(("reading {}.__doc__", self._sp_label)))

    @property
    def __signature__(self) -> Any:
        encoded = self._sp_request("signature", (), f"inspect.signature({self._sp_label})")
        return rebuild_signature(encoded)

    # -- calls and operators --------------------------------------------------------

    def _sp_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # _sp_request, inline, with Session.call: every call passes here.  Labels and operand
        # lists are only needed for errors: made lazily.
        what = Label(("{}()", self._sp_label))
        _, _, how, payload = self._sp_session.call(
            self._sp_target, args, kwargs, what, lambda: named_operands(args, kwargs)
        )
        if how == VALUE:
            return payload
        return self._sp_result(how, payload, what)

    def _sp_op(self, name: str, *args: Any) -> Any:
        return self._sp_request(
            "op",
            (name, args),
            Label(("{1}({0})", self._sp_label, name)),
            (lambda: named_operands(args)) if args else None,
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

    # -- iteration: batches, read ahead (see _streams) -----------------------------------

    def _sp_iter(self) -> Stream:
        stream: Stream | None = self._sp_stream
        if stream is not None:
            return stream
        stream = self._sp_open_stream(call_iter=True)
        if stream.own:
            # iter(x) is x: x is an iterator, and next(p) must take from the same batches.
            object.__setattr__(self, "_sp_stream", stream)
        return stream

    def _sp_next(self) -> Any:
        stream = self._sp_stream
        if stream is None:
            stream = self._sp_open_stream(call_iter=False)
            object.__setattr__(self, "_sp_stream", stream)
        return next(stream)

    def _sp_open_stream(self, call_iter: bool) -> Stream:
        what = Label(("iterating over {}", self._sp_label))
        return open_stream(self._sp_session, what, self._sp_target, call_iter, lambda ref: iterator_of(self, ref))


def _forward(op: str) -> Any:
    def forward(self: Remote, *args: Any) -> Any:
        return self._sp_op(op, *args)

    forward.__name__ = f"__{op}__"
    return forward


for _dunder, _op in FORWARDED.items():
    setattr(Remote, _dunder, _forward(_op))


def _by_reference_because(what: object, info: Any, modules: list[str]) -> None:
    """Log why a result came back as a proxy: its pickle names modules the parent cannot import."""
    kind = f"{info[protocol.TYPE_MODULE]}.{info[protocol.TYPE_QUALNAME]}" if info else "an object"
    _log.debug(
        "the result of %s, a %s, stays in the child as a proxy: it cannot be loaded here "
        "(ModuleNotFoundError: the parent cannot import %s)",
        what,
        kind,
        ", ".join(modules),
    )


def held_proxy(daemon: DaemonProxy, session: Session, oid: int, info: Any, label: str) -> ObjectProxy:
    """A proxy of the child's object `oid`, new to the parent: its reference is released when collected."""
    handle = Remote(
        daemon,
        session,
        oid,
        Reference(oid, session.releases),
        info,
        None,
        None,
        label,
        bool(info and info[TYPE_CALLABLE]),
    )
    return make_proxy(handle)


def proxy_maker(owner_ref: Any) -> Any:
    """How a session makes the proxy of a child's object sent inside a message.

    `owner_ref` is a weak reference to the owner of the session (a `DaemonProxy`, or a
    network connection): the session must not keep it alive.
    """

    def make(oid: int, info: Any) -> ObjectProxy | None:
        owner = owner_ref()
        if owner is None:
            return None
        return held_proxy(owner, owner._session, oid, info, "an object of the child's")

    return make


# -- what other modules (`_aio`, `_values`) use of a handle -------------------------------


def session_of(handle: Remote) -> Session:
    """The session that reaches the handle's object."""
    session: Session = handle._sp_session
    return session


def label_of(handle: Remote) -> str:
    """How errors name the handle's object (`mod.f`, "the result of mod.f()", ...)."""
    label: str = handle._sp_label
    return label


def target_of(handle: Remote) -> Target:
    """The handle's target: the first operand of every request about its object."""
    return handle._sp_target


def request(handle: Remote, op: str, operands: tuple[Any, ...], what: object, named: Any = None) -> Any:
    """Send a request about the handle's object and return its result (blocking)."""
    return handle._sp_request(op, operands, what, named)


def result_of(handle: Remote, reply: tuple[Any, ...], what: object) -> Any:
    """The result a reply about the handle's object carries: a value, a proxy, or the error raised."""
    return handle._sp_reply(reply, what)


def path_of(handle: Remote, name: str, is_callable: bool) -> Remote:
    """The handle of the attribute `name`, reached by path (no round trip)."""
    return handle._sp_path_handle(name, is_callable)


def known_attribute(handle: Remote, name: str) -> Any:
    """The attribute's proxy when reading it needs no `getattr` round trip (cached, or reached by
    path), else None."""
    cached = handle._sp_cache.get(name)
    if cached is not None:
        return cached
    return handle._sp_known(name)


def asks_attrinfo(handle: Remote, name: str) -> bool:
    """Whether the child must be asked about `name` first (`attrinfo`): a root's attribute it did
    not describe when it started; `note_attrinfo` keeps the answer."""
    names = handle._sp_names
    return names is not None and name not in names


def note_attrinfo(handle: Remote, name: str, is_callable: Any) -> None:
    """Keep the child's answer to `attrinfo` about a root's attribute."""
    handle._sp_names[name] = is_callable  # type: ignore[index]


def attribute_of(handle: Remote, name: str, reply: tuple[Any, ...], what: object) -> Any:
    """The attribute a `getattr` reply gives (a proxy reached by path is cached)."""
    return handle._sp_attribute(name, reply, what)


def iterator_of(handle: Remote, ref: Any) -> tuple[Target, Reference | None]:
    """The target and reference of the iterator a stream takes its batches from (after the first);
    `ref` is the first batch's iterator (see `_streams`)."""
    if ref is None:
        return handle._sp_target, handle._sp_ref  # the object is its own iterator
    # iter() made a new iterator in the child: it is held there for this stream.
    oid, key, info = ref
    session = handle._sp_session
    if info is not None:
        session.types[key] = info
    return oid, Reference(oid, session.releases)
