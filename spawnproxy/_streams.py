"""Streams: a remote iterator read in batches, asked for ahead of need.

One implementation of batching, `Batches`, shared by the two views of a
remote iterator: the blocking `Stream` here (what `iter(proxy)` gives) and
`_aio.AsyncStream`.  It owns the batch sizes, the unpacking of a `batch`
reply, the items taken but not yet handed out, the batch asked for ahead and
the end (exhausted, or the exception the remote iterator raised); a view
only waits for the batch asked for, in its own way.

A `batch` request is `(target, size, call_iter)`; its reply's value is
`(items, end, iterator)`: `end` is None while the iterator goes on, True when
it is exhausted, or the encoded exception that ended it; `iterator` is None
when the object is its own iterator, else the reference (REF_* layout) to
the iterator `iter()` made in the child, from which the later batches come.

Uses the session's request interface (`request`, `submit`, `collect`,
`abandon`, `abandon_later`, `flush_releases_nowait`), `_serialize_errors`,
`_requests` and the wire's names; nothing of the handle or the proxies (the
handle makes its streams: it imports this module).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._child import protocol
from ._errors import CallTimeoutError, SerializationError
from ._requests import Label
from ._serialize_errors import rebuild_exception

if TYPE_CHECKING:
    from ._session import Session

# Items in the first batch of a stream, and the most in any batch; each batch is
# STEP times the last, so that a short loop stays short and a long one goes fast.
FIRST_BATCH = 16
MAX_BATCH = 4096
STEP = 4

# A batch asked for: (request id, what its answer is awaited with: None for a blocking stream).
Pending = tuple[int, Any]
# How a view asks for a batch: (session, "batch", operands, what) -> Pending.
Submit = Callable[["Session", str, tuple[Any, ...], object], Pending]


def batch_sizes() -> Iterator[int]:
    """The sizes of the batches a stream asks for, after the first."""
    size = FIRST_BATCH
    while True:
        size = min(size * STEP, MAX_BATCH)
        yield size


def unpack_batch(reply: tuple[Any, ...], what: object) -> tuple[list[Any], Any, Any]:
    """(items, end, iterator) of the reply to a `batch` request; raises the error it carries."""
    _, _, how, payload = reply
    if how == protocol.VALUE:
        return payload  # type: ignore[no-any-return]
    if how == protocol.ERROR:
        raise rebuild_exception(payload)
    raise SerializationError(f"unexpected reply kind {how!r} to {what}")


class Batches:
    """The state of one remote iteration, shared by its blocking and asyncio views.

    `what` names the iteration in errors; `submit` asks for a batch the view's
    way.  A view takes items from `buffer`; when it is empty, it raises
    `ending()` if `end` is set, else waits for `asked()` and hands the reply
    to `take(*unpack(reply))`.  Collecting it gives up the batch asked for and
    releases the remote iterator.
    """

    __slots__ = ("buffer", "end", "pending", "ref", "session", "sizes", "submit", "target", "what")

    def __init__(self, session: Session, what: object, submit: Submit) -> None:
        self.session = session
        self.what = what
        self.submit = submit
        self.sizes = batch_sizes()
        self.buffer: collections.deque[Any] = collections.deque()
        self.end: Any = None  # None: going on; True: ended; else the encoded exception that ends it
        self.pending: Pending | None = None
        self.target: Any = None  # where the batches after the first come from
        self.ref: Any = None  # the reference that holds the remote iterator

    def first(self, target: Any, call_iter: bool) -> tuple[Any, ...]:
        """The operands of the first `batch` request, about `target` (`iter()` of it if `call_iter`)."""
        return (target, FIRST_BATCH, call_iter)

    def start(self, reply: tuple[Any, ...], iterator: Callable[[Any], tuple[Any, Any]]) -> bool:
        """Take the first batch's reply; `iterator(ref)` gives the (target, reference) the
        later batches come from.  True if the object is its own iterator."""
        items, end, ref = unpack_batch(reply, self.what)
        self.target, self.ref = iterator(ref)
        self.take(items, end)
        return ref is None

    def take(self, items: list[Any], end: Any) -> None:
        """Add a batch's items; ask for the next batch at once if the iterator goes on."""
        self.end = end
        if end is None:
            self.pending = self.ask()
        self.buffer.extend(items)

    def ask(self) -> Pending:
        """Ask for the next batch."""
        return self.submit(self.session, "batch", (self.target, next(self.sizes), False), self.what)

    def asked(self) -> Pending:
        """The batch to wait for: the one asked for ahead, or a new one if asking failed."""
        pending, self.pending = self.pending, None
        return pending if pending is not None else self.ask()

    def unpack(self, reply: tuple[Any, ...]) -> tuple[list[Any], Any]:
        """(items, end) of a later batch's reply; an error reply ends the iteration, and is raised."""
        if reply[protocol.HOW] != protocol.VALUE:
            self.end = True
        items, end, _ = unpack_batch(reply, self.what)
        return items, end

    def ending(self, stop: type[Exception]) -> BaseException | type[Exception]:
        """What to raise once the items are all handed out: `stop`, or (once) the remote exception."""
        end = self.end
        if end is True:
            return stop
        self.end = True  # the exception ended the iterator: it is raised once
        return rebuild_exception(end)

    def give_up(self) -> bool:
        """Abandon the batch asked for and drop the items not handed out; True if the remote
        iterator was still going (the view then asks the child to close it)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            rid, _ = pending
            self.session.abandon(rid)
        self.buffer.clear()
        if self.end is None and self.target is not None:
            self.end = True
            return True
        return False

    def close_request(self) -> tuple[str, tuple[Any, ...], Label]:
        """The request that closes the remote iterator (a generator's `finally` runs)."""
        return "close", (self.target,), Label(("closing {}", self.what))

    def __del__(self) -> None:
        pending, session = self.pending, self.session
        if pending is not None:
            rid, _ = pending
            session.abandon_later(rid)
        # Dropping the reference now (it may be the last one) and sending its release at
        # once closes an abandoned remote generator now, not at the next call.
        self.ref = None
        session.flush_releases_nowait()


def ask_blocking(session: Session, op: str, operands: tuple[Any, ...], what: object) -> Pending:
    """How the blocking `Stream` asks for a batch: its id, collected later."""
    return session.submit(op, operands, what), None


class Stream:
    """A local iterator over a remote one: items come in batches, the next batch asked for
    before the current one is handed out (so the child makes it while the parent consumes).

    Dropping the stream (a `break` out of the loop) gives up the batch asked for and
    releases the remote iterator: a remote generator no one else holds is closed there,
    and its `finally` runs.  `close()` closes it explicitly.
    """

    __slots__ = ("__weakref__", "_batches", "_buffer", "own")

    def __init__(self, batches: Batches, own: bool) -> None:
        self._batches = batches
        self._buffer = batches.buffer  # the same deque: next() takes from it without a detour
        self.own = own  # the object is its own iterator: next(p) takes from this stream

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        try:
            return self._buffer.popleft()
        except IndexError:
            return self._refill()

    def _refill(self) -> Any:
        batches = self._batches
        while not self._buffer:
            if batches.end is not None:
                raise batches.ending(StopIteration)
            pending = batches.asked()
            rid, _ = pending
            try:
                reply = batches.session.collect(rid, batches.what, keep_on_timeout=True)
            except CallTimeoutError:
                batches.pending = pending  # still coming: the next call to next() waits for it again
                raise
            batches.take(*batches.unpack(reply))
        return self._buffer.popleft()

    def close(self) -> None:
        """Stop iterating and close the remote iterator (a generator's `finally` runs)."""
        batches = self._batches
        if batches.give_up():
            batches.session.request(*batches.close_request())


def open_stream(session: Session, what: object, target: Any, call_iter: bool, iterator: Any) -> Stream:
    """The blocking stream over `target` (over `iter(target)` if `call_iter`); its first batch is read
    here.  `iterator(ref)` gives the (target, reference) of the remote iterator (see `Batches.start`)."""
    batches = Batches(session, what, ask_blocking)
    reply = session.request("batch", batches.first(target, call_iter), what)
    own = batches.start(reply, iterator)
    return Stream(batches, own)
