"""Parent-side serialization: with `_serialize_errors`, the one place that knows pickle, dill and tblib.

Requests are pickled with the standard library (protocol 5).  A proxy among
the operands travels as a reference to the object it stands for (its type
carries the marker `_spawnproxy_ref_`); what pickle refuses goes through dill,
but only to a child of the parent's own Python version, because dill's code
objects do not carry over to another one.  Frames the child sends are loaded
here (`decode`); when that fails, `_serialize_errors.message_head` reads
their header alone.  Exceptions across the wire are in `_serialize_errors`.

Uses `_child.protocol`, `_child.buffers` and `_errors`.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._child import protocol
from ._child.buffers import BUFFER_TYPES, buffer_taker, out_of_band, split_buffers
from ._errors import SerializationError

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
        _local, oid, _callable, _methods, _truthy = pid
        exported.append(oid)
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
    call's usual ones): then nothing from __main__ needs looking for either.  (For a NESTED
    request the operator's name comes first, for a REPLY the payload: both are looked at alike.)"""
    for item in message[protocol.REQUEST_OPERANDS :]:
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
    for item in message[protocol.REQUEST_OPERANDS :]:
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
    for item in message[protocol.REQUEST_OPERANDS :]:
        kind = type(item)
        if kind is tuple:
            item = tuple(out_of_band(x) for x in item)
        elif kind is dict:
            item = {key: out_of_band(x) for key, x in item.items()}
        else:
            item = out_of_band(item)
        swapped.append(item)
    return message[: protocol.REQUEST_OPERANDS] + tuple(swapped)


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


# For modules that may not import pickle: the hot paths' plain pickles (a call through
# these names costs what pickle's own does), and the type of an out-of-band buffer.
plain_dumps = pickle.dumps
loads = pickle.loads
PickleBuffer = pickle.PickleBuffer
