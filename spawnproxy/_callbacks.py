"""Callbacks: the parent serving the requests its child makes of it.

The protocol is symmetric: while it runs a request of ours, the child may ask
the parent something (call, read an attribute of, ... an object the parent
sent by reference, or ask for a module's source it lacks).  The receive side
(`_router`) decides who runs such a request: the thread that waits for the
request it is nested in (`Callbacks.serve`, called there), or the worker
thread here, one at a time (`Callbacks.to_worker`).  Either way the answer is
sent back as a REPLY, an error included: the child waits for one.

May use: the session's public interface (`local`, `exports`, `encoder`,
`send`, `closed`, `pid`), `_serialize`, the child package's protocol and
operators.  Nothing here reads the channel.
"""

from __future__ import annotations

import importlib.util
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _serialize, _serialize_errors
from ._child.operators import OPERATORS
from ._child.protocol import (
    ERROR,
    ID,
    KIND,
    NESTED,
    NESTED_OP,
    NESTED_OPERANDS,
    OP,
    REPLY,
    REQUEST_OPERANDS,
    TAG_PICKLE,
    VALUE,
)
from ._errors import SpawnProxyError

if TYPE_CHECKING:
    from ._session import Session

# Packages the child may ask its parent for when it lacks them (pure Python).
SHIPPABLE = frozenset({"dill"})
# How long (s) the worker stays after its last job.
LINGER = 1.0


class Callbacks:
    """Runs the child's requests of one session and answers them; a worker thread for the homeless."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def serve(self, message: tuple[Any, ...]) -> None:
        """Run a request of the child's and send the answer (never while holding the receive lock)."""
        if message[KIND] == NESTED:
            rid, op, operands = message[ID], message[NESTED_OP], message[NESTED_OPERANDS:]
        else:
            rid, op, operands = message[ID], message[OP], message[REQUEST_OPERANDS:]
        message = ()
        session = self._session
        local = session.local
        outer = local.serving
        local.serving = rid  # what this thread asks the child meanwhile is nested in it
        value: Any = None
        try:
            try:
                value = SERVE[op](session, *operands)
            finally:
                local.serving = outer
                operands = ()
            # What cannot travel by value goes by reference: the child gets a stand-in.
            tag, payload, buffers = session.encoder.encode_result((REPLY, rid, VALUE), value)
        except BaseException as exc:  # a KeyboardInterrupt too: it reaches the child's call, then ours
            # Also when the answer cannot be encoded: the child waits for one, whatever happens.
            error = _serialize_errors.encode_exception(exc)
            del exc
            tag, payload, buffers = TAG_PICKLE, _serialize.dumps((REPLY, rid, ERROR, error)), []
        del value
        try:
            session.send(tag, payload, "answering the child", None, None, buffers)
        except SpawnProxyError:
            pass  # the child is gone: the next read says so, with its exit code

    def to_worker(self, message: tuple[Any, ...]) -> None:
        """Queue a child's request that no waiting thread of ours will run."""
        self._jobs.put(message)
        with self._lock:
            if self._worker is None and not self._session.closed:
                self._worker = threading.Thread(
                    target=self._work, name=f"spawnproxy-callbacks-{self._session.pid}", daemon=True
                )
                self._worker.start()

    def _work(self) -> None:
        while True:
            try:
                message = self._jobs.get(timeout=LINGER)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty() or self._session.closed:
                        self._worker = None
                        return
                continue
            if not self._session.closed:
                self.serve(message)
            del message


def module_source(name: str) -> tuple[str, bool] | None:
    """The source of a shippable module, and whether it is a package; None if it is not one.

    >>> module_source("json") is None  # the parent ships only SHIPPABLE packages
    True
    """
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


SERVE: dict[str, Callable[..., Any]] = {
    "importable": lambda session, modules: _serialize.can_import(modules),
    "source": lambda session, name: module_source(name),
    "call": _serve_call,
    "getattr": _serve_getattr,
    "setattr": _serve_setattr,
    "delattr": _serve_delattr,
    "dir": _serve_dir,
    "op": _serve_op,
}
