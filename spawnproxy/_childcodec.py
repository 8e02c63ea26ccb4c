"""How the child encodes what it sends and decodes what it receives.

Shipped to the child as source: standard library only, CPython 3.8 syntax.
dill is imported only when a message needs it (it may be fetched from the
parent, see `_child.ParentFinder`); tblib is never needed here: a traceback
travels as plain frame data and the parent rebuilds it.
"""

import io
import pickle
import types

from . import _wire

PROTOCOL = 5
_PLAIN = frozenset([int, float, str, bool, type(None), bytes, complex])
# Results that always stay in the child: calling or reading them must run there.
_BY_REFERENCE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)
_OWN_FILES = "<spawnproxy-child:"
_STAND_INS = (_wire._OutOfBand, _wire._ViewOf)


class _Collector(pickle.Pickler):
    """A pickler that notes every module whose names the pickle refers to."""

    def __init__(self, file, buffer_callback=None):
        pickle.Pickler.__init__(self, file, PROTOCOL, buffer_callback=buffer_callback)
        self.modules = set()

    def reducer_override(self, obj):
        if type(obj) in _STAND_INS:
            return NotImplemented  # its reduction names only builtins
        if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
            module = getattr(obj, "__module__", None)
        else:
            module = getattr(type(obj), "__module__", None)
        if module:
            self.modules.add(module)
        return NotImplemented


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, data, resolve, buffers=None):
        pickle.Unpickler.__init__(self, io.BytesIO(data), buffers=buffers)
        self._resolve = resolve

    def persistent_load(self, pid):
        return self._resolve(pid)


class Codec:
    """Encode replies and decode requests for one child."""

    def __init__(self, resolve_ref, ask_importable, import_dill):
        self._resolve_ref = resolve_ref  # ("ref", target) -> object
        self._ask_importable = ask_importable  # [module names] -> [bool]
        self._import_dill = import_dill  # () -> the dill module
        self._importable = {"builtins": True, "copyreg": True, "_codecs": True}
        self._type_keys = {}  # type -> key the parent caches its info under
        self._dill_unpickler = None

    # -- decoding -------------------------------------------------------------

    def loads(self, tag, payload):
        if tag == _wire.TAG_PICKLE:
            return pickle.loads(payload)
        if tag == _wire.TAG_BUFFERS:
            tag, payload, buffers = _wire.split_buffers(payload)
            if tag == _wire.TAG_PICKLE:
                return pickle.loads(payload, buffers=buffers)
            return _RefUnpickler(payload, self._resolve_ref, buffers).load()
        if tag == _wire.TAG_DILL:
            dill = self._import_dill()
            resolve = self._resolve_ref

            class _DillRefUnpickler(dill.Unpickler):
                def persistent_load(self, pid):
                    return resolve(pid)

            return _DillRefUnpickler(io.BytesIO(payload)).load()
        if tag == b"R":
            return _RefUnpickler(payload, self._resolve_ref).load()
        raise ValueError("unknown frame tag %r" % (tag,))

    # -- encoding -------------------------------------------------------------

    def dumps(self, message):
        return _wire.TAG_PICKLE, pickle.dumps(message, PROTOCOL)

    def by_value(self, value):
        """Return the pickle of `value` if the parent can rebuild it, else None."""
        if isinstance(value, _BY_REFERENCE):
            return None
        return self._checked_pickle(value, value)

    def reply_by_value(self, rid, value):
        """Return (pickle, out-of-band buffers) of a reply carrying `value`, or None (see by_value)."""
        if isinstance(value, _BY_REFERENCE):
            return None
        buffers = []
        data = self._checked_pickle(value, (_wire.REPLY, rid, _wire.VALUE, _wire.out_of_band(value)), buffers)
        return None if data is None else (data, buffers)

    def _checked_pickle(self, value, message, buffers=None):
        if type(value) in _PLAIN:
            if buffers is None or message[3] is value:
                return pickle.dumps(message, PROTOCOL)
            return pickle.dumps(message, PROTOCOL, buffer_callback=_wire.buffer_taker(buffers))
        buf = io.BytesIO()
        collector = _Collector(buf, None if buffers is None else _wire.buffer_taker(buffers))
        try:
            collector.dump(message)
        except Exception:
            return None
        if not self.parent_can_import(collector.modules):
            return None
        return buf.getvalue()

    def parent_can_import(self, modules):
        known = self._importable
        unknown = [m for m in modules if m not in known]
        if unknown:
            for name, ok in zip(unknown, self._ask_importable(unknown)):
                known[name] = ok
        return all(known[m] for m in modules)

    def type_info(self, obj):
        """Return (key, info): info is None when the parent already has it."""
        tp = type(obj)
        key = self._type_keys.get(tp)
        if key is not None:
            return key, None
        key = len(self._type_keys) + 1
        self._type_keys[tp] = key
        return key, (tp.__module__, tp.__qualname__, method_names(tp), callable(obj))

    def encode_exception(self, exc, depth=0):
        """Encode an exception as plain data the parent can rebuild."""
        import traceback  # not needed before the first exception

        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_FILES):
            tb = tb.tb_next
        frames = []
        for frame, lineno in traceback.walk_tb(tb):
            code = frame.f_code
            frames.append((code.co_filename, code.co_name, lineno, frame.f_globals.get("__name__", "?")))
        try:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except Exception as err:  # a broken __str__ must not hide the error
            text = "%s (its traceback could not be formatted: %r)\n" % (type(exc).__name__, err)
        try:
            message = str(exc)
        except Exception:
            message = "<str() of the exception failed>"
        data = None
        try:
            data = self.by_value(exc)
        except Exception:
            data = None
        cause = context = None
        if depth < 8:
            if exc.__cause__ is not None:
                cause = self.encode_exception(exc.__cause__, depth + 1)
            elif exc.__context__ is not None and not exc.__suppress_context__:
                context = self.encode_exception(exc.__context__, depth + 1)
        tp = type(exc)
        return (tp.__module__, tp.__qualname__, message, data, frames, text, cause, context)


def method_names(tp):
    """Names of the callable attributes a type defines (dunders left out)."""
    names = set()
    try:
        mro = tp.__mro__
    except AttributeError:
        return ()
    for klass in mro:
        for name, value in list(vars(klass).items()):
            if name.startswith("__") or isinstance(value, type):
                continue
            if callable(value) or isinstance(value, (staticmethod, classmethod)):
                names.add(name)
    return tuple(sorted(names))


def encode_signature(func):
    """Describe `func`'s signature as plain data; None if it has none."""
    import inspect  # costly to import: only when someone asks

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    params = []
    for p in sig.parameters.values():
        if p.default is p.empty:
            default = None
        elif type(p.default) in _PLAIN:
            default = ("value", p.default)
        else:
            default = ("repr", repr(p.default))
        annotation = None if p.annotation is p.empty else _annotation_text(p.annotation)
        params.append((p.name, int(p.kind), default, annotation))
    ret = None if sig.return_annotation is sig.empty else _annotation_text(sig.return_annotation)
    return params, ret


def _annotation_text(annotation):
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        if annotation.__module__ == "builtins":
            return annotation.__qualname__
        return annotation.__module__ + "." + annotation.__qualname__
    return repr(annotation).replace("typing.", "")
