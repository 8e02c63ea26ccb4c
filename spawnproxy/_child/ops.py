"""The operations a child serves: what the parent's requests ask for, by name.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax.  Uses `protocol`, `codec`, `loader` and `operators`; each
operation takes the `serve.Child` that serves the request (its public
`resolve`, `result`, `ref`, `table` and `codec`) and the request's operands,
and returns (how, payload): a `protocol` HOW, or MAYBE / BATCH, which the
serve loop turns into one.  `OPS` is the table a plain child serves; a
served daemon's clients get a table of their own (`network.CLIENT_OPS`).
"""

import os
import pickle
import sys
import threading
import time

from . import protocol
from .codec import encode_signature
from .loader import load
from .operators import OPERATORS as _OPERATORS

_PROTOCOL = 5
_SCALARS = frozenset([str, int, bool, float, complex, bytes, type(None)])

# Internal to the child: send by value if the parent can rebuild it, else by reference.
MAYBE = -1
# Internal: a batch of items (see op_batch), each by value or by reference.
BATCH = -2
# A batch ends after this many seconds, so that a slow iterator hands out what it made.
BATCH_SECONDS = 0.01


# -- operations: each returns (how, payload) ------------------------------------


def op_getattr(child, target, name):
    base, obj = child.resolve(target)
    value = getattr(obj, name)
    if callable(value):
        # What is callable stays in the child: the parent reaches it by path,
        # so that calling it runs here (mod.lst.append(4) changes the child's list).
        return protocol.PATH, True
    return child.result(value, base, obj)


def op_attrinfo(child, target, name):
    _, obj = child.resolve(target)
    value = getattr(obj, name)
    return protocol.VALUE, callable(value)


def op_setattr(child, target, name, value):
    _, obj = child.resolve(target)
    setattr(obj, name, value)
    return protocol.VALUE, None


def op_delattr(child, target, name):
    _, obj = child.resolve(target)
    delattr(obj, name)
    return protocol.VALUE, None


def op_call(child, target, args, kwargs):
    # hot path: inlines Child.resolve and Child.result (tests/test_fastpaths.py proves they agree)
    if type(target) is int:
        base = obj = child.table.get(target)
    else:
        # Indexes, not `oid, *path = target`: that builds a list for every call.
        base = obj = child.table.get(target[0])
        for name in target[1:]:
            obj = getattr(obj, name)
    value = obj(*args, **kwargs)
    if value is obj:
        return protocol.SAME, None
    if value is base:
        return protocol.BASE, None
    return MAYBE, value


def op_operator(child, target, name, args):
    base, obj = child.resolve(target)
    value = _OPERATORS[name](obj, *args)
    if type(value) in _SCALARS:
        return protocol.VALUE, value
    return child.result(value, base, obj)


def op_dir(child, target):
    _, obj = child.resolve(target)
    return protocol.VALUE, sorted(dir(obj))


def op_signature(child, target):
    _, obj = child.resolve(target)
    return protocol.VALUE, encode_signature(obj)


# -- what IPython and pydoc ask of an object (see the parent's `_ipython`): each one round trip


def op_source(child, target):
    """(type, file, source) of the target: its type's dotted name, the file and source `inspect`
    finds here, each None where it finds none.

    An object that has none of its own is described by its class, as IPython's
    `??` does for a local instance.
    """
    import inspect

    _, obj = child.resolve(target)

    def found(how):
        for what in (obj, type(obj)):
            try:
                return how(what)
            except TypeError:  # not a module, class, function...: try its class
                continue
            except OSError:  # no source file
                return None
        return None

    kind = "%s.%s" % (type(obj).__module__, type(obj).__qualname__)
    return protocol.VALUE, (kind, found(inspect.getabsfile), found(inspect.getsource))


def op_help(child, target, title):
    """What `help()` of the target would print here: pydoc's plain text (no terminal bold)."""
    import pydoc

    _, obj = child.resolve(target)
    return protocol.VALUE, pydoc.render_doc(obj, title, renderer=pydoc.plaintext)


def op_hooks(child, target, canary, names):
    """Which of `names` the target has as callables (IPython's `_repr_html_`, ...), in one round trip.

    None, as IPython decides for a local object, for a class and for an object
    that answers `canary`, an attribute no object has: it claims every name.
    """
    _, obj = child.resolve(target)

    def get(name):
        try:
            return getattr(obj, name, None)
        except Exception:  # a broken attribute is no hook, as for IPython locally
            return None

    if isinstance(obj, type) or get(canary) is not None:
        return protocol.VALUE, []
    return protocol.VALUE, [name for name in names if callable(get(name))]


def op_chdir(child, path):
    """Make `path` the working directory, before the definition loads: a path of this machine."""
    os.chdir(path)
    return protocol.VALUE, os.getcwd()


def op_load(child, definition):
    root = load(definition)
    oid = child.table.pin(root)
    key, info = child.codec.type_info(root)
    if isinstance(root, type(sys)):
        names = {name: callable(value) for name, value in list(vars(root).items())}
    else:
        names = {name: True for name in info[protocol.TYPE_METHODS]} if info else {}
        names.update((name, callable(value)) for name, value in getattr(root, "__dict__", {}).items())
    return protocol.VALUE, (oid, key, info, names)


def op_batch(child, target, n, call_iter):
    """Take up to `n` items from an iterator (iter(target) if `call_iter`): (items, end, ref).

    `end` is None while items may follow, True at the end, or the encoded
    exception the iterator raised after the items; `ref` is the reference of
    the iterator iter() made when it is not the target itself, else None.
    """
    _, obj = child.resolve(target)
    it, ref = obj, None
    if call_iter:
        it = iter(obj)
        if it is not obj:
            ref = child.ref(it)
    step = getattr(it, "__next__", None)
    if step is None:
        raise TypeError("'%s' object is not an iterator" % type(it).__name__)
    items = []
    append = items.append
    clock = time.monotonic
    limit = clock() + BATCH_SECONDS
    end = None
    try:
        while len(items) < n:
            append(step())
            if clock() > limit:
                break
    except StopIteration:
        end = True
    except SystemExit:
        raise
    except BaseException as exc:
        end = child.codec.encode_exception(exc)
    return BATCH, (items, end, ref)


def op_tasks(child, fn, items, spread, kwargs):
    """Run a chunk of a pool's tasks, in order, until one raises: (results, end, None), as a BATCH.

    `fn` is a target (a path from the root: a dotted name) or a callable sent
    over; each task is fn(*item, **kwargs) if `spread`, else fn(item).  `end`
    is None, or the encoded exception of the task after the results (the rest
    of the chunk does not run: `map` stops there, as ProcessPoolExecutor's does).
    """
    if type(fn) is int or type(fn) is tuple:
        _, fn = child.resolve(fn)
    results = []
    append = results.append
    end = None
    try:
        if not spread:
            for item in items:
                append(fn(item))
        elif kwargs:
            for item in items:
                append(fn(*item, **kwargs))
        else:
            for item in items:
                append(fn(*item))
    except SystemExit:
        raise
    except BaseException as exc:
        end = child.codec.encode_exception(exc)
    return BATCH, (results, end, None)


def op_close(child, target):
    _, obj = child.resolve(target)
    close = getattr(obj, "close", None)
    if close is not None:
        close()
    return protocol.VALUE, None


def op_obtain(child, target):
    """A copy of the target, pickled here for the parent to load: (True, pickle) or (False, why)."""
    _, obj = child.resolve(target)
    try:
        return protocol.VALUE, (True, pickle.dumps(obj, _PROTOCOL))
    except Exception as exc:
        return protocol.VALUE, (False, "%s: %s" % (type(exc).__name__, exc))


def op_ping(child, value=None):
    return protocol.VALUE, value


def op_stats(child):
    return protocol.VALUE, {"objects": len(child.table), "threads": threading.active_count()}


def op_listen(child, config):
    """Serve network clients: the network side (`network`) is loaded now, as few children listen."""
    network = sys.modules[__package__].load("network")  # with the modules it needs (see _bootstrap)
    return network.listen(child, config)


OPS = {
    "getattr": op_getattr,
    "attrinfo": op_attrinfo,
    "setattr": op_setattr,
    "delattr": op_delattr,
    "call": op_call,
    "op": op_operator,
    "dir": op_dir,
    "signature": op_signature,
    "source": op_source,
    "help": op_help,
    "hooks": op_hooks,
    "chdir": op_chdir,
    "load": op_load,
    "batch": op_batch,
    "tasks": op_tasks,
    "close": op_close,
    "ping": op_ping,
    "obtain": op_obtain,
    "stats": op_stats,
    "listen": op_listen,
}
