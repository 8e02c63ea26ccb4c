"""The parent's side of the conversation with one child.

Any number of threads may call at once.  Each request gets its own id; the
thread that finds the receive lock free reads the channel for everyone
("leader/follower"): a single caller thus reads its own answer with no thread
hand-off, and answers for other threads are handed over through a condition.
While it waits, the leader also serves the requests the child sends (the
protocol is symmetric), and it watches the child's exit handle, so a child
that dies becomes an error at once instead of a hang.
"""

from __future__ import annotations

import collections
import importlib.util
import itertools
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _serialize, _wire
from ._errors import (
    CallTimeoutError,
    DaemonDiedError,
    DaemonTerminatedError,
    SerializationError,
    SpawnProxyError,
)
from ._options import current_timeout
from ._peer import Peer
from ._process import describe_exit

# The kind of a reply that arrived but could not be loaded here (never on the wire).
_UNLOADABLE = -1
# Packages the child may ask its parent for when it lacks them (pure Python).
SHIPPABLE = frozenset({"dill"})
_NO_OPERANDS: Callable[[], Sequence[tuple[str, Any]]] = lambda: ()  # noqa: E731


class Session:
    """Requests to one child and the answers to them."""

    def __init__(self, process: Peer, call_timeout: float | None) -> None:
        self.process = process
        self.channel = process.channel
        self.pid = process.pid
        self.child_version: tuple[int, ...] = tuple(process.hello["version"])
        self.call_timeout = call_timeout
        self.encoder = _serialize.Encoder(self, self.child_version)
        self.types: dict[int, Any] = {}  # type key -> type info sent by the child
        self.releases: collections.deque[int] = collections.deque()
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
        self._ids = itertools.count(1)
        self._failure: Callable[[object], SpawnProxyError] | None = None

    # -- calling -------------------------------------------------------------------

    def request(
        self,
        op: str,
        operands: tuple[Any, ...],
        what: object,
        describe: Callable[[], Sequence[tuple[str, Any]]] = _NO_OPERANDS,
    ) -> tuple[Any, ...]:
        """Send a request and return the child's reply; `what` names it in errors."""
        if self._failure is not None:
            raise self._failure(what)
        timeout = current_timeout(self.call_timeout)
        rid = next(self._ids)
        tag, payload, buffers = self.encoder.encode((_wire.REQUEST, rid, op) + operands, describe)
        with self._lock:
            self._waiting.add(rid)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._send(tag, payload, what, deadline, timeout, buffers)
            reply = self._wait(rid, what, deadline, timeout)
            if reply[2] == _UNLOADABLE:
                error = reply[3]
                raise SerializationError(
                    f"the result of {what} cannot be rebuilt in the parent: {type(error).__name__}: {error}"
                ) from error
            return reply
        finally:
            with self._lock:
                self._waiting.discard(rid)
                self._replies.pop(rid, None)

    def _send(
        self,
        tag: bytes,
        payload: bytes,
        what: object,
        deadline: float | None,
        timeout: float | None,
        buffers: list[pickle.PickleBuffer] | None = None,
    ) -> None:
        lock = self._send_lock
        if not lock.acquire(True, -1 if deadline is None else max(0.0, deadline - time.monotonic())):
            raise self._timeout(what, timeout)  # another thread's send holds the channel
        try:
            if self.releases:
                self._send_releases(deadline)
            self.channel.send(tag, payload, deadline, self._read_ahead, buffers)
        except _wire.SendTimeout:
            raise self._timeout(what, timeout) from None
        except (EOFError, OSError):
            raise self._fail(what) from None
        finally:
            lock.release()

    def _send_releases(self, deadline: float | None) -> None:
        batch = []
        releases = self.releases
        while releases:
            batch.append(releases.popleft())
        try:
            self.channel.send(_wire.TAG_PICKLE, _serialize.dumps((_wire.RELEASE, batch)), deadline, self._read_ahead)
        except _wire.SendTimeout:
            releases.extendleft(reversed(batch))  # not sent: they go with the next request
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

    def _wait(self, rid: int, what: object, deadline: float | None, timeout: float | None) -> tuple[Any, ...]:
        interrupted = False
        while True:
            try:
                with self._lock:
                    while True:
                        reply = self._replies.pop(rid, None)
                        if reply is not None:
                            return reply
                        if self._failure is not None:
                            raise self._failure(what)
                        if self._recv_lock.acquire(False):
                            break
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise self._timeout(what, timeout)
                        self._followers += 1
                        try:
                            self._cond.wait(remaining)
                        finally:
                            self._followers -= 1
                try:
                    return self._lead(rid, what, deadline, timeout)
                finally:
                    with self._lock:
                        self._recv_lock.release()
                        if self._followers:
                            self._cond.notify_all()
            except KeyboardInterrupt:
                # First Ctrl-C: interrupt the call in the child, whose answer is then a
                # KeyboardInterrupt raised there.  A second one abandons the call.
                if interrupted or self._failure is not None:
                    raise
                interrupted = True
                self.process.interrupt()

    def _lead(self, rid: int, what: object, deadline: float | None, timeout: float | None) -> tuple[Any, ...]:
        channel = self.channel
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._failure is not None:
                raise self._failure(what)
            ready = channel.wait(remaining)
            if ready is None:
                raise self._timeout(what, timeout)
            if ready[0] != channel.fd:
                raise self._fail(what)  # only the exit handle is ready: the child is gone
            try:
                tag, payload = channel.recv()
            except (EOFError, OSError):
                raise self._fail(what) from None
            try:
                message: tuple[Any, ...] = _serialize.decode(tag, payload)
            except Exception as exc:
                # The answer to some call that cannot be rebuilt here: it must reach its
                # own caller as an error (or be dropped if late), not fail whoever reads.
                reply_id = _serialize.reply_id(tag, payload)
                if reply_id is None:
                    raise
                message = (_wire.REPLY, reply_id, _UNLOADABLE, exc)
            kind = message[0]
            if kind == _wire.REPLY:
                if message[2] == _wire.REF and message[3][2] is not None:
                    # A type is described once: keep it even if this answer is dropped.
                    self.types[message[3][1]] = message[3][2]
                if message[1] == rid:
                    return message
                with self._lock:
                    if message[1] in self._waiting:
                        self._replies[message[1]] = message
                        if self._followers:
                            self._cond.notify_all()
                        continue
                # The late answer of a call that timed out: dropped, and a reference
                # the child counted for it is given back.
                if message[2] == _wire.REF:
                    self.releases.append(message[3][0])
            elif kind == _wire.REQUEST:
                self._serve(message)

    def _timeout(self, what: object, timeout: float | None) -> CallTimeoutError:
        return CallTimeoutError(
            f"{what} did not finish within {timeout} s in child {self.pid}; it goes on running there, "
            "and its answer will be discarded"
        )

    # -- the child's requests -------------------------------------------------------

    def _serve(self, message: tuple[Any, ...]) -> None:
        rid, op, operands = message[1], message[2], message[3:]
        how: int
        payload: Any
        try:
            if op == "importable":
                how, payload = _wire.VALUE, _serialize.can_import(operands[0])
            elif op == "source":
                how, payload = _wire.VALUE, _module_source(operands[0])
            else:
                raise ValueError(f"unknown request {op!r} from the child")
        except Exception as exc:
            how, payload = _wire.ERROR, f"{type(exc).__name__}: {exc}"
        with self._send_lock:
            try:
                self.channel.send(_wire.TAG_PICKLE, _serialize.dumps((_wire.REPLY, rid, how, payload)))
            except (EOFError, OSError):
                pass  # the child is gone: the next read says so, with its exit code

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
            self._failure = lambda call: DaemonDiedError(
                f"child {pid} ended by itself ({text}); {call} cannot run{tail}", code
            )
            first = DaemonDiedError(f"child {pid} ended by itself ({text}) during {what}{tail}", code)
            with self._cond:
                self._cond.notify_all()
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
        return self.process.shutdown(timeout)


def _module_source(name: str) -> tuple[str, bool] | None:
    if name.split(".")[0] not in SHIPPABLE:
        return None
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return f.read(), spec.submodule_search_locations is not None
