"""The parent's side of the conversation with one child.

Any number of threads may call at once.  Each request gets its own id; the
thread that finds the receive lock free reads the channel for everyone
("leader/follower"): a single caller thus reads its own answer with no thread
hand-off, and answers for other threads are handed over through a condition.
The leader watches the child's exit handle, so a child that dies becomes an
error at once instead of a hang.

The protocol is symmetric, and the child's requests are routed like answers:

- a NESTED request (a callback made by the child while it runs one of our
  requests) is run by the thread that waits for that request, never while it
  holds the receive lock: a callback may call the child again, to any depth;
- a plain REQUEST (a callback from a thread the child started), and a nested
  one whose caller no longer waits (timed out, abandoned, awaited by asyncio),
  runs on the session's worker thread, one at a time;
- RELEASE gives back the parent's objects the child held (`by_ref`).

A local child answers a blocking call on the calling thread's own lane (see
`_lanes`), which that thread alone reads: no hand-off, and the kernel wakes the
right thread.  The channel (lane 0) carries everything else: requests, the
answers to asyncio and streaming requests, and the child's own requests.

When nobody else reads but someone must (the child holds the parent's objects
and may call them at any time, or asyncio waiters expect answers), a reader
thread leads; it lingers a little after it is last needed, then ends.
"""

from __future__ import annotations

import collections
import importlib.util
import itertools
import logging
import pickle
import queue
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _flush, _serialize
from ._child import protocol
from ._child.channel import Channel, SendTimeout
from ._child.operators import OPERATORS
from ._errors import (
    CallTimeoutError,
    DaemonDiedError,
    DaemonTerminatedError,
    SerializationError,
    SpawnProxyError,
)
from ._exports import ExportTable
from ._lanes import Lane, Lanes
from ._options import UNSET, current_timeout, timeouts
from ._peer import Peer
from ._process import describe_exit

log = logging.getLogger("spawnproxy")

# The kind of a reply that arrived but could not be loaded here (never on the wire).
UNLOADABLE = -1
# The kind of a reply that never came: the child ended (never on the wire); payload: the error.
FAILED = -2
# Packages the child may ask its parent for when it lacks them (pure Python).
SHIPPABLE = frozenset({"dill"})
_NO_OPERANDS: Callable[[], Sequence[tuple[str, Any]]] = lambda: ()  # noqa: E731
# How long (s) the reader and the worker stay after their last use, and how often the reader looks up.
LINGER = 1.0
_POLL = 0.2
_UNSET: Any = object()


class _Local(threading.local):
    serving: int | None = None  # the child's request this thread runs (a default: no AttributeError to pay)
    lane: Lane | None = None  # where the child answers this thread's blocking calls
    named = False  # the message this thread decodes names an object of the parent's
    reading: Lane | None = None  # the lane of the call whose callback this thread runs (see _retire_lane)


class Session:
    """Requests to one child and the answers to them; the child's requests to us."""

    def __init__(self, process: Peer, call_timeout: float | None) -> None:
        self.process = process
        self.channel = process.channel
        self.pid = process.pid
        self.child_version: tuple[int, ...] = tuple(process.hello["version"])
        self.call_timeout = call_timeout
        self.encoder = _serialize.Encoder(self, self.child_version)
        self.types: dict[int, Any] = {}  # type key -> type info sent by the child
        self.releases: collections.deque[int] = collections.deque()
        self.exports = ExportTable()  # the parent's objects the child holds (by_ref)
        # Makes the proxy of a child's object that arrived inside a message: (oid, type info) -> proxy.
        self.make_proxy: Callable[[int, Any], Any] | None = None
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        # One lock guards the replies and the waiting set; followers wait on a
        # condition over it.  The lock is used directly where no one waits,
        # and notify only runs when there are followers: a lone caller pays
        # for neither.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._followers = 0
        self._replies: dict[int, tuple[Any, ...]] = {}
        self._waiting: set[int] = set()
        self._nested: dict[int, collections.deque[tuple[Any, ...]]] = {}  # waited-for id -> child requests
        self._async: dict[int, Callable[[tuple[Any, ...]], None]] = {}  # id -> what to do with its reply
        self._abandoned: collections.deque[int] = collections.deque()  # dropped by finalizers, not yet forgotten
        self._local = _Local()
        self._ids = itertools.count(1)
        self._failure: Callable[[object], SpawnProxyError] | None = None
        self._stopping = False  # a served daemon said it stops on purpose
        self._reader: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        # Lanes need a local socket pair, to pass the lane's socket over.
        self._lanes = Lanes(self.channel) if getattr(process, "lanes", False) else None
        self._dill_calls = 0  # lane calls whose request the child may ask about as it loads it
        self._retired: dict[int, tuple[Lane, int]] = {}  # fd -> lane of a call given up, and the call
        self._drain_lock = threading.Lock()
        _flush.watch(self)  # releases go within _flush.PERIOD, even if no call follows

    # -- calling -------------------------------------------------------------------

    def request(
        self,
        op: str,
        operands: tuple[Any, ...],
        what: object,
        describe: Callable[[], Sequence[tuple[str, Any]]] = _NO_OPERANDS,
    ) -> tuple[Any, ...]:
        """Send a request and return the child's reply; `what` names it in errors."""
        # One deadline bounds the send and the wait (`_deadline`, inline: every call pays here).
        timeout = current_timeout(self.call_timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._lanes is not None:
            lane = self._local.lane
            if lane is None:
                lane = self._open_lane(what, deadline, timeout)
            if lane is not None:
                return self._lane_request(lane, op, operands, what, describe, deadline, timeout)
        rid = self.submit(op, operands, what, describe, None, deadline, timeout)
        return self.collect(rid, what, False, deadline, timeout)

    def call(
        self,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: object,
        describe: Callable[[], Sequence[tuple[str, Any]]],
    ) -> tuple[Any, ...]:
        """request("call", (target, args, kwargs), what, describe): the most frequent request.

        A call of plain operands (numbers, strings, small buffers) by a thread
        that holds a lane and serves no request of the child's is pickled at
        once, without the general encoder (proxies, out-of-band buffers, dill).
        """
        local = self._local
        lane = local.lane
        if (
            lane is None
            or local.serving is not None
            or self._failure is not None
            or self._abandoned
            or not _serialize.small_values(args)
            or (kwargs and not _serialize.small_values(kwargs.values()))
        ):
            return self.request("call", (target, args, kwargs), what, describe)
        timeout = timeouts.timeout  # current_timeout, inline
        if timeout is UNSET:
            timeout = self.call_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        rid = next(self._ids) << protocol.LANE_BITS | lane.number
        payload = pickle.dumps((protocol.REQUEST, rid, "call", target, args, kwargs), _serialize.PROTOCOL)
        return self._lane_exchange(lane, rid, protocol.TAG_PICKLE, payload, None, what, deadline, timeout)

    # -- lanes: a blocking call reads its answer on its thread's own socket ----------------

    def _open_lane(self, what: object, deadline: float | None, timeout: float | None) -> Lane | None:
        if self._failure is not None:
            raise self._failure(what)
        assert self._lanes is not None
        made = self._lanes.make()
        if made is None:
            return None  # 65,535 threads hold a lane: this one reads the channel
        lane, theirs = made
        try:
            self._send(
                protocol.TAG_LANE, protocol.LANE.pack(lane.number, 1), what, deadline, timeout, fd=theirs.fileno()
            )
        except BaseException:
            assert lane.close is not None
            lane.close()
            raise
        finally:
            theirs.close()
        self._local.lane = lane
        return lane

    def _lane_request(
        self,
        lane: Lane,
        op: str,
        operands: tuple[Any, ...],
        what: object,
        describe: Callable[[], Sequence[tuple[str, Any]]],
        deadline: float | None,
        timeout: float | None,
    ) -> tuple[Any, ...]:
        rid, tag, payload, buffers = self._encode(op, operands, what, describe, lane.number)
        return self._lane_exchange(lane, rid, tag, payload, buffers, what, deadline, timeout)

    def _lane_exchange(
        self,
        lane: Lane,
        rid: int,
        tag: bytes,
        payload: bytes,
        buffers: list[pickle.PickleBuffer] | None,
        what: object,
        deadline: float | None,
        timeout: float | None,
    ) -> tuple[Any, ...]:
        """Send an encoded request that `lane` answers; return the answer."""
        # Loading a dill request, the child may ask for dill's source: a plain request,
        # read on the channel, where no caller reads now.  Likewise a child's thread may
        # call an object of ours at any time.
        dill = tag == protocol.TAG_DILL
        if dill or (self.exports.objects and self._reader is None):
            if dill:
                with self._lock:
                    self._dill_calls += 1
            self._ensure_reader()
        try:
            try:
                self._send(tag, payload, what, deadline, timeout, buffers)
            except BaseException:
                if self.channel.pending:
                    self._retire_lane(lane, rid)  # part of it went: the rest goes with the next frame
                raise
            try:
                reply = self._lane_wait(lane, rid, what, deadline, timeout)
            except BaseException:
                self._retire_lane(lane, rid)
                raise
        finally:
            if dill:
                with self._lock:
                    self._dill_calls -= 1
        if self._retired:
            for fd in list(self._retired):
                self._drain_retired(fd)
        if reply[2] == UNLOADABLE:
            raise unloadable(what, reply[3])
        if self.exports.objects and self._reader is None:
            self._ensure_reader()  # the child kept an object of ours: it may call it while no one reads
        return reply

    def _lane_wait(
        self, lane: Lane, rid: int, what: object, deadline: float | None, timeout: float | None
    ) -> tuple[Any, ...]:
        channel = lane.channel
        interrupted = False
        while True:
            try:
                while True:
                    if self._failure is not None:
                        raise self._failure(what)
                    if deadline is not None:
                        ready = channel.wait(max(0.0, deadline - time.monotonic()))
                        if ready is None:
                            raise self.timeout_error(what, timeout)
                        if ready[0] != channel.fd:
                            raise self._fail(what)  # only the exit handle is ready: the child is gone
                    try:
                        # With no deadline, straight into a blocking read: the kernel wakes
                        # this thread when the answer comes.  The child's end closes when it
                        # dies (nothing else holds it, see _child), and the read gives up
                        # every LANE_CHECK seconds to look at the child anyway.
                        message = self._receive(what, channel)
                    except BlockingIOError:
                        if self.process.poll() is not None:
                            raise self._fail(what) from None
                        continue
                    kind = message[0]
                    if kind == protocol.REPLY:
                        if message[1] == rid:
                            return message
                        self.drop(message)  # the late answer of an earlier call of this thread
                    elif kind == protocol.NESTED:
                        if message[2] == rid:
                            # A callback of this call: run here.  This thread reads the lane
                            # again once it returns, whatever the calls it makes meanwhile do.
                            local = self._local
                            outer, local.reading = local.reading, lane
                            try:
                                self._serve(message)
                            finally:
                                local.reading = outer
                        else:
                            self._to_worker(message)
                    else:
                        self._route(message)
                    del message
            except KeyboardInterrupt:
                # First Ctrl-C: interrupt the call in the child, whose answer is then a
                # KeyboardInterrupt raised there.  A second one abandons the call.
                if interrupted or self._failure is not None:
                    raise
                interrupted = True
                self.process.interrupt()

    def _retire_lane(self, lane: Lane, rid: int) -> None:
        """Give up the lane of a call that was given up (a timeout, a second Ctrl-C).

        The call goes on in the child, and may still call back: the reader reads
        the lane until the call's answer comes (and drops it), then closes it.
        This thread gets a new lane for its next call.
        """
        if self._local.reading is lane:
            # A call made by a callback whose own call waits on this lane: this thread reads
            # it again as soon as the callback returns, and until then, in the calls it makes.
            # It keeps the lane: retired, it would close under the call that waits on it.
            return
        if self._local.lane is lane:
            self._local.lane = None
        if self._failure is not None:
            assert lane.close is not None
            lane.close()
            return
        with self._lock:
            self._retired[lane.channel.fd] = (lane, rid)
        self._ensure_reader()

    def _drain_retired(self, fd: int) -> None:
        """Read what has come on a retired lane: answers are dropped, callbacks served.

        The reader does it as the lane becomes readable; a caller whose own
        answer came does it too (`_lane_request`), since what the child sent
        before that answer is there already: the late answers of this thread's
        calls are then dropped, and their references released, before its next
        call, as they were when every answer came on the channel.
        """
        with self._drain_lock:  # the reader and a caller may both try
            found = self._retired.get(fd)
            if found is None:
                return  # done already, or the child ended
            lane, rid = found
            channel = lane.channel
            done = False
            try:
                channel.read_ahead()
                while channel.has_frame():
                    message = self._receive("a call given up", channel)
                    kind = message[0]
                    if kind == protocol.REPLY:
                        self.drop(message)
                        done = done or message[1] == rid
                    elif kind == protocol.NESTED:
                        self._to_worker(message)  # the child waits for its answer
                    else:
                        self._route(message)
                    del message
            except EOFError:
                done = True  # the child is gone: reading lane 0 says so
            if done:
                with self._lock:
                    self._retired.pop(fd, None)
                assert lane.close is not None
                lane.close()

    def _encode(
        self,
        op: str,
        operands: tuple[Any, ...],
        what: object,
        describe: Callable[[], Sequence[tuple[str, Any]]],
        lane: int,
    ) -> tuple[int, bytes, bytes, list[pickle.PickleBuffer]]:
        """A new request id, answered on `lane`, and the request's frame: (id, tag, payload, buffers)."""
        if self._failure is not None:
            raise self._failure(what)
        if self._abandoned:
            self._forget_abandoned()
        rid = next(self._ids) << protocol.LANE_BITS | lane
        outer = self._local.serving
        head = (protocol.REQUEST, rid, op) if outer is None else (protocol.NESTED, rid, outer, op)
        return (rid, *self.encoder.encode(head + operands, describe))

    def submit(
        self,
        op: str,
        operands: tuple[Any, ...],
        what: object,
        describe: Callable[[], Sequence[tuple[str, Any]]] = _NO_OPERANDS,
        on_reply: Callable[[tuple[Any, ...]], None] | None = None,
        deadline: float | None = _UNSET,
        timeout: float | None = None,
    ) -> int:
        """Send a request now and return its id.

        Its reply is for `collect(id)` (prefetching) or, with `on_reply`, is
        handed to `on_reply(reply)` by whichever thread reads it (asyncio).
        Either way `abandon(id)` gives it up, as a timeout does.
        """
        rid, tag, payload, buffers = self._encode(op, operands, what, describe, 0)  # lane 0: the channel
        with self._lock:
            if on_reply is None:
                self._waiting.add(rid)
            else:
                self._async[rid] = on_reply
        if deadline is _UNSET:
            deadline, timeout = self._deadline()
        try:
            self._send(tag, payload, what, deadline, timeout, buffers)
        except BaseException:
            self.abandon(rid)
            raise
        if on_reply is not None:
            # No thread of ours waits for this answer: someone must read it.  (A blocking
            # caller reads for itself, and routes what comes meanwhile.)
            self._ensure_reader()
        return rid

    def collect(
        self,
        rid: int,
        what: object,
        keep_on_timeout: bool = False,
        deadline: float | None = _UNSET,
        timeout: float | None = None,
    ) -> tuple[Any, ...]:
        """Wait for the reply to a request sent with `submit`, serving its callbacks meanwhile.

        The deadline is the call's (from `request`), else the timeout starts now.  With
        `keep_on_timeout`, a timeout leaves the request pending: it may be collected
        again later (a stream goes on where it was).
        """
        if deadline is _UNSET:
            deadline, timeout = self._deadline()
        kept = False
        try:
            try:
                reply = self._wait(rid, what, deadline, timeout)
            except CallTimeoutError:
                kept = keep_on_timeout
                raise
            if reply[2] == UNLOADABLE:
                raise unloadable(what, reply[3])
            return reply
        finally:
            if not kept:
                self._forget(rid)
            if self.exports.objects and self._reader is None:
                # The child kept an object of ours: it may call it while no one here reads.
                self._ensure_reader()

    def _deadline(self) -> tuple[float | None, float | None]:
        """(deadline, timeout) of a call this thread starts now."""
        timeout = current_timeout(self.call_timeout)
        return (None if timeout is None else time.monotonic() + timeout), timeout

    def abandon(self, rid: int) -> None:
        """Give up a request: its late reply is dropped, a reference in it released."""
        with self._lock:
            self._async.pop(rid, None)
        self._forget(rid)

    def abandon_later(self, rid: int) -> None:
        """`abandon` for finalizers: takes no lock, never blocks."""
        self._abandoned.append(rid)

    def _forget(self, rid: int) -> None:
        with self._lock:
            self._waiting.discard(rid)
            reply = self._replies.pop(rid, None)
            orphans = self._nested.pop(rid, None)
        if reply is not None:
            self.drop(reply)
        if orphans:
            # The child still waits for their answers: someone must give them.
            for message in orphans:
                self._to_worker(message)

    def _forget_abandoned(self) -> None:
        while self._abandoned:
            try:
                rid = self._abandoned.popleft()
            except IndexError:
                return
            self.abandon(rid)

    def _send(
        self,
        tag: bytes,
        payload: bytes,
        what: object,
        deadline: float | None,
        timeout: float | None,
        buffers: list[pickle.PickleBuffer] | None = None,
        fd: int | None = None,
    ) -> None:
        lock = self._send_lock
        if not lock.acquire(True, -1 if deadline is None else max(0.0, deadline - time.monotonic())):
            raise self.timeout_error(what, timeout)  # another thread's send holds the channel
        try:
            if self.releases:
                self._send_releases(deadline)
            if self._lanes is not None and self._lanes.closing:
                self._send_lane_closes(deadline)
            if fd is not None:
                self.channel.send_fd(tag, payload, fd, deadline, self._read_ahead)
            else:
                self.channel.send(tag, payload, deadline, self._read_ahead, buffers)
        except SendTimeout:
            raise self.timeout_error(what, timeout) from None
        except (EOFError, OSError):
            raise self._fail(what) from None
        finally:
            lock.release()

    def _send_releases(self, deadline: float | None) -> None:
        batch = []
        releases = self.releases
        while releases:
            batch.append(releases.popleft())
        was_pending = self.channel.pending
        try:
            self.channel.send(
                protocol.TAG_PICKLE, _serialize.dumps((protocol.RELEASE, batch)), deadline, self._read_ahead
            )
        except SendTimeout:
            if was_pending or not self.channel.pending:
                releases.extendleft(reversed(batch))  # not sent: they go with the next request
            # else part of the frame went: its rest goes first with the next frame, as it is
            raise

    def _send_lane_closes(self, deadline: float | None) -> None:
        assert self._lanes is not None
        closing = self._lanes.closing
        while closing:
            number = closing.popleft()
            try:
                self.channel.send(protocol.TAG_LANE, protocol.LANE.pack(number, 0), deadline, self._read_ahead)
            except SendTimeout:
                closing.appendleft(number)
                raise

    def _read_ahead(self) -> bool:
        """While a send waits for room, read what the child sends, unless another thread reads.

        The child may itself be blocked writing to us (a large late answer): if
        no one read, both ends would wait for ever.
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

    def flush_releases_nowait(self, within: float | None = None) -> None:
        """Send the pending releases now if the channel is free (for finalizers: never blocks on a lock).

        With `within`, a child that does not read gets them later (the next frame carries them).
        """
        if self._failure is None and self.releases and self._send_lock.acquire(False):
            try:
                self._send_releases(None if within is None else time.monotonic() + within)
            except (EOFError, OSError, SendTimeout):
                pass  # the child is gone: the next read says so
            finally:
                self._send_lock.release()

    def _wait(self, rid: int, what: object, deadline: float | None, timeout: float | None) -> tuple[Any, ...]:
        interrupted = False
        while True:
            try:
                job = None
                with self._lock:
                    while True:
                        reply = self._replies.pop(rid, None)
                        if reply is not None:
                            return reply
                        if self._nested:
                            inbox = self._nested.get(rid)
                            if inbox:
                                job = inbox.popleft()
                                break
                        if self._failure is not None:
                            raise self._failure(what)
                        if self._recv_lock.acquire(False):
                            break
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise self.timeout_error(what, timeout)
                        self._followers += 1
                        try:
                            self._cond.wait(remaining)
                        finally:
                            self._followers -= 1
                if job is None:
                    try:
                        job = self._lead(rid, what, deadline, timeout)
                    finally:
                        with self._lock:
                            self._recv_lock.release()
                            if self._followers:
                                self._cond.notify_all()
                    if job[0] == protocol.REPLY:
                        return job
                # A callback of this call: run here, where a call it makes to the child
                # can read its own answer (the receive lock is free again).
                self._serve(job)
            except KeyboardInterrupt:
                # First Ctrl-C: interrupt the call in the child, whose answer is then a
                # KeyboardInterrupt raised there.  A second one abandons the call.
                if interrupted or self._failure is not None:
                    raise
                interrupted = True
                self.process.interrupt()

    def _lead(self, rid: int, what: object, deadline: float | None, timeout: float | None) -> tuple[Any, ...]:
        """Read until the reply to `rid`, or a request nested in it, arrives; route all else."""
        channel = self.channel
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._failure is not None:
                raise self._failure(what)
            ready = channel.wait(remaining)
            if ready is None:
                raise self.timeout_error(what, timeout)
            if ready[0] != channel.fd:
                raise self._fail(what)  # only the exit handle is ready: the child is gone
            message = self._receive(what)
            kind = message[0]
            if kind == protocol.REPLY:
                if message[1] == rid:
                    return message
                self._route_reply(message)
            elif kind == protocol.NESTED and message[2] == rid:
                return message
            else:
                self._route(message)

    def _receive(self, what: object, channel: Channel | None = None) -> tuple[Any, ...]:
        try:
            tag, payload = (channel or self.channel).recv()
        except BlockingIOError:
            if channel is None:
                raise self._fail(what) from None
            raise  # a lane's read timed out (see _lane_wait)
        except (EOFError, OSError):
            raise self._fail(what) from None
        try:
            # Most answers are plain pickles: _serialize.decode's first case, inline.
            message: tuple[Any, ...] = (
                pickle.loads(payload) if tag == protocol.TAG_PICKLE else self._decode(tag, payload)
            )
        except (Exception, SystemExit) as exc:  # a sys.exit pickled by reference: no reason to exit here
            # The answer to some call that cannot be rebuilt here: it must reach its
            # own caller as an error (or be dropped if late), not fail whoever reads.
            kind, rid, unreached = _serialize.message_head(tag, payload)
            self.releases.extend(unreached)  # the child counted them for this message
            if kind == protocol.REPLY:
                message = (protocol.REPLY, rid, UNLOADABLE, exc)
            elif kind in (protocol.REQUEST, protocol.NESTED):
                # A request of the child's we cannot load: it gets the error as its answer.
                error = _serialize.unloadable_request(exc)
                self._send(
                    protocol.TAG_PICKLE,
                    _serialize.dumps((protocol.REPLY, rid, protocol.ERROR, error)),
                    what,
                    None,
                    None,
                )
                message = (protocol.RELEASE, [])
            else:
                raise
        if message[0] == protocol.REPLY and message[2] == protocol.REF and message[3][2] is not None:
            # A type is described once: keep it even if this answer is dropped.
            self.types[message[3][1]] = message[3][2]
        return message

    def _decode(self, tag: bytes, payload: bytes | memoryview) -> tuple[Any, ...]:
        """A message that is not a plain pickle (see `_serialize.decode`)."""
        local = self._local
        local.named = False
        message: tuple[Any, ...] = _serialize.decode(tag, payload, self._resolve_pid)
        if local.named and message[0] == protocol.REPLY and message[1] & protocol.LANE_MASK:
            # The child keeps the objects of ours that an answer on a lane names until we have
            # read it (see serve.Child._run_next): a negative id in the next releases says so.
            self.releases.append(-message[1])
        return message

    def _resolve_pid(self, pid: Any) -> Any:
        """The object a persistent id in the child's message stands for."""
        if pid[0] == "local":
            self._local.named = True
            return self.exports.get(pid[1])
        _, oid, key, info = pid
        if info is not None:
            self.types[key] = info
        else:
            info = self.types.get(key)
        make = self.make_proxy
        if make is None:
            self.releases.append(oid)
            return None
        return make(oid, info)

    def _route_reply(self, message: tuple[Any, ...]) -> None:
        if self._abandoned:
            self._forget_abandoned()
        rid = message[1]
        with self._lock:
            if rid in self._waiting:
                self._replies[rid] = message
                if self._followers:
                    self._cond.notify_all()
                return
            on_reply = self._async.pop(rid, None)
        if on_reply is not None:
            on_reply(message)
        else:
            self.drop(message)  # the late answer of a call that timed out

    def drop(self, reply: tuple[Any, ...]) -> None:
        """Let go of a reply no one will take: a reference the child counted for it is given back."""
        if reply[2] == protocol.REF:
            self.releases.append(reply[3][0])

    def _route(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == protocol.RELEASE:
            self.exports.release(message[1])
            return
        if kind == protocol.STOPPING:
            self._stopping = True
            return
        if kind == protocol.NESTED:
            with self._lock:
                if message[2] in self._waiting:
                    self._nested.setdefault(message[2], collections.deque()).append(message)
                    if self._followers:
                        self._cond.notify_all()
                    return
        self._to_worker(message)

    def timeout_error(self, what: object, timeout: float | None) -> CallTimeoutError:
        return CallTimeoutError(
            f"{what} did not finish within {timeout} s in child {self.pid}; it goes on running there, "
            "and its answer will be discarded"
        )

    # -- the child's requests -------------------------------------------------------

    def export(self, obj: Any, weak: bool) -> tuple[Any, ...]:
        """Hold a local object for the child (by_ref); return the persistent id that names it."""
        return self.exports.add(obj, weak)

    def unexport(self, oids: list[int]) -> None:
        """Give back references counted for a message that was never sent."""
        self.exports.release(list(oids))

    def _serve(self, message: tuple[Any, ...]) -> None:
        """Run a request of the child's and send the answer (never while holding the receive lock)."""
        if message[0] == protocol.NESTED:
            rid, op, operands = message[1], message[3], message[4:]
        else:
            rid, op, operands = message[1], message[2], message[3:]
        message = ()
        local = self._local
        outer = local.serving
        local.serving = rid  # what this thread asks the child meanwhile is nested in it
        value: Any = None
        try:
            try:
                value = _SERVE[op](self, *operands)
            finally:
                local.serving = outer
                operands = ()
            # What cannot travel by value goes by reference: the child gets a stand-in.
            tag, payload, buffers = self.encoder.encode_result((protocol.REPLY, rid, protocol.VALUE), value)
        except BaseException as exc:  # a KeyboardInterrupt too: it reaches the child's call, then ours
            # Also when the answer cannot be encoded: the child waits for one, whatever happens.
            error = _serialize.encode_exception(exc)
            del exc
            tag, payload, buffers = (
                protocol.TAG_PICKLE,
                _serialize.dumps((protocol.REPLY, rid, protocol.ERROR, error)),
                [],
            )
        del value
        try:
            self._send(tag, payload, "answering the child", None, None, buffers)
        except SpawnProxyError:
            pass  # the child is gone: the next read says so, with its exit code

    def _to_worker(self, message: tuple[Any, ...]) -> None:
        """Queue a child's request that no waiting thread of ours will run."""
        self._jobs.put(message)
        with self._lock:
            if self._worker is None and self._failure is None:
                self._worker = threading.Thread(target=self._work, name=f"spawnproxy-callbacks-{self.pid}", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            try:
                message = self._jobs.get(timeout=LINGER)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty() or self._failure is not None:
                        self._worker = None
                        return
                continue
            if self._failure is None:
                self._serve(message)
            del message

    # -- the reader: for when the child may speak while no caller reads -------------------

    def _needs_reader(self) -> bool:
        return bool(self._async or self.exports.objects or self._dill_calls or self._retired)

    def _ensure_reader(self) -> None:
        with self._lock:
            if self._failure is not None:
                return
            if self._reader is None:
                self._reader = threading.Thread(
                    target=self._read_loop, name=f"spawnproxy-reader-{self.pid}", daemon=True
                )
                self._reader.start()
            elif self._followers:
                self._cond.notify_all()  # a lingering reader: needed again

    def _read_loop(self) -> None:
        idle_since: float | None = None
        while True:
            with self._lock:
                while True:
                    if self._failure is not None:
                        self._reader = None
                        return
                    if self._needs_reader():
                        idle_since = None
                        if self._recv_lock.acquire(False):
                            break
                        wait: float | None = None
                    else:
                        now = time.monotonic()
                        if idle_since is None:
                            idle_since = now
                        wait = LINGER - (now - idle_since)
                        if wait <= 0:
                            # Decided under the lock that ensure_reader takes: no request is left unread.
                            self._reader = None
                            return
                        # A call that leaves the child an object of ours wakes no lingering reader
                        # (it only starts a missing one): look again soon, for what the child sends.
                        wait = min(wait, _POLL)
                    self._followers += 1
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._followers -= 1
            try:
                self._pump()
            except SpawnProxyError:
                pass  # the child ended: every waiter has been told
            except BaseException:  # a SystemExit too, which would end this thread silently
                # Never a reader that is gone but still registered: asyncio waiters would hang.
                log.exception("spawnproxy: the reader of child %d failed", self.pid)
                self._fail("reading the child's messages")
            finally:
                with self._lock:
                    self._recv_lock.release()
                    if self._followers:
                        self._cond.notify_all()

    def _pump(self) -> None:
        """Read and route messages while someone needs it, letting callers lead otherwise."""
        channel = self.channel
        while self._needs_reader():
            if self.releases:
                with self._send_lock:
                    try:
                        self._send_releases(None)
                    except (EOFError, OSError):
                        raise self._fail("sending releases") from None
            if self._failure is not None:
                return
            if self._retired and not channel.has_frame():
                ready = self._wait_retired()
                if ready is None:
                    continue
            else:
                ready = channel.wait(_POLL)
            if ready is None:
                continue
            if ready[0] != channel.fd:
                raise self._fail("reading the child's messages")
            message = self._receive("reading the child's messages")
            if message[0] == protocol.REPLY:
                self._route_reply(message)
            else:
                self._route(message)
            del message

    def _wait_retired(self) -> list[int] | None:
        """Wait for the channel or a retired lane; drain the lanes that are ready.

        Returns what `Channel.wait` would for the channel, or None when it has nothing.
        """
        channel = self.channel
        poller = select.poll()
        for fd in (channel.fd, *channel.watch_fds, *list(self._retired)):
            poller.register(fd, select.POLLIN)
        ready = []
        for fd, _ in poller.poll(_POLL * 1000):
            if fd in self._retired:
                self._drain_retired(fd)
            else:
                ready.append(fd)
        if not ready:
            return None
        return sorted(ready, key=lambda fd: fd != channel.fd)

    # -- ending --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._failure is not None

    def check(self, what: object) -> None:
        """Raise the error of an ended child (terminated or died), if it has ended."""
        if self._failure is not None:
            raise self._failure(what)

    def _fail(self, what: object) -> SpawnProxyError:
        """The channel broke: find out why, remember it for every later call."""
        if self._failure is None:
            code = self.process.wait_exit(1.0)
            text = describe_exit(code) if code is not None else "its channel closing"
            tail = self.process.stderr_text()
            pid = self.pid
            if not self._stopping:
                self._stopping = self.process.said_stopping()
            if self._stopping:  # not "by itself": someone stopped it (spawnproxy stop, stop_daemon())
                how, tail = "was stopped on purpose", ""
            else:
                how = f"ended by itself ({text})"
            self._failure = lambda call: DaemonDiedError(f"child {pid} {how}; {call} cannot run{tail}", code)
            first = DaemonDiedError(f"child {pid} {how} during {what}{tail}", code)
            with self._cond:
                self._cond.notify_all()
            self._end_waiters()
            if self._lanes is not None:
                self._lanes.close_all()
                self._retired.clear()
            return first
        return self._failure(what)

    def terminate(self, timeout: float) -> int | None:
        """End the child on purpose; later calls raise DaemonTerminatedError."""
        if self._failure is None:
            pid = self.pid
            self._failure = lambda call: DaemonTerminatedError(
                f"child {pid} was terminated on purpose; {call} cannot run"
            )
        with self._cond:
            self._cond.notify_all()
        code = self.process.shutdown(timeout)
        self._end_waiters()
        if self._lanes is not None:
            self._lanes.close_all()
            self._retired.clear()
        return code

    def _end_waiters(self) -> None:
        """The child has ended: asyncio waiters get the error, the parent's objects are let go."""
        failure = self._failure
        assert failure is not None
        with self._lock:
            waiters = list(self._async.items())
            self._async.clear()
        for rid, on_reply in waiters:
            on_reply((protocol.REPLY, rid, FAILED, failure("the call")))
        self.exports.clear()


def unloadable(what: object, error: BaseException) -> SerializationError:
    """The error of a call whose result arrived but cannot be rebuilt here (`error` says why)."""
    exc = SerializationError(f"the result of {what} cannot be rebuilt in the parent: {type(error).__name__}: {error}")
    exc.__cause__ = error
    return exc


def _module_source(name: str) -> tuple[str, bool] | None:
    if name.split(".")[0] not in SHIPPABLE:
        return None
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return f.read(), spec.submodule_search_locations is not None


# -- what the child may ask of the parent: each returns the value of the answer ----------


def _serve_call(session: Session, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return session.exports.get(target)(*args, **kwargs)


def _serve_getattr(session: Session, target: Any, name: str) -> Any:
    value = getattr(session.exports.get(target), name)
    return value  # by value if pickle can carry it; what is callable stays here (encode_result)


def _serve_setattr(session: Session, target: Any, name: str, value: Any) -> None:
    setattr(session.exports.get(target), name, value)


def _serve_delattr(session: Session, target: Any, name: str) -> None:
    delattr(session.exports.get(target), name)


def _serve_dir(session: Session, target: Any) -> list[str]:
    return sorted(dir(session.exports.get(target)))


def _serve_op(session: Session, target: Any, name: str, args: tuple[Any, ...]) -> Any:
    operator: Callable[..., Any] = OPERATORS[name]  # type: ignore[assignment]
    return operator(session.exports.get(target), *args)


_SERVE: dict[str, Callable[..., Any]] = {
    "importable": lambda session, modules: _serialize.can_import(modules),
    "source": lambda session, name: _module_source(name),
    "call": _serve_call,
    "getattr": _serve_getattr,
    "setattr": _serve_setattr,
    "delattr": _serve_delattr,
    "dir": _serve_dir,
    "op": _serve_op,
}
