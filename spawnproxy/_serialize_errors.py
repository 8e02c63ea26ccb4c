"""Exceptions across the wire: the child's rebuilt here, the parent's encoded for the child.

An exception the child raised arrives encoded (the EXC_* layout of
`_child.protocol`): it is rebuilt with its own type when the parent can load
its pickle, else as `RemoteError`, with the remote frames attached by tblib.
An exception raised in the parent while it served a request of the child's
(a callback) is encoded for the child, which needs nothing but pickle to
load it.  `ParentTraceback` carries the parent's side of such a failure back.

A frame of the child's that the parent cannot load (a class it lacks) is read
for its header alone (`message_head`): the request it answers gets the load
error, and the child's objects it named are released; a request of the child's
whose operands cannot be loaded is answered with `unloadable_request`; a result
that arrived but cannot be loaded fails its call with `unloadable_result`.

Part of the serialization layer: with `_serialize`, the only parent modules
that import pickle and tblib.  Uses `_errors`, `_child.protocol`,
`_child.buffers`, `_child.codec` (the pickle protocol both ends use) and the
standard library.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from collections.abc import Sequence
from typing import Any

import tblib

from ._child import protocol
from ._child.buffers import split_buffers
from ._child.codec import PROTOCOL  # both ends pickle with one protocol
from ._errors import RemoteError, SerializationError


class ParentTraceback(Exception):
    """The parent's own traceback of an exception raised in a callback, relayed by the child.

    It is the cause of the exception a call raises when a callback it made
    failed: the printed traceback shows the parent's frames, then the child's.
    """

    def __str__(self) -> str:
        return "\n\nTraceback in the parent:\n" + str(self.args[0]).rstrip() if self.args else ""


_CHILD_PARENT_TRACEBACK = ("_spawnproxy_child.parent", "ParentTraceback")
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def encode_exception(exc: BaseException) -> tuple[Any, ...]:
    """Encode an exception raised in the parent for the child (which needs nothing but pickle)."""
    import traceback

    tp = type(exc)
    try:
        data: bytes | None = pickle.dumps(exc, PROTOCOL)
    except Exception:
        data = None
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_DIR):
        tb = tb.tb_next  # the session's frames that ran the callback
    try:
        text = "".join(traceback.format_exception(tp, exc, tb))
    except Exception as err:
        text = f"{tp.__name__}: {message} (its traceback could not be formatted: {err!r})\n"
    return (tp.__module__, tp.__qualname__, message, data, text)


class _Placeholder:
    """Stands for every object of a frame that is read only for its header."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _HeaderUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffers: Any) -> None:
        super().__init__(file, buffers=buffers)
        self.events: list[tuple[Any, ...]] = []  # in frame order: (module, name) of a global, (pid,)

    def find_class(self, module: str, name: str) -> Any:
        self.events.append((module, name))
        return _Placeholder

    def persistent_load(self, pid: Any) -> Any:
        self.events.append((pid,))
        return None


def message_head(tag: bytes, payload: Any) -> tuple[int | None, int | None, list[int]]:
    """(kind, request id) of a message that `decode` could not load (its classes stubbed out), and
    the ids of the child's objects it names that the failed load never reached (to be released)."""
    buffers = None
    if tag == protocol.TAG_BUFFERS:
        tag, payload, buffers = split_buffers(payload)
    if tag != protocol.TAG_PICKLE and tag != protocol.TAG_REFS:
        return None, None, []
    unpickler = _HeaderUnpickler(io.BytesIO(payload), buffers)
    try:
        message = unpickler.load()
    except Exception:
        return None, None, []
    if type(message) is tuple and len(message) > protocol.ID:
        kind, rid = message[protocol.KIND], message[protocol.ID]
        if type(kind) is int and type(rid) is int:
            return kind, rid, _unreached(unpickler.events)
    return None, None, []


def _unreached(events: list[tuple[Any, ...]]) -> list[int]:
    """The child's objects, new to the parent, named after the first global the parent lacks."""
    for i, event in enumerate(events):
        if len(event) == 2 and _lacks(*event):
            unreached = []
            for event in events[i:]:
                if len(event) == 1 and len(event[0]) == 4:
                    kind, oid, _key, _info = event[0]  # ("ref", ...): an object new to the parent
                    if kind == "ref":
                        unreached.append(oid)
            return unreached
    return []


def _lacks(module: str, name: str) -> bool:
    """Whether the global `module.name` is missing here (nothing is imported to find out)."""
    obj: Any = sys.modules.get(module)
    if obj is None:
        return True
    for part in name.split("."):
        obj = getattr(obj, part, _lacks)
        if obj is _lacks:
            return True
    return False


def unloadable_request(exc: BaseException) -> tuple[Any, ...]:
    """The error, encoded for the child, of a request of its whose operands cannot be loaded here.

    The child's code gets the load error with its own type (an `AttributeError`, an
    `ImportError`, ...); the traceback it carries says that the request did not run.
    """
    module, qualname, message, data, text = encode_exception(exc)
    text = f"an argument the child sent cannot be loaded in the parent; the request did not run\n{text}"
    return (module, qualname, message, data, text)


def unloadable_result(what: object, error: BaseException) -> SerializationError:
    """The error of a call whose result arrived but cannot be rebuilt here (`error` says why)."""
    exc = SerializationError(f"the result of {what} cannot be rebuilt in the parent: {type(error).__name__}: {error}")
    exc.__cause__ = error
    return exc


def rebuild_exception(encoded: tuple[Any, ...]) -> BaseException:
    """Turn an exception encoded by the child into a local one with remote frames."""
    module, qualname, message, data, frames, text, cause, context = encoded
    if (module, qualname) == _CHILD_PARENT_TRACEBACK:
        return ParentTraceback(message.split("Traceback in the parent:\n", 1)[-1])
    exc: BaseException | None = None
    if data is not None:
        try:
            exc = pickle.loads(data)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        if module == "spawnproxy" and qualname == "SerializationError":
            # The child's own error about a request it could not load (see _child.codec.unloadable).
            exc = SerializationError(message)
        else:
            type_name = qualname if module == "builtins" else f"{module}.{qualname}"
            exc = RemoteError(type_name, message, text)
    tb = _rebuild_traceback(frames)
    if tb is not None:
        exc = exc.with_traceback(tb)
    if cause is not None:
        exc.__cause__ = rebuild_exception(cause)
    elif context is not None:
        exc.__context__ = rebuild_exception(context)
    return exc


def _rebuild_traceback(frames: Sequence[tuple[str, str, int, str]]) -> Any:
    tb_dict = None
    for filename, name, lineno, module in reversed(frames):
        tb_dict = {
            "tb_frame": {
                "f_code": {"co_filename": filename, "co_name": name},
                "f_globals": {"__name__": module, "__file__": filename},
                "f_locals": {},
                "f_lineno": lineno,
            },
            "tb_lineno": lineno,
            "tb_next": tb_dict,
        }
    if tb_dict is None:
        return None
    try:
        return tblib.Traceback.from_dict(tb_dict).as_traceback()
    except Exception:  # a traceback is a courtesy: never lose the error for it
        return None
