"""How the child encodes what it sends and decodes what it receives.

Shipped to the child as source: standard library only, CPython 3.8 syntax.
Uses `protocol`, `buffers` and `heads` (what a frame that failed to load
was).  dill is imported only when a message needs it (it may be fetched from
the parent, see `parent.ParentFinder`); tblib is never needed here: a
traceback travels as plain frame data and the parent rebuilds it.
"""

import io
import pickle
import types

from . import protocol
from .buffers import OutOfBand, ViewOf, buffer_taker, out_of_band, split_buffers
from .heads import unloadable_answer

PROTOCOL = 5
# Names read on every reply, bound here: a module attribute costs a lookup each time.
_BIG_FRAME, _TAG_PICKLE, _REPLY, _VALUE = protocol.BIG_FRAME, protocol.TAG_PICKLE, protocol.REPLY, protocol.VALUE
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
_STAND_INS = (OutOfBand, ViewOf)


class NeedsRefs(Exception):
    """Raised by pickling an object that only travels as a persistent id (a parent's object)."""


class AsRef(object):
    """Marks a value to be sent by reference: the parent gets a proxy of it."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce_ex__(self, protocol):
        raise NeedsRefs("sent by reference")


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


class _RefCollector(_Collector):
    """A collector that also writes persistent ids: the parent's objects, and values marked AsRef.

    A separate class because a Python-level persistent_id costs a call for
    every object pickled, even an int: only messages that need it pay for it.
    """

    def __init__(self, file, ref, buffer_callback=None):
        _Collector.__init__(self, file, buffer_callback)
        self._ref = ref  # obj -> (oid, type key, type info)

    def persistent_id(self, obj):
        tp = type(obj)
        if tp is AsRef:
            return ("ref",) + tuple(self._ref(obj.obj))
        if getattr(tp, "_sp_parent_", False):
            return ("local", obj._sp_target)
        return None


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, data, resolve, buffers=None):
        pickle.Unpickler.__init__(self, io.BytesIO(data), buffers=buffers)
        self._resolve = resolve

    def persistent_load(self, pid):
        return self._resolve(pid)


class Codec:
    """Encode replies and decode requests for one child."""

    def __init__(self, resolve_ref, ask_importable, import_dill, ref):
        self._resolve_ref = resolve_ref  # a persistent id ("ref"/"local", ...) -> object
        self._ref = ref  # obj -> (oid, type key, type info), counted in the child's table
        self._ask_importable = ask_importable  # [module names] -> [bool]
        self._import_dill = import_dill  # () -> the dill module
        self._importable = {"builtins": True, "copyreg": True, "_codecs": True}
        self._type_keys = {}  # type -> key the parent caches its info under
        self._told = set()  # the keys whose info the parent has been sent
        self._dill_unpickler = None
        # Why the last result refused by _checked_pickle cannot go by value: the modules its
        # pickle names that the parent cannot import (None: another reason).
        self.refused = None

    # -- decoding -------------------------------------------------------------

    def loads(self, tag, payload):
        if tag == protocol.TAG_PICKLE:
            return pickle.loads(payload)
        if tag == protocol.TAG_BUFFERS:
            tag, payload, buffers = split_buffers(payload)
            if tag == protocol.TAG_PICKLE:
                return pickle.loads(payload, buffers=buffers)
            return _RefUnpickler(payload, self._resolve_ref, buffers).load()
        if tag == protocol.TAG_DILL:
            dill = self._import_dill()
            resolve = self._resolve_ref

            class _DillRefUnpickler(dill.Unpickler):
                def persistent_load(self, pid):
                    return resolve(pid)

            return _DillRefUnpickler(io.BytesIO(payload)).load()
        if tag == protocol.TAG_REFS:
            return _RefUnpickler(payload, self._resolve_ref).load()
        raise ValueError("unknown frame tag %r" % (tag,))

    def unloadable(self, tag, payload, exc):
        """The ERROR answer that stands for a frame whose loading raised `exc`; None if there is none.

        For a request of the parent's (a positive id) it is the answer to send
        it: the operands cannot be loaded here, the call does not run.  For the
        parent's answer to a request of ours (a negative id) it is that answer,
        raised where the request was made.
        """
        return unloadable_answer(tag, payload, exc, self._resolve_ref, self.encode_exception)

    # -- encoding -------------------------------------------------------------

    def dumps(self, message):
        return protocol.TAG_PICKLE, pickle.dumps(message, PROTOCOL)

    def by_value(self, value):
        """Return the pickle of `value` if the parent can rebuild it, else None."""
        if isinstance(value, _BY_REFERENCE):
            return None
        if type(value) in _PLAIN:
            return pickle.dumps(value, PROTOCOL)
        found = self._checked_pickle(value)
        return None if found is None else found[1]

    def reply_by_value(self, rid, value):
        """Return (tag, pickle, out-of-band buffers) of a reply carrying `value`, or None (see by_value)."""
        kind = type(value)
        if kind in _PLAIN and (kind is not bytes or len(value) < _BIG_FRAME):
            return _TAG_PICKLE, pickle.dumps((_REPLY, rid, _VALUE, value), PROTOCOL), None
        if isinstance(value, _BY_REFERENCE):
            self.refused = None
            return None
        return self._checked_pickle((protocol.REPLY, rid, protocol.VALUE, out_of_band(value)), [])

    def dumps_values(self, make, values):
        """Return (tag, pickle, None) of `make(values)`: each value by value if the parent can
        rebuild it, else by reference (the parent gets a proxy)."""
        found = self._checked_pickle(make(values))
        if found is None:
            values = [
                v if not isinstance(v, _BY_REFERENCE) and self.by_value(v) is not None else AsRef(v) for v in values
            ]
            found = self._checked_pickle(make(values))
            if found is None:
                raise TypeError("the values cannot be sent to the parent, not even by reference")
        return found

    def _checked_pickle(self, message, buffers=None):
        """(tag, pickle, buffers) of a message whose modules the parent can import, or None.

        With a `buffers` list, large buffers (out-of-band stand-ins) are taken into it.
        """
        taker = None if buffers is None else buffer_taker(buffers)
        buf = io.BytesIO()
        collector = _Collector(buf, taker)
        tag = protocol.TAG_PICKLE
        try:
            collector.dump(message)
        except NeedsRefs:
            if buffers:
                del buffers[:]
            buf = io.BytesIO()
            collector = _RefCollector(buf, self._ref, taker)
            tag = protocol.TAG_REFS
            try:
                collector.dump(message)
            except Exception:
                self.refused = None
                return None
        except Exception:
            self.refused = None
            return None
        if not self.parent_can_import(collector.modules):
            known = self._importable
            self.refused = sorted(m for m in collector.modules if not known[m])
            return None
        return tag, buf.getvalue(), buffers

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
        if key is None:
            key = len(self._type_keys) + 1
            self._type_keys[tp] = key
        elif key in self._told:
            return key, None
        self._told.add(key)
        return key, (tp.__module__, tp.__qualname__, method_names(tp), callable(obj))

    def retell_types(self):
        """A message was lost (its lane closed): the types it described are described again."""
        self._told.clear()

    def encode_exception(self, exc, depth=0):
        """Encode an exception as plain data the parent can rebuild."""
        import traceback  # not needed before the first exception

        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_FILES):
            tb = tb.tb_next
        frames = []
        for frame, lineno in traceback.walk_tb(tb):
            code = frame.f_code
            if code.co_filename.startswith(_OWN_FILES):
                continue  # the machinery of a call to the parent, between the caller and its frames
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
