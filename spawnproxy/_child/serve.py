"""The serve loop: a child serving its parent's requests, and asking the parent in turn.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax.  Uses `protocol`, `channel`, `codec`, `table`, `parent`
(references to the parent's objects), `outbox` (where frames go) and `ops`
(MAYBE and BATCH: the answers the loop completes); the operations a `Child`
serves come through its constructor (`ops.OPS`, or `network.CLIENT_OPS` for
a served daemon's clients).  Requests run one at a time in the main thread,
so that a forwarded Ctrl-C (SIGINT) interrupts the call in progress; how a
child process starts and ends is `lifetime`'s.
"""

import collections
import itertools
import os
import pickle
import socket
import sys
import threading

from . import protocol
from .channel import ChannelClosed, LaneClosed
from .codec import Codec
from .ops import BATCH, MAYBE
from .outbox import Outbox, start_releaser
from .parent import CallableParentRef, ParentFinder, ParentRef, rebuild_parent_exception
from .protocol import (
    ID,
    IDS,
    KIND,
    LANE_MASK,
    NESTED,
    NESTED_OP,
    NESTED_OPERANDS,
    OP,
    OUTER,
    REF_OID,
    RELEASE,
    REQUEST,
    REQUEST_OPERANDS,
    TAG_LANE,
    TAG_PICKLE,
    TAG_REFS,
)
from .table import ObjectTable

_loads = pickle.loads  # bound once: every request is loaded with it


class Child:
    """Serve the parent's requests on one channel; call the parent's objects.

    Requests from the parent run in the main thread, in order, so that a
    forwarded SIGINT interrupts the call in progress; a NESTED request runs on
    the thread that waits for the request it is nested in.  Any thread may
    call the parent (a callback from a thread the child started): receiving
    is leader/follower as in the parent's session, the thread that finds the
    receive lock free reads for all and hands over what is not its own.
    """

    def __init__(self, channel, ops):
        self.channel = channel
        self.ops = ops  # operation name -> function(child, *operands) -> (how, payload)
        self.table = ObjectTable()
        self.codec = Codec(self._resolve_ref, self._ask_importable, self._import_dill, self.ref)
        self.outbox = Outbox(channel, self.codec.dumps, self._read_ahead)
        self._send = self.outbox.send  # bound once: the serve loop sends through it on every call
        self._ids = itertools.count(-1, -1)  # the child's request ids are negative: they never clash
        self.running = 0  # calls in progress in the main thread (nested ones count too)
        self.serving = None  # the parent's request the main thread runs now
        self.releases = self.outbox.releases  # parent objects the child no longer references
        self._main_ident = threading.get_ident()
        self._main_queue = collections.deque()  # messages for the main thread
        self._queues = {}  # request id awaited by another thread -> its nested requests
        self._replies = {}
        self._local = threading.local()  # .serving: the parent's request another thread runs
        self._recv_lock = threading.RLock()
        self._leader = None  # the thread that holds the receive lock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._followers = 0
        self._closed = False
        self._finder = None
        self._held = self.outbox.held  # read on every call: bound here, as `_send`

    # -- the loop -------------------------------------------------------------

    def serve(self):
        try:
            self._wait(None)
        except ChannelClosed:
            return

    def close(self):
        """Let go of what the parent held here: its objects are freed now, not at the next collection."""
        self.table = None
        self.codec = None

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
                        # (acquire/release, not `with`: this runs for every message)
                        lock = self._lock
                        lock.acquire()
                        self._leader = previous
                        recv_lock.release()
                        if self._followers:
                            self._cond.notify_all()
                        lock.release()
                    if main and msg[KIND] == REQUEST:
                        if not inside and not queue:
                            # The common case: nothing is queued before it, so it runs at once
                            # (what is read after it, by another thread, is queued after it).
                            queue.append(msg)
                            msg = None
                            self._run_next(queue)
                            continue
                        queue.append(msg)
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
        if first[KIND] == RELEASE or (first[KIND] == NESTED and first[OUTER] == rid):
            return True
        for i, msg in enumerate(queue):
            if msg[KIND] == NESTED and msg[OUTER] == rid:
                del queue[i]
                queue.appendleft(msg)
                return True
        return False

    def _read(self):
        channel = self.channel
        while True:
            try:
                tag, payload = channel.recv()
                if tag == TAG_LANE:
                    self._lane(payload)
                    continue
            except (ChannelClosed, OSError):
                with self._lock:
                    self._closed = True
                    self._cond.notify_all()
                raise ChannelClosed("the parent has gone") from None
            try:
                if tag == TAG_PICKLE:  # most requests: the codec's first case, inline
                    return _loads(payload)
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
                rid = answer[ID]
                if rid < 0:
                    return answer  # the parent's answer to us: raised where it was asked for
                try:
                    self._send(*self.codec.dumps(answer), rid=rid)
                except LaneClosed:
                    pass  # the caller gave up meanwhile

    def _lane(self, payload):
        """Open or close a lane; done as the frame is read, in order with the frames around it."""
        lane, opening = protocol.LANE.unpack(payload)
        if opening:
            fd = self.channel.take_fd()
            # The parent's thread reads its lane until the child's end closes: no process
            # the child starts may keep that end open (see also Outbox.drop_lanes).
            os.set_inheritable(fd, False)
        self.outbox.set_lane(lane, self.channel.lane(socket.socket(fileno=fd)) if opening else None)

    def _route(self, msg, mine):
        """Hand a message to whoever it is for: a waiting thread, or the main thread."""
        kind = msg[KIND]
        if kind == protocol.REPLY:
            target = None
        elif kind == NESTED:
            target = self._queues.get(msg[OUTER], self._main_queue)
        else:  # REQUEST, and RELEASE: the child's objects are used in the main thread only
            target = self._main_queue
        if target is mine:
            mine.append(msg)
            return
        with self._lock:
            if target is None:
                self._replies[msg[ID]] = msg
            else:
                target.append(msg)
            if self._followers:
                self._cond.notify_all()

    def _run_next(self, queue):
        msg = queue.popleft()
        kind = msg[KIND]
        if kind == RELEASE:
            ids = msg[IDS]
            self.table.release(ids)
            if self._held:
                self.outbox.answers_read(ids)
            return
        # Indexes, not a starred unpacking: that builds a list for every request.
        rid = msg[ID]
        if kind == NESTED:
            op, operands = msg[NESTED_OP], msg[NESTED_OPERANDS:]
        else:
            op, operands = msg[OP], msg[REQUEST_OPERANDS:]
        msg = None
        if self._held:
            # The caller has read the answer before (it asks only once it has): the parent
            # objects held for that answer may be released now.
            self._held.pop(rid & LANE_MASK, None)
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
                how, payload = self.ops[op](self, *operands)
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
            tag, pickled = codec.dumps((protocol.REPLY, rid, how, payload))
            buffers = None
        else:
            tag, pickled, buffers = data
        try:
            # The result is let go of only once sent: a parent's object it holds must not
            # be released before the reply that names it.
            self._send(tag, pickled, buffers, rid=rid)
            if tag == TAG_REFS and rid & LANE_MASK:
                # The answer names objects of the parent's, of which `payload` may hold the
                # child's only references: kept (see Outbox.held).
                self._held[rid & LANE_MASK] = (rid, payload)
        except LaneClosed:
            # The caller gave up (a timeout) and closed its lane: no one will take the answer.
            if how == protocol.REF:
                self.table.release([payload[REF_OID]])
            codec.retell_types()
        except ChannelClosed:
            if main:
                raise SystemExit(0) from None
            raise
        finally:
            payload = None

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
        return self._request(op, tuple, list(operands))

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
        _, _, how, payload = reply
        if how == protocol.ERROR:
            raise rebuild_parent_exception(payload)
        return payload

    # -- helpers ----------------------------------------------------------------

    def resolve(self, target):
        """(base, object) of a target: an object id, or a path (id, name, ...) from the object to an attribute."""
        if type(target) is int:
            obj = self.table.get(target)
            return obj, obj
        oid, *path = target
        base = obj = self.table.get(oid)
        for name in path:
            obj = getattr(obj, name)
        return base, obj

    def _resolve_ref(self, pid):
        if pid[0] == "local":  # the parent's object: ("local", target, callable, names, truthy)
            _, target, is_callable, names, truthy = pid
            start_releaser()
            return (CallableParentRef if is_callable else ParentRef)(self, target, names, None, truthy)
        _, target = pid  # ("ref", target): the child's own object, sent back
        _, obj = self.resolve(target)
        return obj

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
