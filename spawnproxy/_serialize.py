"""Parent-side serialization: the one place that knows pickle, dill and tblib.

Requests are pickled with the standard library (protocol 5).  A proxy among
the operands travels as a reference to the object it stands for (its type
carries the marker `_spawnproxy_ref_`); what pickle refuses goes through dill,
but only to a child of the parent's own Python version, because dill's code
objects do not carry over to another one.  Remote exceptions are rebuilt with
their own type when the parent can import it, with the remote frames attached
by tblib; otherwise they become `RemoteError`.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import os
import pickle
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import tblib

from ._child import protocol
from ._child.buffers import BUFFER_TYPES, buffer_taker, out_of_band, split_buffers
from ._errors import RemoteError, SerializationError

PROTOCOL = 5
_MAIN = b"__main__"
# What the child never gets by value from the parent's answers: calling it must run here.
_BY_REFERENCE = (type, types.ModuleType)
_SCAN_LIMIT = 1 << 20


class NeedsReferences(SerializationError):
    """A proxy met by plain pickle: the encoder pickles again with reference support.

    Anywhere else (pickling a proxy to a file, say) it reaches the user as the
    SerializationError it is: a proxy only travels as an argument to its own child.
    """


class ByRef:
    """A local object passed to a child by reference; made by `spawnproxy.by_ref`."""

    __slots__ = ("obj", "weak")

    def __init__(self, obj: Any, weak: bool = False) -> None:
        self.obj = obj
        self.weak = weak

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise NeedsReferences(
            f"by_ref({_short_repr(self.obj)}) cannot be pickled: it only travels as an argument of a call to a child"
        )

    def __repr__(self) -> str:
        return f"by_ref({_short_repr(self.obj)}{', weak=True' if self.weak else ''})"


class Owner(Protocol):
    """What an encoder sends for: a session, which holds the parent's exported objects."""

    def export(self, obj: Any, weak: bool) -> tuple[Any, ...]: ...

    def unexport(self, oids: list[int]) -> None: ...


def _ref_id(obj: Any, owner: Owner, exported: list[int]) -> tuple[Any, ...] | None:
    if type(obj) is ByRef:
        pid = owner.export(obj.obj, obj.weak)
        exported.append(pid[1])
        return pid
    marker = getattr(type(obj), "_spawnproxy_ref_", None)
    if marker is None:
        return None
    obj_owner, target = marker(obj)
    if obj_owner is not owner:
        raise SerializationError("a proxy of another child cannot be sent to this one; pass a value instead")
    return ("ref", target)


class _RefPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, owner: Owner, exported: list[int], buffer_callback: Any = None) -> None:
        super().__init__(file, PROTOCOL, buffer_callback=buffer_callback)
        self._owner = owner
        self._exported = exported

    def persistent_id(self, obj: Any) -> tuple[Any, ...] | None:  # type: ignore[override]
        return _ref_id(obj, self._owner, self._exported)


_BUFFER_TYPES = frozenset(BUFFER_TYPES)


_SCALAR_TYPES = frozenset({int, float, str, bool, type(None)})
_SMALL_TYPES = _SCALAR_TYPES | {bytes, bytearray}


def small_values(items: Any) -> bool:
    """Whether `items` are all scalars, or buffers too small to go out of band: the standard
    pickle takes them as they are, with nothing to send out of band or by reference."""
    kinds = set(map(type, items))
    return _SCALAR_TYPES.issuperset(kinds) or (_SMALL_TYPES.issuperset(kinds) and not any(map(_swapped, items)))


def _plain_operands(message: tuple[Any, ...]) -> bool:
    """Whether a request's operands, and the args and kwargs among them, are small values (a
    call's usual ones): then nothing from __main__ needs looking for either."""
    for item in message[3:]:
        kind = type(item)
        if kind is tuple:
            if not small_values(item):
                return False
        elif kind is dict:
            if not (small_values(item) and small_values(item.values())):
                return False
        elif kind not in _SCALAR_TYPES and not small_values((item,)):
            return False
    return True


def _swapped(value: Any) -> bool:
    """Whether `out_of_band` swaps `value` (a large buffer, or any memoryview)."""
    kind = type(value)
    return kind is memoryview or (kind in _BUFFER_TYPES and len(value) >= protocol.BIG_FRAME)


def _big_buffers_out_of_band(message: tuple[Any, ...]) -> tuple[Any, ...]:
    """Swap the large buffers among a request's operands (and their args and kwargs) for stand-ins
    that send them out of band; nested deeper, they travel in the pickle."""
    # Every request passes here: the search for a buffer runs in C (map, isdisjoint), and
    # only a buffer found is looked at for its size (a small one stays in the pickle).
    for item in message[3:]:
        kind = type(item)
        if kind is tuple:
            if not _BUFFER_TYPES.isdisjoint(map(type, item)) and any(map(_swapped, item)):
                break
        elif kind is dict:
            values = item.values()
            if not _BUFFER_TYPES.isdisjoint(map(type, values)) and any(map(_swapped, values)):
                break
        elif kind in _BUFFER_TYPES and _swapped(item):
            break
    else:
        return message
    swapped = []
    for item in message[3:]:
        kind = type(item)
        if kind is tuple:
            item = tuple(out_of_band(x) for x in item)
        elif kind is dict:
            item = {key: out_of_band(x) for key, x in item.items()}
        else:
            item = out_of_band(item)
        swapped.append(item)
    return message[:3] + tuple(swapped)


class Encoder:
    """Encode the requests sent to one child."""

    def __init__(self, owner: Owner, child_version: tuple[int, ...]) -> None:
        self._owner = owner
        self._child_version = tuple(child_version[:2])

    def encode(
        self, message: tuple[Any, ...], operands: Callable[[], Sequence[tuple[str, Any]]]
    ) -> tuple[bytes, bytes, list[pickle.PickleBuffer]]:
        """Return (tag, payload, out-of-band buffers); `operands` names the parts for error messages.

        Objects passed with by_ref are counted in the owner's table as they are
        pickled; if the message cannot be encoded, they are given back.
        """
        if _plain_operands(message):
            return protocol.TAG_PICKLE, pickle.dumps(message, PROTOCOL), []
        exported: list[int] = []
        try:
            return self._encode(message, operands, exported)
        except BaseException:
            if exported:
                self._owner.unexport(exported)
            raise

    def encode_result(self, head: tuple[Any, ...], value: Any) -> tuple[bytes, bytes, list[pickle.PickleBuffer]]:
        """Encode an answer to the child: `head + (value,)`, the value by reference unless
        the standard pickle can carry it (the rule the child follows for its results).

        Callables, classes and modules always go by reference, so that calling them runs
        here; dill is not used: it would make copies of objects tied to this process.
        """
        if not isinstance(value, _BY_REFERENCE) and not callable(value):
            exported: list[int] = []
            message = head + (value,)
            try:
                try:
                    data, tag = pickle.dumps(message, PROTOCOL), protocol.TAG_PICKLE
                except NeedsReferences:
                    buf = io.BytesIO()
                    _RefPickler(buf, self._owner, exported).dump(message)
                    data, tag = buf.getvalue(), protocol.TAG_REFS
                if _MAIN not in data or not _names_main(message, self._owner):
                    return tag, data, []
            except Exception:
                pass
            if exported:
                self._owner.unexport(exported)
        return self.encode(head + (ByRef(value),), lambda: [("the result", value)])

    def _encode(
        self, message: tuple[Any, ...], operands: Callable[[], Sequence[tuple[str, Any]]], exported: list[int]
    ) -> tuple[bytes, bytes, list[pickle.PickleBuffer]]:
        buffers: list[pickle.PickleBuffer] = []
        message = _big_buffers_out_of_band(message)
        try:
            data = pickle.dumps(message, PROTOCOL, buffer_callback=buffer_taker(buffers))
            tag = protocol.TAG_PICKLE
        except NeedsReferences:
            del buffers[:]
            try:
                buf = io.BytesIO()
                _RefPickler(buf, self._owner, exported, buffer_taker(buffers)).dump(message)
            except SerializationError:
                raise
            except Exception as exc:
                if exported:  # the slow path pickles again, and counts again
                    self._owner.unexport(exported)
                    del exported[:]
                return self._encode_slow(message, operands, exc, exported)
            data, tag = buf.getvalue(), protocol.TAG_REFS
        except Exception as exc:
            return self._encode_slow(message, operands, exc, exported)
        if len(data) < _SCAN_LIMIT and _MAIN in data:
            # Something defined in the parent's __main__: pickle names it, but the
            # child's __main__ is not the parent's.  dill carries it by value.  (Large
            # payloads are not scanned: that would cost more than sending them.)
            if exported:
                self._owner.unexport(exported)
                del exported[:]
            return self._encode_slow(message, operands, None, exported)
        return tag, data, buffers

    def _encode_slow(
        self,
        message: tuple[Any, ...],
        operands: Callable[[], Sequence[tuple[str, Any]]],
        pickle_error: Exception | None,
        exported: list[int],
    ) -> tuple[bytes, bytes, list[pickle.PickleBuffer]]:
        if self._child_version != tuple(sys.version_info[:2]):
            culprit, error = self._find_culprit(operands(), pickle_error)
            here = f"{sys.version_info[0]}.{sys.version_info[1]}"
            there = ".".join(map(str, self._child_version))
            raise SerializationError(
                f"{culprit} cannot be sent to a child running Python {there}: {error}, and dill's "
                f"code objects do not carry over from Python {here}; "
                "define it in a module the child can import instead"
            )
        import dill  # only when pickle is not enough

        owner = self._owner

        class _DillRefPickler(dill.Pickler):  # type: ignore[misc,name-defined]
            def persistent_id(self, obj: Any) -> tuple[Any, ...] | None:
                return _ref_id(obj, owner, exported)

        try:
            buf = io.BytesIO()
            _DillRefPickler(buf, protocol=PROTOCOL, recurse=True).dump(message)
            return protocol.TAG_DILL, buf.getvalue(), []
        except SerializationError:
            raise
        except Exception as exc:
            culprit, _ = self._find_culprit(operands(), exc)
            raise SerializationError(f"{culprit} cannot be serialized, not even by dill: {_describe(exc)}") from exc

    def _find_culprit(self, operands: Sequence[tuple[str, Any]], error: Exception | None) -> tuple[str, str]:
        """Name the first operand that pickle refuses (or that refers to the parent's __main__)."""
        for name, value in operands:
            counted: list[int] = []
            try:
                buf = io.BytesIO()
                _RefPickler(buf, self._owner, counted).dump(value)
            except SerializationError:
                raise
            except Exception as exc:
                return f"{name} ({_short_repr(value)})", f"pickle refuses it ({_describe(exc)})"
            finally:
                if counted:
                    self._owner.unexport(counted)
            if _MAIN in buf.getvalue():
                return f"{name} ({_short_repr(value)})", "it is defined in the parent's __main__"
        reason = "pickle refuses it" if error is None else f"pickle refuses it ({_describe(error)})"
        return "the request", reason


class _MainFinder(_RefPickler):
    """Pickles to nowhere, noting whether anything is named from the parent's __main__."""

    def __init__(self, owner: Owner) -> None:
        super().__init__(io.BytesIO(), owner, [])
        self.found = False

    def reducer_override(self, obj: Any) -> Any:
        module = getattr(obj if isinstance(obj, (type, types.FunctionType)) else type(obj), "__module__", None)
        if module == "__main__":
            self.found = True
        return NotImplemented

    def persistent_id(self, obj: Any) -> Any:
        # What travels by reference names nothing: no export is counted for this dry run.
        return "ref" if type(obj) is ByRef or hasattr(type(obj), "_spawnproxy_ref_") else None


def _names_main(message: Any, owner: Owner) -> bool:
    """Whether a pickle of `message` refers to the parent's __main__ (not merely contains the bytes)."""
    finder = _MainFinder(owner)
    try:
        finder.dump(message)
    except Exception:
        return True
    return finder.found


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 80 else text[:77] + "..."


def dumps(message: Any) -> bytes:
    """Pickle a message of spawnproxy's own (plain data: ids, names, bools, sources)."""
    return pickle.dumps(message, PROTOCOL)


class _ChildRefUnpickler(pickle.Unpickler):
    def __init__(self, data: Any, resolve: Callable[[Any], Any], buffers: Any = None) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._resolve = resolve

    def persistent_load(self, pid: Any) -> Any:
        return self._resolve(pid)


def decode(tag: bytes, payload: Any, resolve: Callable[[Any], Any] | None = None) -> Any:
    """Load a frame the child sent; `resolve` turns its persistent ids into objects."""
    if tag == protocol.TAG_PICKLE:
        return pickle.loads(payload)
    buffers = None
    if tag == protocol.TAG_BUFFERS:
        tag, payload, buffers = split_buffers(payload)
        if tag == protocol.TAG_PICKLE:
            return pickle.loads(payload, buffers=buffers)
    if tag == protocol.TAG_REFS and resolve is not None:
        return _ChildRefUnpickler(payload, resolve, buffers).load()
    raise SerializationError(f"the child sent a frame with an unknown tag {tag!r}")


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
    if type(message) is tuple and len(message) > 1 and type(message[0]) is int and type(message[1]) is int:
        return message[0], message[1], _unreached(unpickler.events)
    return None, None, []


def _unreached(events: list[tuple[Any, ...]]) -> list[int]:
    """The child's objects, new to the parent, named after the first global the parent lacks."""
    for i, event in enumerate(events):
        if len(event) == 2 and _lacks(*event):
            return [e[0][1] for e in events[i:] if len(e) == 1 and e[0][0] == "ref" and len(e[0]) == 4]
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


def can_import(modules: Sequence[str]) -> list[bool]:
    """Whether each module could be imported here (to rebuild values sent by the child)."""
    answers = []
    for name in modules:
        if name in sys.modules:
            answers.append(True)
            continue
        try:
            answers.append(importlib.util.find_spec(name) is not None)
        except (ImportError, ValueError, AttributeError):
            answers.append(False)
    return answers


# -- exceptions ---------------------------------------------------------------------


class ParentTraceback(Exception):
    """The parent's own traceback of an exception raised in a callback, relayed by the child.

    It is the cause of the exception a call raises when a callback it made
    failed: the printed traceback shows the parent's frames, then the child's.
    """

    def __str__(self) -> str:
        return "\n\nTraceback in the parent:\n" + str(self.args[0]).rstrip() if self.args else ""


_CHILD_PARENT_TRACEBACK = ("_spawnproxy_child.serve", "ParentTraceback")
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


def unloadable_request(exc: BaseException) -> tuple[Any, ...]:
    """The error, encoded for the child, of a request of its whose operands cannot be loaded here.

    The child's code gets the load error with its own type (an `AttributeError`, an
    `ImportError`, ...); the traceback it carries says that the request did not run.
    """
    module, qualname, message, data, text = encode_exception(exc)
    text = f"an argument the child sent cannot be loaded in the parent; the request did not run\n{text}"
    return (module, qualname, message, data, text)


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
            # The child's own error about a request it could not load (see _childcodec.unloadable).
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


# -- signatures ----------------------------------------------------------------------


class _RemoteText:
    """Stands for a default value or an annotation that only the child has; shows its text."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text


def rebuild_signature(encoded: Any) -> inspect.Signature | None:
    if encoded is None:
        return None
    params, ret = encoded
    parameters = []
    for name, kind, default, annotation in params:
        if default is None:
            value: Any = inspect.Parameter.empty
        elif default[0] == "value":
            value = default[1]
        else:
            value = _RemoteText(default[1])
        parameters.append(
            inspect.Parameter(
                name,
                inspect._ParameterKind(kind),
                default=value,
                annotation=inspect.Parameter.empty if annotation is None else _RemoteText(annotation),
            )
        )
    return inspect.Signature(parameters, return_annotation=inspect.Signature.empty if ret is None else _RemoteText(ret))


# -- what a detached daemon's starter hands its supervisor (`_detach`): one Python on both ends --


def dumps_with_dill(obj: Any) -> bytes:
    """`obj` pickled after its tag, `P`; or, where only dill can pickle it, after `D`."""
    try:
        return protocol.TAG_PICKLE + dumps(obj)
    except Exception:
        import dill

        return protocol.TAG_DILL + bytes(dill.dumps(obj))


def loads_with_dill(data: bytes) -> Any:
    """What `dumps_with_dill` made."""
    if data[:1] == protocol.TAG_DILL:
        import dill

        return dill.loads(data[1:])
    return decode(data[:1], data[1:])
