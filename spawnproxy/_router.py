"""The router of the parent's receive side, and the waits of the calling threads over it.

Every message a child sends passes through `Router.route`, which returns it to
the reader that waits for it or delivers it where it belongs (see
`_receiver`, which tells the whole receive side).  Two kinds of readers wait
here: a blocking call on its thread's own lane (`_lane_wait`, on every call's
path), and leader/follower on the channel (`_wait`).  `_receiver.Receiver`
adds the reader thread and lanes given up.

May use: the child package's channel and protocol, `_serialize` (decoding),
`_callbacks` (running the child's requests), `_exports`, `_lanes`, `_peer`;
what it needs of the calling side (sending, failing) is declared below and
provided by `Session`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _serialize, _serialize_errors
from ._callbacks import Callbacks
from ._child.channel import Channel
from ._child.protocol import (
    ERROR,
    HOW,
    ID,
    IDS,
    KIND,
    LANE_MASK,
    NESTED,
    OUTER,
    PAYLOAD,
    REF,
    REF_OID,
    REF_TYPE_INFO,
    REF_TYPE_KEY,
    RELEASE,
    REPLY,
    REQUEST,
    STOPPING,
    TAG_PICKLE,
)
from ._errors import CallTimeoutError, SpawnProxyError
from ._exports import ExportTable
from ._lanes import Lane
from ._peer import Peer
from ._serialize import loads

# The kind of a reply that arrived but could not be loaded here (never on the wire).
UNLOADABLE = -1


class ThreadState(threading.local):
    """What one thread of the parent is doing with the session (class defaults: no AttributeError to pay)."""

    serving: int | None = None  # the child's request this thread runs
    lane: Lane | None = None  # where the child answers this thread's blocking calls
    named = False  # the message this thread decodes names an object of the parent's
    reading: Lane | None = None  # the lane of the call whose callback this thread runs (see _retire_lane)


class Router:
    """Reads one child's messages and routes each to the thread, callback or worker it is for."""

    callbacks: Callbacks  # serves the child's requests; set by the subclass, which can answer them

    def __init__(self, process: Peer) -> None:
        self.process = process
        self.channel = process.channel
        self.pid = process.pid
        self.types: dict[int, Any] = {}  # type key -> type info sent by the child
        self.releases: collections.deque[int] = collections.deque()
        self.exports = ExportTable()  # the parent's objects the child holds (by_ref)
        # Makes the proxy of a child's object that arrived inside a message: (oid, type info) -> proxy.
        self.make_proxy: Callable[[int, Any], Any] | None = None
        self.local = ThreadState()
        self.failure: Callable[[object], SpawnProxyError] | None = (
            None  # makes the error of a call once the child has ended; None while it runs
        )
        self._stopping = False  # a served daemon said it stops on purpose
        self._recv_lock = threading.Lock()
        # One lock guards the tables below; followers wait on a condition over it.
        # The lock is used directly where no one waits, and notify only runs when
        # there are followers: a lone caller pays for neither.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._followers = 0
        self._replies: dict[int, tuple[Any, ...]] = {}
        self._waiting: set[int] = set()
        self._nested: dict[int, collections.deque[tuple[Any, ...]]] = {}  # waited-for id -> child requests
        self._async: dict[int, Callable[[tuple[Any, ...]], None]] = {}  # id -> what to do with its reply
        self._abandoned: collections.deque[int] = collections.deque()  # dropped by finalizers, not yet forgotten

    # -- what the calling side provides ---------------------------------------------

    def send(self, tag: bytes, payload: bytes, what: object, deadline: float | None, timeout: float | None) -> None:
        """Send one frame to the child (see Session.send)."""
        raise NotImplementedError

    def push_releases(self, what: object) -> None:
        """Send the queued releases now, waiting for the channel (see Session.push_releases)."""
        raise NotImplementedError

    def _fail(self, what: object) -> SpawnProxyError:
        """The channel broke: the error to raise, every waiter woken (see Session._fail)."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether the child has ended (or the session was ended)."""
        return self.failure is not None

    def check(self, what: object) -> None:
        """Raise the error of an ended child (terminated or died), if it has ended."""
        if self.failure is not None:
            raise self.failure(what)

    # -- the router ------------------------------------------------------------------

    def route(self, message: tuple[Any, ...], rid: int | None = None) -> tuple[Any, ...] | None:
        """Return `message` if it is for the reader waiting for `rid` (its reply or a request
        nested in it); else deliver it where it belongs and return None."""
        kind = message[KIND]
        if kind == REPLY:
            reply_id = message[ID]
            if reply_id == rid:
                return message
            if self._abandoned:
                self._forget_abandoned()
            with self._lock:
                if reply_id in self._waiting:
                    self._replies[reply_id] = message
                    if self._followers:
                        self._cond.notify_all()
                    return None
                on_reply = self._async.pop(reply_id, None)
            if on_reply is not None:
                on_reply(message)
            else:
                self.drop(message)  # the late answer of a call that timed out
        elif kind == NESTED:
            outer = message[OUTER]
            if outer == rid:
                return message
            with self._lock:
                if outer in self._waiting:
                    self._nested.setdefault(outer, collections.deque()).append(message)
                    if self._followers:
                        self._cond.notify_all()
                    return None
            self.callbacks.to_worker(message)
        elif kind == RELEASE:
            self.exports.release(message[IDS])
        elif kind == STOPPING:
            self._stopping = True
        else:
            self.callbacks.to_worker(message)  # a REQUEST of a thread of the child's
        return None

    def drop(self, reply: tuple[Any, ...]) -> None:
        """Let go of a reply no one will take: a reference the child counted for it is given back."""
        if reply[HOW] == REF:
            self.releases.append(reply[PAYLOAD][REF_OID])

    def forget(self, rid: int) -> None:
        """No one waits for `rid` any more: its reply is dropped, callbacks nested in it go to the worker."""
        with self._lock:
            self._async.pop(rid, None)
            self._waiting.discard(rid)
            reply = self._replies.pop(rid, None)
            orphans = self._nested.pop(rid, None)
        if reply is not None:
            self.drop(reply)
        if orphans:
            # The child still waits for their answers: someone must give them.
            for message in orphans:
                self.callbacks.to_worker(message)

    def _forget_abandoned(self) -> None:
        while self._abandoned:
            try:
                rid = self._abandoned.popleft()
            except IndexError:
                return
            self.forget(rid)

    def timeout_error(self, what: object, timeout: float | None) -> CallTimeoutError:
        return CallTimeoutError(
            f"{what} did not finish within {timeout} s in child {self.pid}; it goes on running there, "
            "and its answer will be discarded"
        )

    def _interrupt(self, interrupted: bool) -> bool:
        """A Ctrl-C while waiting: True if the call in the child was interrupted, False to give up.

        The first interrupts the call in the child, whose answer is then a
        KeyboardInterrupt raised there.  A second one abandons the call.
        """
        if interrupted or self.failure is not None:
            return False
        self.process.interrupt()
        return True

    # -- the lane wait: a blocking call reads its answer on its thread's own socket ------

    def _lane_wait(
        self, lane: Lane, rid: int, what: object, deadline: float | None, timeout: float | None
    ) -> tuple[Any, ...]:
        channel = lane.channel
        interrupted = False
        while True:
            try:
                while True:
                    if self.failure is not None:
                        raise self.failure(what)
                    if deadline is not None:
                        ready = channel.wait(max(0.0, deadline - time.monotonic()))
                        if ready is None:
                            raise self.timeout_error(what, timeout)
                        if ready[0] != channel.fd:
                            raise self._fail(what)  # only the exit handle is ready: the child is gone
                    try:
                        # With no deadline, straight into a blocking read: the kernel wakes
                        # this thread when the answer comes.  The child's end closes when it
                        # dies (nothing else holds it, see _child.serve), and the read gives up
                        # every LANE_CHECK seconds to look at the child anyway.
                        message = self._receive(what, channel)
                    except BlockingIOError:
                        if self.process.poll() is not None:
                            raise self._fail(what) from None
                        continue
                    # hot path: route()'s first case, inline (a call here would cost every call)
                    if message[KIND] == REPLY and message[ID] == rid:
                        return message
                    if self.route(message, rid) is not None:
                        # A callback of this call: run here.  This thread reads the lane
                        # again once it returns, whatever the calls it makes meanwhile do.
                        local = self.local
                        outer, local.reading = local.reading, lane
                        try:
                            self.callbacks.serve(message)
                        finally:
                            local.reading = outer
                    del message
            except KeyboardInterrupt:
                interrupted = self._interrupt(interrupted)
                if not interrupted:
                    raise

    # -- leader/follower: waiting for a reply on the channel --------------------------------

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
                        if self.failure is not None:
                            raise self.failure(what)
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
                        self._release_recv_lock()
                    if job[KIND] == REPLY:
                        return job
                # A callback of this call: run here, where a call it makes to the child
                # can read its own answer (the receive lock is free again).
                self.callbacks.serve(job)
            except KeyboardInterrupt:
                interrupted = self._interrupt(interrupted)
                if not interrupted:
                    raise

    def _lead(self, rid: int, what: object, deadline: float | None, timeout: float | None) -> tuple[Any, ...]:
        """Read until the reply to `rid`, or a request nested in it, arrives; route all else."""
        channel = self.channel
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self.failure is not None:
                raise self.failure(what)
            ready = channel.wait(remaining)
            if ready is None:
                raise self.timeout_error(what, timeout)
            if ready[0] != channel.fd:
                raise self._fail(what)  # only the exit handle is ready: the child is gone
            message = self.route(self._receive(what), rid)
            if message is not None:
                return message

    def _release_recv_lock(self) -> None:
        with self._lock:
            self._recv_lock.release()
            if self._followers:
                self._cond.notify_all()

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
            self._release_recv_lock()
        return True

    # -- reading and decoding one message ---------------------------------------------

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
            message: tuple[Any, ...] = loads(payload) if tag == TAG_PICKLE else self._decode(tag, payload)
        except (Exception, SystemExit) as exc:  # a sys.exit pickled by reference: no reason to exit here
            # The answer to some call that cannot be rebuilt here: it must reach its
            # own caller as an error (or be dropped if late), not fail whoever reads.
            kind, rid, unreached = _serialize_errors.message_head(tag, payload)
            self.releases.extend(unreached)  # the child counted them for this message
            if kind == REPLY:
                message = (REPLY, rid, UNLOADABLE, exc)
            elif kind in (REQUEST, NESTED):
                # A request of the child's we cannot load: it gets the error as its answer.
                error = _serialize_errors.unloadable_request(exc)
                self.send(TAG_PICKLE, _serialize.dumps((REPLY, rid, ERROR, error)), what, None, None)
                message = (RELEASE, [])
            else:
                raise
        if message[KIND] == REPLY and message[HOW] == REF and message[PAYLOAD][REF_TYPE_INFO] is not None:
            # A type is described once: keep it even if this answer is dropped.
            self.types[message[PAYLOAD][REF_TYPE_KEY]] = message[PAYLOAD][REF_TYPE_INFO]
        return message

    def _decode(self, tag: bytes, payload: bytes | memoryview) -> tuple[Any, ...]:
        """A message that is not a plain pickle (see `_serialize.decode`)."""
        local = self.local
        local.named = False
        message: tuple[Any, ...] = _serialize.decode(tag, payload, self._resolve_pid)
        if local.named and message[KIND] == REPLY and message[ID] & LANE_MASK:
            # The child keeps the objects of ours that an answer on a lane names until we have
            # read it (see serve.Child._run_next): a negative id in the next releases says so.
            self.releases.append(-message[ID])
        return message

    def _resolve_pid(self, pid: Any) -> Any:
        """The object a persistent id in the child's message stands for (see protocol)."""
        if pid[0] == "local":
            self.local.named = True
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
