"""The child side: start-up, the serve loop and the operations it runs.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax.  Requests run one at a time in the main thread, so that a
forwarded Ctrl-C (SIGINT) interrupts the call in progress.
"""

import math
import operator
import os
import sys
import threading

from . import _wire
from ._childcodec import Codec, encode_signature
from ._loader import load
from ._table import ObjectTable

_OPERATORS = {
    "str": str,
    "repr": repr,
    "format": format,
    "len": len,
    "hash": hash,
    "bool": bool,
    "contains": operator.contains,
    "getitem": operator.getitem,
    "setitem": operator.setitem,
    "delitem": operator.delitem,
    "iter": iter,
    "next": next,
    "reversed": reversed,
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": abs,
    "invert": operator.invert,
    "int": int,
    "float": float,
    "complex": complex,
    "index": operator.index,
    "bytes": bytes,
    "round": round,
    "trunc": math.trunc,
    "floor": math.floor,
    "ceil": math.ceil,
    "enter": lambda x: x.__enter__(),
    "exit": lambda x, *a: x.__exit__(*a),
    "divmod": divmod,
    "rdivmod": lambda x, y: divmod(y, x),
    "pow": pow,
    "rpow": lambda x, y: pow(y, x),
}
for _name in (
    "lt",
    "le",
    "eq",
    "ne",
    "gt",
    "ge",
    "add",
    "sub",
    "mul",
    "matmul",
    "truediv",
    "floordiv",
    "mod",
    "lshift",
    "rshift",
    "and",
    "or",
    "xor",
):
    _func = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    _OPERATORS[_name] = _func
    if _name not in ("lt", "le", "eq", "ne", "gt", "ge"):
        # Reflected forms: the remote object is the right operand.
        _OPERATORS["r" + _name] = (lambda f: lambda x, y: f(y, x))(_func)
        _OPERATORS["i" + _name] = getattr(operator, "i" + _name)
_OPERATORS["ipow"] = operator.ipow
_SCALARS = frozenset([str, int, bool, float, complex, bytes, type(None)])


class ParentFinder:
    """Import pure-Python packages the child lacks (dill) from the parent's copy.

    A meta path finder and loader by duck typing: importlib.abc costs the
    child's start-up 10 ms of imports.
    """

    def __init__(self, child, packages):
        self._child = child
        self._packages = packages

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in self._packages:
            return None
        found = self._child.request("source", fullname)
        if found is None:
            return None
        import importlib.util

        source, is_package = found
        spec = importlib.util.spec_from_loader(fullname, self, is_package=is_package)
        spec.loader_state = source
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        spec = module.__spec__
        module.__file__ = "<spawnproxy-parent:%s>" % spec.name
        exec(compile(spec.loader_state, module.__file__, "exec"), module.__dict__)


class Child:
    """Serve the parent's requests on one channel."""

    def __init__(self, channel):
        self.channel = channel
        self.table = ObjectTable()
        self.codec = Codec(self._resolve_ref, self._ask_importable, self._import_dill)
        self._ids = 0
        self.running = 0  # calls in progress (nested ones count too)
        self._replies = {}
        self._finder = None

    # -- the loop -------------------------------------------------------------

    def serve(self):
        recv, handle = self.channel.recv, self.handle
        while True:
            try:
                tag, payload = recv()
            except _wire.ChannelClosed:
                return
            handle(self.codec.loads(tag, payload))

    def handle(self, msg):
        kind = msg[0]
        if kind == _wire.REQUEST:
            self._run(msg[1], msg[2], msg[3:])
        elif kind == _wire.RELEASE:
            self.table.release(msg[1])
        elif kind == _wire.REPLY:
            self._replies[msg[1]] = msg

    def request(self, op, *operands):
        """Ask the parent something; serve its requests until the answer comes."""
        self._ids -= 1  # the child's request ids are negative: they never clash
        rid = self._ids
        self.channel.send(*self.codec.dumps((_wire.REQUEST, rid, op) + operands))
        while rid not in self._replies:
            try:
                tag, payload = self.channel.recv()
            except _wire.ChannelClosed:
                raise SystemExit(0) from None
            self.handle(self.codec.loads(tag, payload))
        reply = self._replies.pop(rid)
        if reply[2] == _wire.ERROR:
            raise RuntimeError("the parent could not answer %r: %s" % (op, reply[3]))
        return reply[3]

    def _run(self, rid, op, operands):
        codec = self.codec
        self.running += 1
        try:
            how, payload = OPS[op](self, *operands)
            if how == MAYBE:
                frame = codec.reply_by_value(rid, payload)
                if frame is None:
                    how, payload = _wire.REF, self.ref(payload)
                else:
                    how = None
        except (SystemExit, GeneratorExit):
            raise
        except BaseException as exc:
            how, payload = _wire.ERROR, codec.encode_exception(exc)
            exc = None
        finally:
            self.running -= 1
        try:
            if how is None:
                self.channel.send(_wire.TAG_PICKLE, frame[0], None, None, frame[1])
            else:
                self.channel.send(*codec.dumps((_wire.REPLY, rid, how, payload)))
        except _wire.ChannelClosed:
            raise SystemExit(0) from None
        except OSError as err:
            if getattr(err, "errno", None) == 32:  # EPIPE: the parent has gone
                raise SystemExit(0) from None
            raise

    # -- helpers ----------------------------------------------------------------

    def _resolve(self, target):
        if type(target) is int:
            obj = self.table.get(target)
            return obj, obj
        base = obj = self.table.get(target[0])
        for name in target[1:]:
            obj = getattr(obj, name)
        return base, obj

    def _resolve_ref(self, pid):
        return self._resolve(pid[1])[1]

    def _ask_importable(self, modules):
        return self.request("importable", modules)

    def _import_dill(self):
        try:
            import dill
        except ImportError:
            if self._finder is None:
                self._finder = ParentFinder(self, ("dill",))
                sys.meta_path.append(self._finder)
            import dill
        return dill

    def result(self, value, base, target):
        """Classify a result: the target itself, its base, or a value to send."""
        if value is target:
            return _wire.SAME, None
        if value is base:
            return _wire.BASE, None
        return MAYBE, value

    def ref(self, value):
        key, info = self.codec.type_info(value)
        return self.table.add(value), key, info


# Internal to the child: send by value if the parent can rebuild it, else by reference.
MAYBE = -1


# -- operations: each returns (how, payload) ------------------------------------


def op_getattr(child, target, name):
    base, obj = child._resolve(target)
    value = getattr(obj, name)
    if callable(value):
        # What is callable stays in the child: the parent reaches it by path,
        # so that calling it runs here (mod.lst.append(4) changes the child's list).
        return _wire.PATH, True
    return child.result(value, base, obj)


def op_attrinfo(child, target, name):
    value = getattr(child._resolve(target)[1], name)
    return _wire.VALUE, callable(value)


def op_setattr(child, target, name, value):
    setattr(child._resolve(target)[1], name, value)
    return _wire.VALUE, None


def op_delattr(child, target, name):
    delattr(child._resolve(target)[1], name)
    return _wire.VALUE, None


def op_call(child, target, args, kwargs):
    base, obj = child._resolve(target)
    return child.result(obj(*args, **kwargs), base, obj)


def op_operator(child, target, name, args):
    base, obj = child._resolve(target)
    value = _OPERATORS[name](obj, *args)
    if type(value) in _SCALARS:
        return _wire.VALUE, value
    return child.result(value, base, obj)


def op_dir(child, target):
    return _wire.VALUE, sorted(dir(child._resolve(target)[1]))


def op_signature(child, target):
    return _wire.VALUE, encode_signature(child._resolve(target)[1])


def op_load(child, definition):
    root = load(definition)
    oid = child.table.pin(root)
    key, info = child.codec.type_info(root)
    if isinstance(root, type(sys)):
        names = {name: callable(value) for name, value in list(vars(root).items())}
    else:
        names = {name: True for name in info[2]} if info else {}
        names.update((name, callable(value)) for name, value in getattr(root, "__dict__", {}).items())
    return _wire.VALUE, (oid, key, info, names)


def op_ping(child, value=None):
    return _wire.VALUE, value


def op_stats(child):
    return _wire.VALUE, {"objects": len(child.table), "threads": threading.active_count()}


OPS = {
    "getattr": op_getattr,
    "attrinfo": op_attrinfo,
    "setattr": op_setattr,
    "delattr": op_delattr,
    "call": op_call,
    "op": op_operator,
    "dir": op_dir,
    "signature": op_signature,
    "load": op_load,
    "ping": op_ping,
    "stats": op_stats,
}


# -- start-up ---------------------------------------------------------------------


def _watch_parent(lifeline_fd):
    """End the child as soon as the parent is gone, whatever the main thread does."""
    try:
        while os.read(lifeline_fd, 4096):
            pass
    except OSError:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)


def _forward_sigint_to_calls(child):
    """A SIGINT the parent forwards interrupts the call in progress, and nothing else."""
    import signal

    def on_sigint(signum, frame):
        if child.running:
            raise KeyboardInterrupt
        # Between calls (the call ended as Ctrl-C was pressed): nothing to interrupt.

    signal.signal(signal.SIGINT, on_sigint)


def _arm_deathline(fd):
    """Have the kernel SIGKILL this process when the parent is gone, even if no thread here can run.

    The lifeline thread needs the GIL, which a call stuck in C may hold for ever.
    Linux can instead signal the owner of a pipe when its write end closes (O_ASYNC
    with F_SETSIG); the parent closes that end only once this process has ended,
    or by dying.
    """
    os.set_inheritable(fd, False)
    try:
        import fcntl
        import signal

        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGKILL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux: the lifeline thread is the only watchdog


def main(fd, lifeline_fd, bundle):
    os.set_inheritable(fd, False)
    os.set_inheritable(lifeline_fd, False)
    if bundle.get("deathline") is not None:
        _arm_deathline(bundle["deathline"])
    threading.Thread(target=_watch_parent, args=(lifeline_fd,), name="spawnproxy-lifeline", daemon=True).start()
    try:
        import faulthandler

        # A crash (segfault, abort) prints the Python stack on stderr, whose last lines the
        # parent's DaemonDiedError quotes.
        faulthandler.enable(all_threads=False)
    except (ImportError, RuntimeError, ValueError):
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            # Lines reach the parent as they are written, even without PYTHONUNBUFFERED.
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    if bundle.get("sys_path") is not None:
        parent_path = bundle["sys_path"]
        sys.path[:] = parent_path + [p for p in sys.path if p not in parent_path]
    import socket

    channel = _wire.Channel(socket.socket(fileno=fd))
    child = Child(channel)
    _forward_sigint_to_calls(child)
    info = {
        "pid": os.getpid(),
        "version": tuple(sys.version_info[:3]),
        "executable": sys.executable,
        "implementation": sys.implementation.name,
    }
    channel.send(*child.codec.dumps(("hello", info)))
    try:
        child.serve()
    finally:
        channel.close()
