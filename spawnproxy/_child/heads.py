"""What a frame that failed to load was: its head read again with every global stubbed out.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax.  Uses `protocol` and `buffers`.  When a frame names what
this interpreter lacks (a class only the parent has, another version of a
package), `read_head` finds which request or answer it was and which global
failed; `unloadable_answer` makes the ERROR reply that fails that one call
(the child goes on).
"""

import io
import os
import pickle
import sys

from . import protocol
from .buffers import split_buffers

PROTOCOL = 5


class _Stub(object):
    """Stands for every global a frame names, when the frame is read again only for its head.

    It keeps what it was built from, so that the operand holding the global
    that failed to load can be found.
    """

    _sp_name = None

    def __init__(self, *args, **kwargs):
        self._sp_keep(args, kwargs)

    def _sp_keep(self, *parts):
        # Not set in __init__: a pickle may build the object without calling it (NEWOBJ).
        self.__dict__.setdefault("_sp_parts", []).extend(parts)

    def __setstate__(self, state):
        self._sp_keep(state)

    def __setitem__(self, key, value):
        self._sp_keep(key, value)

    def append(self, item):
        self._sp_keep(item)

    def extend(self, items):
        self._sp_keep(list(items))

    def add(self, item):
        self._sp_keep(item)


class _HeadUnpickler(pickle.Unpickler):
    """Loads a frame with every global stubbed out (nothing imported, nothing built)."""

    def __init__(self, file, buffers):
        pickle.Unpickler.__init__(self, file, buffers=buffers)
        self.events = []  # in the order of the frame: (module, name) of a global, (pid,) of a persistent id

    def find_class(self, module, name):
        self.events.append((module, name))
        return type("_Stub", (_Stub,), {"_sp_name": "%s.%s" % (module, name)})

    def persistent_load(self, pid):
        self.events.append((pid,))
        return None


def read_head(tag, payload):
    """(message with stubs for its globals, the global that cannot be loaded or None, the persistent
    ids of the parent's objects that the failed load never reached), or None."""
    buffers = None
    if tag == protocol.TAG_BUFFERS:
        tag, payload, buffers = split_buffers(payload)
    try:
        unpickler = _HeadUnpickler(io.BytesIO(payload), buffers)
        message = unpickler.load()
    except Exception:
        return None
    if (
        type(message) is not tuple
        or len(message) < 2
        or type(message[protocol.KIND]) is not int
        or type(message[protocol.ID]) is not int
    ):
        return None
    events = unpickler.events
    for i, event in enumerate(events):
        if len(event) == 2 and _lacks(*event):
            # The real load stopped at this global: the parent's objects named after it were never made.
            unresolved = [pid for (pid,) in (e for e in events[i:] if len(e) == 1) if pid[0] == "local"]
            return message, "%s.%s" % event, unresolved
    return message, None, []


def _lacks(module, name):
    """Whether this interpreter lacks the global `module.name` (without importing anything)."""
    obj = sys.modules.get(module)
    if obj is None:
        return True
    for part in name.split("."):
        obj = getattr(obj, part, _Stub)
        if obj is _Stub:
            return True
    return False


def _holds(value, culprit, depth=0):
    """Whether `value` (an operand read by _HeadUnpickler) holds the global `culprit`."""
    if depth > 50:
        return False
    if isinstance(value, type) and issubclass(value, _Stub):
        return value._sp_name == culprit
    if isinstance(value, _Stub):
        return type(value)._sp_name == culprit or _holds(value.__dict__.get("_sp_parts", ()), culprit, depth + 1)
    if isinstance(value, dict):
        return any(_holds(k, culprit, depth + 1) or _holds(v, culprit, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds(item, culprit, depth + 1) for item in value)
    return False


def _operand_label(op, operands, culprit):
    """Which operand of a request holds the global that cannot be loaded ("argument 1", ...)."""
    if culprit is not None and len(operands) == 3:
        # The operands of "call": (target, args, kwargs); "setattr": (target, name, value);
        # "op": (target, operator name, its operands).
        _, second, third = operands
        if op == "call" and type(second) is tuple and type(third) is dict:
            for i, value in enumerate(second):
                if _holds(value, culprit):
                    return "argument %d" % i
            for key, value in third.items():
                if _holds(value, culprit):
                    return "keyword argument %r" % (key,)
        elif op == "setattr":
            return "the value for attribute %r" % (second,)
        elif op == "op" and type(third) is tuple:
            return "the operand of %s" % (second,)
    return "an argument of %s" % (op,)


def _version_hint(culprit):
    """Why a global the parent has may be missing here: another version of its package."""
    if culprit is None:
        return ""
    top = culprit.split(".")[0]
    version = getattr(sys.modules.get(top), "__version__", None)
    if not isinstance(version, str):
        return ""
    if culprit.startswith("numpy._core"):
        return (
            "; numpy._core is where NumPy 2 keeps what NumPy 1 calls numpy.core: the parent has NumPy 2, "
            "the child NumPy %s. Send plain values (arr.tolist(), arr.tobytes()) or install NumPy 2 in the child"
            % version
        )
    return "; %s is %s in the child: the parent's version of it may name what this one lacks" % (top, version)


def encode_for_child(exc, culprit):
    """An exception raised here, encoded as the parent encodes its own (see parent.rebuild_parent_exception)."""
    try:
        data = pickle.dumps(exc, PROTOCOL)
    except Exception:
        data = None
    text = "the parent's answer cannot be loaded in the child: %s: %s%s\n" % (
        type(exc).__name__,
        exc,
        _version_hint(culprit),
    )
    tp = type(exc)
    return (tp.__module__, tp.__qualname__, str(exc), data, text)


def unloadable_answer(tag, payload, exc, resolve_ref, encode_exception):
    """The ERROR reply that stands for a frame whose loading raised `exc`; None if there is none
    (see `codec.Codec.unloadable`).  `resolve_ref` makes (and drops) a reference to each of
    the parent's objects the failed load never reached, so that the parent's count of it
    goes down; `encode_exception` encodes the child's error, the cause of the one sent."""
    head = read_head(tag, payload)
    if head is None:
        return None
    message, culprit, unresolved = head
    for pid in unresolved:
        # The parent counted each of its objects the frame names; those the failed load
        # never reached are let go of the way a reference to one is: by making and dropping it.
        resolve_ref(pid)
    kind, rid = message[protocol.KIND], message[protocol.ID]
    if kind == protocol.REPLY:
        return (protocol.REPLY, rid, protocol.ERROR, encode_for_child(exc, culprit))
    if kind == protocol.REQUEST:
        op, operands = message[protocol.OP], message[protocol.REQUEST_OPERANDS :]
    elif kind == protocol.NESTED:
        op, operands = message[protocol.NESTED_OP], message[protocol.NESTED_OPERANDS :]
    else:
        return None
    label = _operand_label(op, operands, culprit)
    what = label if culprit is None else "%s (%s)" % (label, culprit)
    text = "%s cannot be loaded in the child (pid %d, Python %s): %s: %s; the call did not run%s" % (
        what,
        os.getpid(),
        "%d.%d.%d" % sys.version_info[:3],
        type(exc).__name__,
        exc,
        _version_hint(culprit),
    )
    # The parent rebuilds it as its own SerializationError, with the child's error as its cause.
    error = ("spawnproxy", "SerializationError", text, None, [], text, encode_exception(exc), None)
    return (protocol.REPLY, rid, protocol.ERROR, error)
