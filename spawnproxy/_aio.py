"""`aio(proxy)`: an asyncio view of a proxy.

An awaited request is sent at once from the event loop's thread; its answer is
read by the session's reader thread (or by any blocking caller that happens to
be reading) and handed to the loop with `call_soon_threadsafe`: no thread per
await, and the loop never waits on the channel.  Cancelling the awaiting task
abandons the request exactly as a timeout does: a late answer is dropped and a
reference in it released.

Uses the handle through `_handle`'s module functions, the batching of
`_streams` (shared with the blocking `Stream`) and the session's request
interface (`submit` with a callback, `abandon`, `drop`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from ._handle import (
    Remote,
    asks_attrinfo,
    attribute_of,
    iterator_of,
    known_attribute,
    label_of,
    note_attrinfo,
    path_of,
    result_of,
    session_of,
    target_of,
)
from ._options import current_timeout
from ._proxy import ObjectProxy, handle_of
from ._requests import Label, named_operands
from ._serialize_errors import unloadable_result
from ._session import FAILED, UNLOADABLE, Session
from ._streams import Batches

__all__ = ["AsyncProxy", "aio"]


def aio(proxy: ObjectProxy) -> AsyncProxy:
    """Return an asyncio view of a proxy: its calls, attribute reads and iteration are awaitable.

    `await aio(p).method(x)` calls, `await aio(p).attr` reads an attribute,
    `await aio(p)(x)` calls `p` itself, and `async for x in aio(p).gen()` (or
    `async for x in aio(p)`) iterates in batches read ahead. Awaiting never
    blocks the event loop. A timeout (the `call_timeout` option, or
    `spawnproxy.call_timeout()` around the await) raises `CallTimeoutError`;
    cancelling the awaiting task (`asyncio.timeout`, `wait_for`) abandons the
    call as a timeout does. Results are what the blocking call returns: values,
    or proxies (wrap them in `aio()` again to await their methods).

    Example:
        >>> import asyncio, spawnproxy
        >>> mod = spawnproxy.run_script('''
        ... import time
        ... def slow_square(x):
        ...     time.sleep(0.1)
        ...     return x * x
        ... def count(n):
        ...     yield from range(n)
        ... ''')
        >>> async def main():
        ...     squares = await asyncio.gather(*(aio(mod).slow_square(i) for i in range(3)))
        ...     counted = [x async for x in aio(mod).count(4)]
        ...     return squares, counted
        >>> from spawnproxy import aio
        >>> asyncio.run(main())
        ([0, 1, 4], [0, 1, 2, 3])
        >>> mod.terminate_daemon()
    """
    return AsyncProxy(handle_of(proxy))


class AsyncProxy:
    """The asyncio view of one proxy (see `aio`)."""

    __slots__ = ("_handle",)

    def __init__(self, handle: Remote) -> None:
        self._handle = handle

    def __getattr__(self, name: str) -> AsyncAttribute:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return AsyncAttribute(self._handle, name)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncCall:
        return AsyncCall(self._handle, args, kwargs)

    def __aiter__(self) -> AsyncStream:
        return AsyncStream(self._handle)

    def __repr__(self) -> str:
        return f"aio({label_of(self._handle)})"


class AsyncAttribute:
    """`aio(p).name`: await it to read the attribute, call it to call it, or iterate over it."""

    __slots__ = ("_handle", "_name")

    def __init__(self, handle: Remote, name: str) -> None:
        self._handle = handle
        self._name = name

    def __await__(self) -> Generator[Any, None, Any]:
        return _getattr(self._handle, self._name).__await__()

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncCall:
        return AsyncCall(path_of(self._handle, self._name, True), args, kwargs)

    def __aiter__(self) -> AsyncStream:
        return AsyncStream(self._handle, lambda: _getattr(self._handle, self._name))

    def __getattr__(self, name: str) -> AsyncAttribute:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return AsyncAttribute(path_of(self._handle, self._name, False), name)


class AsyncCall:
    """`aio(p).f(x)`: await it for the result, or `async for` over the result."""

    __slots__ = ("_args", "_handle", "_kwargs")

    def __init__(self, handle: Remote, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._handle = handle
        self._args = args
        self._kwargs = kwargs

    def _call(self) -> Coroutine[Any, Any, Any]:
        handle, args, kwargs = self._handle, self._args, self._kwargs
        return request(
            handle, "call", (args, kwargs), Label(("{}()", label_of(handle))), lambda: named_operands(args, kwargs)
        )

    def __await__(self) -> Generator[Any, None, Any]:
        return self._call().__await__()

    def __aiter__(self) -> AsyncStream:
        return AsyncStream(self._handle, self._call)


async def _getattr(handle: Remote, name: str) -> Any:
    """The attribute read of `Remote.__getattr__`, awaited."""
    session = session_of(handle)
    what = Label(("reading {}.{}", label_of(handle), name))
    session.check(what)
    known = known_attribute(handle, name)
    if known is None and asks_attrinfo(handle, name):
        note_attrinfo(handle, name, await request(handle, "attrinfo", (name,), what))
        known = known_attribute(handle, name)
    if known is not None:
        return known
    return attribute_of(handle, name, await _reply(session, "getattr", (target_of(handle), name), what), what)


async def request(handle: Remote, op: str, operands: tuple[Any, ...], what: object, describe: Any = None) -> Any:
    """Send a request about `handle`'s object and await its result."""
    reply = await _reply(session_of(handle), op, (target_of(handle), *operands), what, describe)
    return result_of(handle, reply, what)


def _submit(
    session: Session, op: str, operands: tuple[Any, ...], what: object, describe: Any = None
) -> tuple[int, asyncio.Future[tuple[Any, ...]]]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[Any, ...]] = loop.create_future()

    def on_reply(reply: tuple[Any, ...]) -> None:
        try:
            loop.call_soon_threadsafe(_settle, session, future, reply, what)
        except RuntimeError:
            session.drop(reply)  # the loop is closed: no one awaits this any more

    named = describe if callable(describe) else (lambda: describe or [])
    rid = session.submit(op, operands, what, named, on_reply)
    return rid, future


def _settle(session: Session, future: asyncio.Future[tuple[Any, ...]], reply: tuple[Any, ...], what: object) -> None:
    """Hand a reply to its future, in the loop's thread; the kinds that never travel become errors."""
    _, _, how, payload = reply
    if future.done():
        session.drop(reply)  # cancelled or timed out while the reply was on its way
    elif how == FAILED:
        future.set_exception(payload)
    elif how == UNLOADABLE:
        future.set_exception(unloadable_result(what, payload))
    else:
        future.set_result(reply)


async def _await(session: Session, rid: int, future: asyncio.Future[tuple[Any, ...]], what: object) -> tuple[Any, ...]:
    """Await a submitted request's reply; on timeout or cancellation, abandon it."""
    timeout = current_timeout(session.call_timeout)
    timer = None
    if timeout is not None:
        timer = asyncio.get_running_loop().call_later(timeout, _expire, future, session, what, timeout)
    try:
        return await future
    except BaseException:
        session.abandon(rid)
        raise
    finally:
        if timer is not None:
            timer.cancel()


def _expire(future: asyncio.Future[tuple[Any, ...]], session: Session, what: object, timeout: float) -> None:
    if not future.done():
        future.set_exception(session.timeout_error(what, timeout))


async def _reply(
    session: Session, op: str, operands: tuple[Any, ...], what: object, describe: Any = None
) -> tuple[Any, ...]:
    rid, future = _submit(session, op, operands, what, describe)
    return await _await(session, rid, future, what)


class AsyncStream:
    """`async for` over a remote iterable: batches read ahead, as `Stream` does (`_streams.Batches`).

    Made from a handle, or from a function making the awaitable whose result is
    iterated (a call or an attribute read, made when iteration starts): a proxy
    is streamed, a local value iterated here.
    Dropping it (a `break`) releases the remote iterator; `aclose()` closes it.
    """

    __slots__ = ("__weakref__", "_batches", "_handle", "_local", "_source")

    def __init__(self, handle: Remote, source: Callable[[], Awaitable[Any]] | None = None) -> None:
        self._handle: Remote | None = handle if source is None else None
        self._source = source  # makes the awaitable whose result is iterated (when iteration starts)
        self._local: Any = None
        self._batches = Batches(session_of(handle), Label(("iterating over {}", label_of(handle))), _submit)

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        batches = self._batches
        buffer = batches.buffer
        if buffer:
            return buffer.popleft()
        if self._local is not None:
            try:
                return next(self._local)
            except StopIteration:
                raise StopAsyncIteration from None
        if batches.target is None:
            await self._open()
            if self._local is not None:
                return await self.__anext__()
        while not buffer:
            if batches.end is not None:
                raise batches.ending(StopAsyncIteration)
            rid, future = batches.asked()
            reply = await _await(batches.session, rid, future, batches.what)
            batches.take(*batches.unpack(reply))
        return buffer.popleft()

    async def _open(self) -> None:
        handle = self._handle
        if handle is None:
            source = self._source
            assert source is not None  # made from a source, not from a handle
            result = await source()
            self._source = None
            if not isinstance(result, ObjectProxy):
                self._local = iter(result)
                return
            handle = handle_of(result)
        batches = self._batches
        reply = await _reply(batches.session, "batch", batches.first(target_of(handle), True), batches.what)
        batches.start(reply, lambda ref: iterator_of(handle, ref))
        self._handle = None

    async def aclose(self) -> None:
        """Stop iterating and close the remote iterator (a generator's `finally` runs)."""
        batches = self._batches
        if batches.give_up():
            await _reply(batches.session, *batches.close_request())
