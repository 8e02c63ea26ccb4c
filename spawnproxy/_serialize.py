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
import pickle
import sys
from collections.abc import Callable, Sequence
from typing import Any

import tblib

from . import _wire
from ._errors import RemoteError, SerializationError

PROTOCOL = 5
_MAIN = b"__main__"
_SCAN_LIMIT = 1 << 20


class NeedsReferences(SerializationError):
    """A proxy met by plain pickle: the encoder pickles again with reference support.

    Anywhere else (pickling a proxy to a file, say) it reaches the user as the
    SerializationError it is: a proxy only travels as an argument to its own child.
    """


def _ref_id(obj: Any, owner: object) -> tuple[str, Any] | None:
    marker = getattr(type(obj), "_spawnproxy_ref_", None)
    if marker is None:
        return None
    obj_owner, target = marker(obj)
    if obj_owner is not owner:
        raise SerializationError("a proxy of another child cannot be sent to this one; pass a value instead")
    return ("ref", target)


class _RefPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, owner: object, buffer_callback: Any = None) -> None:
        super().__init__(file, PROTOCOL, buffer_callback=buffer_callback)
        self._owner = owner

    def persistent_id(self, obj: Any) -> tuple[str, Any] | None:  # type: ignore[override]
        return _ref_id(obj, self._owner)


_BUFFER_TYPES = _wire._BUFFER_TYPES


def _big_buffers_out_of_band(message: tuple[Any, ...]) -> tuple[Any, ...]:
    """Swap the large buffers among a request's operands (and their args and kwargs) for stand-ins
    that send them out of band; nested deeper, they travel in the pickle."""
    for item in message[3:]:
        kind = type(item)
        if (
            kind in _BUFFER_TYPES
            or (kind is tuple and any(type(x) in _BUFFER_TYPES for x in item))
            or (kind is dict and any(type(x) in _BUFFER_TYPES for x in item.values()))
        ):
            break
    else:
        return message
    swapped = []
    for item in message[3:]:
        kind = type(item)
        if kind is tuple:
            item = tuple(_wire.out_of_band(x) for x in item)
        elif kind is dict:
            item = {key: _wire.out_of_band(x) for key, x in item.items()}
        else:
            item = _wire.out_of_band(item)
        swapped.append(item)
    return message[:3] + tuple(swapped)


class Encoder:
    """Encode the requests sent to one child."""

    def __init__(self, owner: object, child_version: tuple[int, ...]) -> None:
        self._owner = owner
        self._child_version = tuple(child_version[:2])

    def encode(
        self, message: tuple[Any, ...], operands: Callable[[], Sequence[tuple[str, Any]]]
    ) -> tuple[bytes, bytes, list[pickle.PickleBuffer]]:
        """Return (tag, payload, out-of-band buffers); `operands` names the parts for error messages."""
        buffers: list[pickle.PickleBuffer] = []
        message = _big_buffers_out_of_band(message)
        try:
            data = pickle.dumps(message, PROTOCOL, buffer_callback=_wire.buffer_taker(buffers))
            tag = _wire.TAG_PICKLE
        except NeedsReferences:
            del buffers[:]
            try:
                buf = io.BytesIO()
                _RefPickler(buf, self._owner, _wire.buffer_taker(buffers)).dump(message)
            except SerializationError:
                raise
            except Exception as exc:
                return self._encode_slow(message, operands, exc)
            data, tag = buf.getvalue(), b"R"
        except Exception as exc:
            return self._encode_slow(message, operands, exc)
        if len(data) < _SCAN_LIMIT and _MAIN in data:
            # Something defined in the parent's __main__: pickle names it, but the
            # child's __main__ is not the parent's.  dill carries it by value.  (Large
            # payloads are not scanned: that would cost more than sending them.)
            return self._encode_slow(message, operands, None)
        return tag, data, buffers

    def _encode_slow(
        self,
        message: tuple[Any, ...],
        operands: Callable[[], Sequence[tuple[str, Any]]],
        pickle_error: Exception | None,
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
            def persistent_id(self, obj: Any) -> tuple[str, Any] | None:
                return _ref_id(obj, owner)

        try:
            buf = io.BytesIO()
            _DillRefPickler(buf, protocol=PROTOCOL, recurse=True).dump(message)
            return _wire.TAG_DILL, buf.getvalue(), []
        except SerializationError:
            raise
        except Exception as exc:
            culprit, _ = self._find_culprit(operands(), exc)
            raise SerializationError(f"{culprit} cannot be serialized, not even by dill: {_describe(exc)}") from exc

    def _find_culprit(self, operands: Sequence[tuple[str, Any]], error: Exception | None) -> tuple[str, str]:
        """Name the first operand that pickle refuses (or that refers to the parent's __main__)."""
        for name, value in operands:
            try:
                buf = io.BytesIO()
                _RefPickler(buf, self._owner).dump(value)
            except SerializationError:
                raise
            except Exception as exc:
                return f"{name} ({_short_repr(value)})", f"pickle refuses it ({_describe(exc)})"
            if _MAIN in buf.getvalue():
                return f"{name} ({_short_repr(value)})", "it is defined in the parent's __main__"
        reason = "pickle refuses it" if error is None else f"pickle refuses it ({_describe(error)})"
        return "the request", reason


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


def decode(tag: bytes, payload: Any) -> Any:
    """Load a frame the child sent."""
    if tag == _wire.TAG_PICKLE:
        return pickle.loads(payload)
    if tag == _wire.TAG_BUFFERS:
        tag, data, buffers = _wire.split_buffers(payload)
        if tag == _wire.TAG_PICKLE:
            return pickle.loads(data, buffers=buffers)
    raise SerializationError(f"the child sent a frame with an unknown tag {tag!r}")


class _Placeholder:
    """Stands for every object of a frame that is read only for its header."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _Placeholder

    def persistent_load(self, pid: Any) -> Any:
        return None


def reply_id(tag: bytes, payload: Any) -> int | None:
    """The request id of a reply that `decode` could not load (its classes stubbed out), or None."""
    buffers = None
    if tag == _wire.TAG_BUFFERS:
        tag, payload, buffers = _wire.split_buffers(payload)
    if tag != _wire.TAG_PICKLE:
        return None
    try:
        message = _HeaderUnpickler(io.BytesIO(payload), buffers=buffers).load()
    except Exception:
        return None
    if type(message) is tuple and len(message) > 1 and message[0] == _wire.REPLY and type(message[1]) is int:
        return message[1]
    return None


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


def rebuild_exception(encoded: tuple[Any, ...]) -> BaseException:
    """Turn an exception encoded by the child into a local one with remote frames."""
    module, qualname, message, data, frames, text, cause, context = encoded
    exc: BaseException | None = None
    if data is not None:
        try:
            exc = pickle.loads(data)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
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
