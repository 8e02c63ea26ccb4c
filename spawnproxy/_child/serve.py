"""The child side: start-up, the serve loop and the operations it runs.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax.  Requests run one at a time in the main thread, so that a
forwarded Ctrl-C (SIGINT) interrupts the call in progress.
"""

import collections
import itertools
import os
import pickle
import socket
import sys
import threading
import time
from _weakrefset import WeakSet  # what threading uses: weakref itself costs the start-up 0.4 ms

from . import protocol
from .channel import Channel, ChannelClosed, LaneClosed
from .codec import Codec, NeedsRefs, encode_signature
from .loader import load
from .operators import OPERATORS as _OPERATORS
from .table import ObjectTable

_PROTOCOL = 5
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


class ParentTraceback(Exception):
    """The traceback of an exception raised in the parent: the cause of its copy here."""

    def __init__(self, text):
        Exception.__init__(self, text)
        self.text = text

    def __str__(self):
        return "\n\nTraceback in the parent:\n" + self.text.rstrip()


class ParentError(Exception):
    """An exception raised in the parent whose type cannot be rebuilt in the child."""

    def __init__(self, parent_type, message):
        Exception.__init__(self, "%s: %s" % (parent_type, message))
        self.parent_type = parent_type
        self.parent_message = message


def rebuild_parent_exception(encoded):
    """Turn an exception the parent encoded (see spawnproxy._serialize) into a local one."""
    module, qualname, message, data, text = encoded
    exc = None
    if data is not None:
        try:
            exc = pickle.loads(data)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = ParentError(qualname if module == "builtins" else module + "." + qualname, message)
    exc.__cause__ = ParentTraceback(text)
    exc.__suppress_context__ = True
    return exc


class ParentRef(object):
    """An object of the parent's, passed with spawnproxy.by_ref: using it runs code there.

    Attribute reads and operators are a round trip each (methods the parent
    listed are reached by path, so `obj.method(x)` is one).  Identity is
    local: references to the same parent object compare equal and hash alike.
    """

    _sp_parent_ = True
    __slots__ = ("__weakref__", "_sp_child", "_sp_names", "_sp_owner", "_sp_target", "_sp_truthy")

    def __init__(self, child, target, names, owner, truthy):
        setter = object.__setattr__
        setter(self, "_sp_child", child)
        setter(self, "_sp_target", target)
        setter(self, "_sp_names", names)
        setter(self, "_sp_owner", owner)  # None: this reference holds a count in the parent
        setter(self, "_sp_truthy", truthy)

    def __del__(self):
        try:
            if self._sp_owner is None:
                # Never sends: the release rides along the child's next message, or goes
                # with the releaser thread's (_release_loop) if none comes soon.
                self._sp_child.releases.append(self._sp_target)
        except AttributeError:
            pass

    def __getattr__(self, name):
        if name.startswith("_sp_"):
            raise AttributeError(name)
        target = self._sp_target
        if name in self._sp_names:
            path = (target, name) if type(target) is int else target + (name,)
            return CallableParentRef(self._sp_child, path, (), self._sp_owner or self, None)
        return self._sp_child.request("getattr", target, name)

    def __setattr__(self, name, value):
        self._sp_child.request("setattr", self._sp_target, name, value)

    def __delattr__(self, name):
        self._sp_child.request("delattr", self._sp_target, name)

    def __dir__(self):
        return self._sp_child.request("dir", self._sp_target)

    def __eq__(self, other):
        return getattr(type(other), "_sp_parent_", False) and other._sp_target == self._sp_target

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(("spawnproxy-parent", self._sp_target))

    def __bool__(self):
        if self._sp_truthy:
            return True
        return self._sp_op("bool")

    def __reduce_ex__(self, protocol):
        raise NeedsRefs("an object of the parent's only travels back to the parent")

    def _sp_op(self, name, *args):
        return self._sp_child.request("op", self._sp_target, name, args)


def _forward_to_parent(name):
    def forward(self, *args):
        return self._sp_op(name, *args)

    forward.__name__ = "__%s__" % name
    return forward


for _name in (
    "str",
    "repr",
    "format",
    "len",
    "contains",
    "getitem",
    "setitem",
    "delitem",
    "iter",
    "next",
    "reversed",
    "lt",
    "le",
    "gt",
    "ge",
    "enter",
    "exit",
    "int",
    "float",
    "index",
    "neg",
    "abs",
):
    setattr(ParentRef, "__%s__" % _name, _forward_to_parent(_name))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "and", "or", "xor"):
    setattr(ParentRef, "__%s__" % _name, _forward_to_parent(_name))
    setattr(ParentRef, "__r%s__" % _name, _forward_to_parent("r" + _name))


class CallableParentRef(ParentRef):
    """A callable object of the parent's (a function, a bound method, ...)."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        return self._sp_child.call_parent(self._sp_target, args, kwargs)


class Child:
    """Serve the parent's requests on one channel; call the parent's objects.

    Requests from the parent run in the main thread, in order, so that a
    forwarded SIGINT interrupts the call in progress; a NESTED request runs on
    the thread that waits for the request it is nested in.  Any thread may
    call the parent (a callback from a thread the child started): receiving
    is leader/follower as in the parent's session, the thread that finds the
    receive lock free reads for all and hands over what is not its own.
    """

    def __init__(self, channel):
        self.channel = channel
        self.table = ObjectTable()
        self.codec = Codec(self._resolve_ref, self._ask_importable, self._import_dill, self.ref)
        self._ids = itertools.count(-1, -1)  # the child's request ids are negative: they never clash
        self.running = 0  # calls in progress in the main thread (nested ones count too)
        self.serving = None  # the parent's request the main thread runs now
        self.releases = collections.deque()  # parent objects the child no longer references
        self._main_ident = threading.get_ident()
        self._main_queue = collections.deque()  # messages for the main thread
        self._queues = {}  # request id awaited by another thread -> its nested requests
        self._replies = {}
        self._local = threading.local()  # .serving: the parent's request another thread runs
        self._send_lock = threading.Lock()
        self._recv_lock = threading.RLock()
        self._leader = None  # the thread that holds the receive lock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._followers = 0
        self._closed = False
        self._finder = None
        self._lanes = {}  # lane number -> channel to the parent thread it belongs to
        self._held = {}  # lane number -> (request id, the last result sent on it that names parent objects)
        _LIVE.add(self)

    # -- the loop -------------------------------------------------------------

    def serve(self):
        try:
            self._wait(None)
        except ChannelClosed:
            return

    def _wait(self, rid):
        """Run the requests for this thread until the reply to `rid` comes (rid None: for ever).

        The main thread waiting inside a call (for a callback's answer) runs only what is
        nested in that call: a later call, even of a caller who gave this one up, waits
        until this one has ended (see `_nested_first`).
        """
        me = threading.get_ident()
        main = me == self._main_ident
        if main:
            queue = self._main_queue
        else:
            queue = self._queues.get(rid)
            if queue is None:
                queue = self._queues[rid] = collections.deque()
        inside = main and rid is not None
        replies = self._replies
        recv_lock = self._recv_lock
        try:
            while True:
                if queue and (not inside or self._nested_first(queue, rid)):
                    self._run_next(queue)
                    continue
                if rid in replies:
                    return replies.pop(rid)
                # Re-entrant: decoding a message may ask the parent something (dill's
                # source) and read the answer, on the thread that holds the lock.
                if recv_lock.acquire(False):
                    previous, self._leader = self._leader, me
                    try:
                        if (queue and (not inside or self._nested_first(queue, rid))) or rid in replies:
                            continue  # handed over while the lock was taken
                        if self.releases:
                            self._send(None, None)
                        msg = self._read()
                    finally:
                        with self._lock:
                            self._leader = previous
                            recv_lock.release()
                            if self._followers:
                                self._cond.notify_all()
                    if main and msg[0] == protocol.REQUEST:
                        queue.append(msg)  # the common case, routed without a call
                    else:
                        self._route(msg, queue)
                    msg = None
                    continue
                with self._cond:
                    runnable = queue and (not inside or self._nested_first(queue, rid))
                    if not runnable and rid not in replies and not self._closed:
                        if self._leader is None:
                            # The lock was just taken, its holder not yet noted: let it run.
                            self._cond.wait(0.001)
                        else:
                            self._followers += 1
                            try:
                                self._cond.wait()
                            finally:
                                self._followers -= 1
                if (
                    self._closed
                    and rid not in replies
                    and not (queue and (not inside or self._nested_first(queue, rid)))
                ):
                    raise ChannelClosed("the parent has gone")
        finally:
            if not main:
                self._queues.pop(rid, None)

    @staticmethod
    def _nested_first(queue, rid):
        """Whether the main thread, waiting inside a call for the parent's answer to its request
        `rid`, may run a message of `queue` now; if so, that message is first.

        Only what is nested in that request may run (NESTED with `rid` as its outer: the
        calls its callback makes), and releases that came before anything else.  A plain
        request is a later call, perhaps of a caller who gave this one up (a timeout, a
        cancelled await); a request nested in an outer one comes from a callback whose call
        into this one gave up.  Either waits, in order and with the releases after it, until
        the calls it would run inside have ended.
        """
        first = queue[0]
        if first[0] == protocol.RELEASE or (first[0] == protocol.NESTED and first[2] == rid):
            return True
        for i, msg in enumerate(queue):
            if msg[0] == protocol.NESTED and msg[2] == rid:
                del queue[i]
                queue.appendleft(msg)
                return True
        return False

    def _read(self):
        channel = self.channel
        while True:
            try:
                tag, payload = channel.recv()
                if tag == protocol.TAG_LANE:
                    self._lane(payload)
                    continue
            except (ChannelClosed, OSError):
                with self._lock:
                    self._closed = True
                    self._cond.notify_all()
                raise ChannelClosed("the parent has gone") from None
            try:
                if tag == protocol.TAG_PICKLE:  # most requests: the codec's first case, inline
                    return pickle.loads(payload)
                return self.codec.loads(tag, payload)
            except ChannelClosed:
                raise
            except Exception as exc:  # costs nothing until raised
                # A frame that names what this interpreter lacks (a parent-only class, another
                # version of a package): it fails its own call, never the child.
                answer = self.codec.unloadable(tag, payload, exc)
                payload = None  # the failed frame's memory (a memfd's mapping) goes now
                if answer is None:
                    raise
                if answer[1] < 0:
                    return answer  # the parent's answer to us: raised where it was asked for
                try:
                    self._send(*self.codec.dumps(answer), rid=answer[1])
                except LaneClosed:
                    pass  # the caller gave up meanwhile

    def _forked(self):
        """In a process forked from the child: let go of the lanes, or the parent's threads
        would wait on them for as long as that process lives."""
        for channel in self._lanes.values():
            channel.close()
        self._lanes = {}

    def _lane(self, payload):
        """Open or close a lane; done as the frame is read, in order with the frames around it."""
        lane, opening = protocol.LANE.unpack(payload)
        if opening:
            fd = self.channel.take_fd()
            # The parent's thread reads its lane until the child's end closes: no process
            # the child starts may keep that end open (see also _forked).
            os.set_inheritable(fd, False)
            channel = self.channel.lane(socket.socket(fileno=fd))
        with self._send_lock:  # never closed under a sender, nor its number reused
            old = self._lanes.pop(lane, None)
            if old is not None:
                old.close()
            if opening:
                self._lanes[lane] = channel
        self._held.pop(lane, None)  # the lane's thread has ended (or given it up)

    def _route(self, msg, mine):
        """Hand a message to whoever it is for: a waiting thread, or the main thread."""
        kind = msg[0]
        if kind == protocol.REPLY:
            target = None
        elif kind == protocol.NESTED:
            target = self._queues.get(msg[2], self._main_queue)
        else:  # REQUEST, and RELEASE: the child's objects are used in the main thread only
            target = self._main_queue
        if target is mine:
            mine.append(msg)
            return
        with self._lock:
            if target is None:
                self._replies[msg[1]] = msg
            else:
                target.append(msg)
            if self._followers:
                self._cond.notify_all()

    def _run_next(self, queue):
        msg = queue.popleft()
        kind = msg[0]
        if kind == protocol.RELEASE:
            self.table.release(msg[1])
            if self._held:
                # A negative id: the parent has read the answer to that request (see _send_releases
                # in the parent's session); what was held for it may go.
                for rid in msg[1]:
                    if rid < 0:
                        held = self._held.get(-rid & protocol.LANE_MASK)
                        if held is not None and held[0] == -rid:
                            del self._held[-rid & protocol.LANE_MASK]
            return
        if kind == protocol.NESTED:
            rid, op, operands = msg[1], msg[3], msg[4:]
        else:
            rid, op, operands = msg[1], msg[2], msg[3:]
        msg = None
        if self._held:
            # The caller has read the answer before (it asks only once it has): the parent
            # objects held for that answer may be released now.
            self._held.pop(rid & protocol.LANE_MASK, None)
        codec = self.codec
        main = queue is self._main_queue
        if main:
            outer = self.serving
            self.serving = rid
            self.running += 1
        else:
            outer = getattr(self._local, "serving", None)
            self._local.serving = rid
        data = None
        try:
            try:
                how, payload = OPS[op](self, *operands)
            finally:
                # The arguments go before the reply does: the parent objects among them
                # are released with it, not with some later message.
                operands = None
            if how == MAYBE:
                data = codec.reply_by_value(rid, payload)  # (tag, pickle, out-of-band buffers)
                if data is None:
                    how, payload = protocol.REF, self.ref(payload)
                    if codec.refused:
                        # The parent lacks a module the value's pickle names: it is told which.
                        payload, codec.refused = payload + (codec.refused,), None
            elif how == BATCH:
                items, end, ref = payload
                data = codec.dumps_values(
                    lambda values: (protocol.REPLY, rid, protocol.VALUE, (values, end, ref)), items
                )
        except SystemExit:
            raise
        except BaseException as exc:
            how, payload, data = protocol.ERROR, codec.encode_exception(exc), None
            exc = None
        finally:
            if main:
                self.serving = outer
                self.running -= 1
            else:
                self._local.serving = outer
        if data is None:
            data = codec.dumps((protocol.REPLY, rid, how, payload))
        try:
            # The result is let go of only once sent: a parent's object it holds must not
            # be released before the reply that names it.
            self._send(*data, rid=rid)
            if data[0] == protocol.TAG_REFS and rid & protocol.LANE_MASK:
                # The answer names objects of the parent's, of which `payload` may hold the
                # child's only references.  Released now, the release would go on the channel
                # and could be read (and the objects dropped) before the caller reads its answer
                # on its lane: they are kept until the parent says it has read the answer, the
                # caller's next request, or its lane's end.
                self._held[rid & protocol.LANE_MASK] = (rid, payload)
        except LaneClosed:
            # The caller gave up (a timeout) and closed its lane: no one will take the answer.
            if how == protocol.REF:
                self.table.release([payload[0]])
            codec.retell_types()
        except ChannelClosed:
            if main:
                raise SystemExit(0) from None
            raise
        finally:
            payload = None

    def _send(self, tag, data, buffers=None, rid=None):
        """Send a frame (None: only the pending releases), releases first.

        `rid` is the parent's request the frame answers or is nested in: it goes
        on that request's lane, and raises LaneClosed if the lane is gone.
        """
        channel = main = self.channel
        lane = 0
        if rid is not None and rid > 0:
            lane = rid & protocol.LANE_MASK
        with self._send_lock:
            if lane:
                channel = self._lanes.get(lane)
                if channel is None:
                    raise LaneClosed("lane %d is closed" % lane)
            batch = None
            try:
                if self.releases:
                    batch = []
                    releases = self.releases
                    while releases:
                        batch.append(releases.popleft())
                    channel.send(*self.codec.dumps((protocol.RELEASE, batch)), None, self._read_ahead)
                    batch = None
                if tag is not None:
                    channel.send(tag, data, None, self._read_ahead, buffers)
            except ChannelClosed:
                if channel is main:
                    raise
            except OSError as err:
                if channel is main:
                    if getattr(err, "errno", None) in (9, 32, 104):  # EBADF, EPIPE, ECONNRESET: the parent has gone
                        raise ChannelClosed("the parent has gone") from None
                    raise
            else:
                return
            # Only a lane gets here: its thread closed it.  The releases go with a later frame.
            if batch:
                self.releases.extendleft(reversed(batch))
            if self._lanes.get(lane) is channel:
                del self._lanes[lane]
            channel.close()
        raise LaneClosed("lane %d is closed" % lane)

    def _read_ahead(self):
        """While a send waits for room, read what the parent sends, unless another thread reads.

        The parent may itself be blocked writing to us while it holds its
        receive lock: if neither side read, both would wait for ever.
        """
        if not self._recv_lock.acquire(False):
            return False
        try:
            self.channel.read_ahead()
        finally:
            with self._lock:
                self._recv_lock.release()
                if self._followers:
                    self._cond.notify_all()
        return True

    # -- calling the parent ---------------------------------------------------------

    def request(self, op, *operands):
        """Ask the parent something; serve its requests meant for this thread until the answer comes."""
        return self._request(op, lambda values: tuple(values), list(operands))

    def call_parent(self, target, args, kwargs):
        """Call an object of the parent's; arguments it cannot rebuild travel by reference."""
        keys = list(kwargs)
        n = len(args)
        values = list(args)
        values.extend(kwargs[k] for k in keys)
        return self._request("call", lambda vs: (target, tuple(vs[:n]), dict(zip(keys, vs[n:]))), values)

    def _request(self, op, make, values):
        rid = next(self._ids)
        main = threading.get_ident() == self._main_ident
        if main:
            outer = self.serving
        else:
            outer = getattr(self._local, "serving", None)
        head = (protocol.REQUEST, rid, op) if outer is None else (protocol.NESTED, rid, outer, op)
        tag, data, buffers = self.codec.dumps_values(lambda vs: head + make(vs), values)
        if not main:
            # Before the request goes: what the parent nests in it must find this thread's
            # queue, not the main thread's (which, inside a call, would hold it back).
            self._queues[rid] = collections.deque()
        try:
            self._send(tag, data, buffers, outer)
            reply = self._wait(rid)
        except LaneClosed:
            raise ConnectionError("the parent gave up the call this one is part of; %s cannot run there" % op) from None
        except ChannelClosed:
            if main:
                raise SystemExit(0) from None
            raise ConnectionError("the parent process has gone; %s cannot run there" % op) from None
        finally:
            if not main:
                self._queues.pop(rid, None)
        if reply[2] == protocol.ERROR:
            raise rebuild_parent_exception(reply[3])
        return reply[3]

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
        if pid[0] == "local":
            if not _releaser:
                _start_releaser()
            kind = CallableParentRef if pid[2] else ParentRef
            return kind(self, pid[1], pid[3], None, pid[4])
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
            return protocol.SAME, None
        if value is base:
            return protocol.BASE, None
        return MAYBE, value

    def ref(self, value):
        key, info = self.codec.type_info(value)
        return self.table.add(value), key, info


# Internal to the child: send by value if the parent can rebuild it, else by reference.
MAYBE = -1
# Internal: a batch of items (see op_batch), each by value or by reference.
BATCH = -2
# A batch ends after this many seconds, so that a slow iterator hands out what it made.
BATCH_SECONDS = 0.01


# -- operations: each returns (how, payload) ------------------------------------


def op_getattr(child, target, name):
    base, obj = child._resolve(target)
    value = getattr(obj, name)
    if callable(value):
        # What is callable stays in the child: the parent reaches it by path,
        # so that calling it runs here (mod.lst.append(4) changes the child's list).
        return protocol.PATH, True
    return child.result(value, base, obj)


def op_attrinfo(child, target, name):
    value = getattr(child._resolve(target)[1], name)
    return protocol.VALUE, callable(value)


def op_setattr(child, target, name, value):
    setattr(child._resolve(target)[1], name, value)
    return protocol.VALUE, None


def op_delattr(child, target, name):
    delattr(child._resolve(target)[1], name)
    return protocol.VALUE, None


def op_call(child, target, args, kwargs):
    # The most frequent operation: _resolve and result, inline.
    if type(target) is int:
        base = obj = child.table.get(target)
    else:
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
    base, obj = child._resolve(target)
    value = _OPERATORS[name](obj, *args)
    if type(value) in _SCALARS:
        return protocol.VALUE, value
    return child.result(value, base, obj)


def op_dir(child, target):
    return protocol.VALUE, sorted(dir(child._resolve(target)[1]))


def op_signature(child, target):
    return protocol.VALUE, encode_signature(child._resolve(target)[1])


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
        names = {name: True for name in info[2]} if info else {}
        names.update((name, callable(value)) for name, value in getattr(root, "__dict__", {}).items())
    return protocol.VALUE, (oid, key, info, names)


def op_batch(child, target, n, call_iter):
    """Take up to `n` items from an iterator (iter(target) if `call_iter`): (items, end, ref).

    `end` is None while items may follow, True at the end, or the encoded
    exception the iterator raised after the items; `ref` is the reference of
    the iterator iter() made when it is not the target itself, else None.
    """
    obj = child._resolve(target)[1]
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


def op_close(child, target):
    close = getattr(child._resolve(target)[1], "close", None)
    if close is not None:
        close()
    return protocol.VALUE, None


def op_obtain(child, target):
    """A copy of the target, pickled here for the parent to load: (True, pickle) or (False, why)."""
    obj = child._resolve(target)[1]
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
    package = sys.modules[__package__]
    network = getattr(package, "network", None) or package.load("network")
    return network.op_listen(child, config)


OPS = {
    "getattr": op_getattr,
    "attrinfo": op_attrinfo,
    "setattr": op_setattr,
    "delattr": op_delattr,
    "call": op_call,
    "op": op_operator,
    "dir": op_dir,
    "signature": op_signature,
    "chdir": op_chdir,
    "load": op_load,
    "batch": op_batch,
    "close": op_close,
    "ping": op_ping,
    "obtain": op_obtain,
    "stats": op_stats,
    "listen": op_listen,
}


# -- start-up ---------------------------------------------------------------------


def _watch_parent(lifeline_fd):
    """End the child as soon as the parent is gone, whatever the main thread does."""
    try:
        while os.read(lifeline_fd, 4096):
            pass
    except OSError:
        pass
    flush_and_exit()


def flush_and_exit():
    """Exit at once, from any thread, after handing what is buffered to the parent."""
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


# The children that serve in this process (one, or one per client of a served daemon).
_LIVE = WeakSet()


# How often (s) the releases of parent objects that no message has carried are sent.
RELEASE_PERIOD = 0.25
_releaser = []  # the thread that sends them, once the first parent object has come


def _start_releaser():
    thread = threading.Thread(target=_release_loop, name="spawnproxy-releases", daemon=True)
    _releaser.append(thread)
    thread.start()


def _release_loop():
    """A ParentRef dropped while no call runs (by a thread of the child's, or once the parent
    has read the answer that named it) is released within RELEASE_PERIOD, not at some later
    message: the parent may be idle for ever.  While messages flow, they carry the releases."""
    while True:
        time.sleep(RELEASE_PERIOD)
        for child in list(_LIVE):
            if child.releases:
                try:
                    child._send(None, None)
                except (ChannelClosed, OSError):
                    pass  # that connection has ended
        child = None


def _after_fork():
    del _releaser[:]
    for child in list(_LIVE):
        child._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


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
    channel = Channel(socket.socket(fileno=fd))
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
