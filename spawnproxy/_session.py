"""The parent's calling side of the conversation with one child.

A `Session` sends requests and returns their answers: `request` (any
operation), `call` (the most frequent, with a fast path), `submit`/`collect`
(prefetching, asyncio) and `abandon`.  It sends the releases of the child's
objects the parent dropped, and remembers the failure of a child that ended,
for every later call.

What comes back is the receive side's business (`_receiver`: the router, the
lane wait, leader/follower, the reader thread); serving the child's own
requests is `_callbacks`'.  A Session is a `Receiver`, whose lane wait is on
every blocking call's path.  May use: `_receiver` and what it uses, `_lanes`,
`_flush`, `_options`, `_peer`, `_process` (exit texts), `_serialize`, `_serialize_errors`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _flush, _serialize
from ._callbacks import Callbacks
from ._child.channel import SendTimeout
from ._child.protocol import (
    HOW,
    LANE,
    LANE_BITS,
    NESTED,
    PAYLOAD,
    RELEASE,
    REPLY,
    REQUEST,
    TAG_DILL,
    TAG_LANE,
    TAG_PICKLE,
)
from ._errors import CallTimeoutError, DaemonDiedError, DaemonTerminatedError, SpawnProxyError
from ._lanes import Lane, Lanes
from ._options import UNSET, current_timeout, timeouts
from ._peer import Peer
from ._process import describe_exit
from ._receiver import Receiver
from ._router import UNLOADABLE
from ._serialize import PROTOCOL, PickleBuffer, plain_dumps
from ._serialize_errors import unloadable_result

__all__ = ["FAILED", "UNLOADABLE", "Session"]

# The kind of a reply that never came: the child ended (never on the wire); payload: the error.
FAILED = -2
_NO_OPERANDS: Callable[[], Sequence[tuple[str, Any]]] = lambda: ()  # noqa: E731
_UNSET: Any = object()


class Session(Receiver):
    """Requests to one child and the answers to them; the child's requests to us."""

    def __init__(self, process: Peer, call_timeout: float | None) -> None:
        super().__init__(process)
        self.child_version: tuple[int, ...] = tuple(process.hello["version"])
        self.call_timeout = call_timeout
        self.encoder = _serialize.Encoder(self, self.child_version)
        self.callbacks = Callbacks(self)
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        # Lanes need a local socket pair, to pass the lane's socket over.
        self._lanes = Lanes(self.channel) if process.lanes else None
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
            lane = self.local.lane
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
        local = self.local
        lane = local.lane
        if (
            lane is None
            or local.serving is not None
            or self.failure is not None
            or self._abandoned
            or not _serialize.small_values(args)
            or (kwargs and not _serialize.small_values(kwargs.values()))
        ):
            return self.request("call", (target, args, kwargs), what, describe)
        # hot path: inlines request()'s timeout lookup, id and head (tests/test_fastpaths.py proves the frames equal)
        timeout = timeouts.timeout  # current_timeout, inline
        if timeout is UNSET:
            timeout = self.call_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        rid = next(self._ids) << LANE_BITS | lane.number
        payload = plain_dumps((REQUEST, rid, "call", target, args, kwargs), PROTOCOL)
        if self.exports.objects:
            return self._lane_exchange(lane, rid, TAG_PICKLE, payload, None, what, deadline, timeout)
        # _lane_exchange, inline, for a plain pickle while the child holds nothing of ours
        # (no reader to start, no dill to count): the same steps, one call frame less.
        try:
            self.send(TAG_PICKLE, payload, what, deadline, timeout)
        except BaseException:
            if self.channel.pending:
                self._retire_lane(lane, rid)
            raise
        try:
            reply = self._lane_wait(lane, rid, what, deadline, timeout)
        except BaseException:
            self._retire_lane(lane, rid)
            raise
        if self._retired:
            for fd in list(self._retired):
                self._drain_retired(fd)
        if reply[HOW] == UNLOADABLE:
            raise unloadable_result(what, reply[PAYLOAD])
        if self.exports.objects and self._reader is None:
            self._ensure_reader()
        return reply

    def _open_lane(self, what: object, deadline: float | None, timeout: float | None) -> Lane | None:
        if self.failure is not None:
            raise self.failure(what)
        assert self._lanes is not None
        made = self._lanes.make()
        if made is None:
            return None  # 65,535 threads hold a lane: this one reads the channel
        lane, theirs = made
        try:
            self.send(TAG_LANE, LANE.pack(lane.number, 1), what, deadline, timeout, fd=theirs.fileno())
        except BaseException:
            assert lane.close is not None
            lane.close()
            raise
        finally:
            theirs.close()
        self.local.lane = lane
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
        buffers: list[PickleBuffer] | None,
        what: object,
        deadline: float | None,
        timeout: float | None,
    ) -> tuple[Any, ...]:
        """Send an encoded request that `lane` answers; return the answer."""
        # Loading a dill request, the child may ask for dill's source: a plain request,
        # read on the channel, where no caller reads now.  Likewise a child's thread may
        # call an object of ours at any time.
        dill = tag == TAG_DILL
        if dill or (self.exports.objects and self._reader is None):
            if dill:
                with self._lock:
                    self._dill_calls += 1
            self._ensure_reader()
        try:
            try:
                self.send(tag, payload, what, deadline, timeout, buffers)
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
        if reply[HOW] == UNLOADABLE:
            raise unloadable_result(what, reply[PAYLOAD])
        if self.exports.objects and self._reader is None:
            self._ensure_reader()  # the child kept an object of ours: it may call it while no one reads
        return reply

    def _encode(
        self,
        op: str,
        operands: tuple[Any, ...],
        what: object,
        describe: Callable[[], Sequence[tuple[str, Any]]],
        lane: int,
    ) -> tuple[int, bytes, bytes, list[PickleBuffer]]:
        """A new request id, answered on `lane`, and the request's frame: (id, tag, payload, buffers)."""
        if self.failure is not None:
            raise self.failure(what)
        if self._abandoned:
            self._forget_abandoned()
        rid = next(self._ids) << LANE_BITS | lane
        outer = self.local.serving
        head = (REQUEST, rid, op) if outer is None else (NESTED, rid, outer, op)
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
            self.send(tag, payload, what, deadline, timeout, buffers)
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
            if reply[HOW] == UNLOADABLE:
                raise unloadable_result(what, reply[PAYLOAD])
            return reply
        finally:
            if not kept:
                self.forget(rid)
            if self.exports.objects and self._reader is None:
                # The child kept an object of ours: it may call it while no one here reads.
                self._ensure_reader()

    def _deadline(self) -> tuple[float | None, float | None]:
        """(deadline, timeout) of a call this thread starts now."""
        timeout = current_timeout(self.call_timeout)
        return (None if timeout is None else time.monotonic() + timeout), timeout

    def abandon(self, rid: int) -> None:
        """Give up a request: its late reply is dropped, a reference in it released."""
        self.forget(rid)

    def abandon_later(self, rid: int) -> None:
        """`abandon` for finalizers: takes no lock, never blocks."""
        self._abandoned.append(rid)

    # -- sending -------------------------------------------------------------------

    def send(
        self,
        tag: bytes,
        payload: bytes,
        what: object,
        deadline: float | None,
        timeout: float | None,
        buffers: list[PickleBuffer] | None = None,
        fd: int | None = None,
    ) -> None:
        """Send one frame, after the queued releases and lane closes; within `deadline`, or raise."""
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

    def push_releases(self, what: object) -> None:
        """Send the queued releases now, waiting for the channel (the reader, when no call carries them)."""
        with self._send_lock:
            try:
                self._send_releases(None)
            except (EOFError, OSError):
                raise self._fail(what) from None

    def _send_releases(self, deadline: float | None) -> None:
        batch = []
        releases = self.releases
        while releases:
            batch.append(releases.popleft())
        was_pending = self.channel.pending
        try:
            self.channel.send(TAG_PICKLE, _serialize.dumps((RELEASE, batch)), deadline, self._read_ahead)
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
                self.channel.send(TAG_LANE, LANE.pack(number, 0), deadline, self._read_ahead)
            except SendTimeout:
                closing.appendleft(number)
                raise

    def flush_releases_nowait(self, within: float | None = None) -> None:
        """Send the pending releases now if the channel is free (for finalizers: never blocks on a lock).

        With `within`, a child that does not read gets them later (the next frame carries them).
        """
        if self.failure is None and self.releases and self._send_lock.acquire(False):
            try:
                self._send_releases(None if within is None else time.monotonic() + within)
            except (EOFError, OSError, SendTimeout):
                pass  # the child is gone: the next read says so
            finally:
                self._send_lock.release()

    def export(self, obj: Any, weak: bool) -> tuple[Any, ...]:
        """Hold a local object for the child (by_ref); return the persistent id that names it."""
        return self.exports.add(obj, weak)

    def unexport(self, oids: list[int]) -> None:
        """Give back references counted for a message that was never sent."""
        self.exports.release(list(oids))

    # -- ending --------------------------------------------------------------------

    def _fail(self, what: object) -> SpawnProxyError:
        """The channel broke: find out why, remember it for every later call."""
        if self.failure is None:
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
            self.failure = lambda call: DaemonDiedError(f"child {pid} {how}; {call} cannot run{tail}", code)
            first = DaemonDiedError(f"child {pid} {how} during {what}{tail}", code)
            with self._cond:
                self._cond.notify_all()
            self._end_waiters()
            return first
        return self.failure(what)

    def terminate(self, timeout: float) -> int | None:
        """End the child on purpose; later calls raise DaemonTerminatedError."""
        if self.failure is None:
            pid = self.pid
            self.failure = lambda call: DaemonTerminatedError(
                f"child {pid} was terminated on purpose; {call} cannot run"
            )
        with self._cond:
            self._cond.notify_all()
        code = self.process.shutdown(timeout)
        self._end_waiters()
        return code

    def _end_waiters(self) -> None:
        """The child has ended: asyncio waiters get the error; the parent's objects and the lanes are let go."""
        failure = self.failure
        assert failure is not None
        with self._lock:
            waiters = list(self._async.items())
            self._async.clear()
        for rid, on_reply in waiters:
            on_reply((REPLY, rid, FAILED, failure("the call")))
        self.exports.clear()
        if self._lanes is not None:
            self._lanes.close_all()
            self._retired.clear()
