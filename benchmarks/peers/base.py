"""The interface every peer module implements, and helpers they share.

A peer module defines ``DIST`` (the distribution whose version is reported, or ``None``),
``NOTES`` (how the peer is configured, shown in the reports) and ``start() -> Handle``, which
starts a fresh server process and connects to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: what a server process needs on its path to import ``benchmarks``."""


class Unsupported(Exception):
    """The peer cannot do this case by design; the message says why."""


class Handle(Protocol):
    """A connection to one server process hosting a `benchmarks.target.Target`."""

    def noop(self) -> None:
        """Call ``p.noop()``."""

    def add(self, a: int, b: int) -> Any:
        """Call ``p.add(a, b)``."""

    def get_value(self) -> Any:
        """Read ``p.value``."""

    def set_value(self, v: int) -> None:
        """Write ``p.value = v``."""

    def echo(self, x: Any) -> Any:
        """Call ``p.echo(x)``."""

    def make_ref(self) -> None:
        """Create one remote reference with ``p.make()`` and drop it."""

    def for_thread(self) -> Handle:
        """A handle to use from another thread (``self`` where one proxy may be shared)."""

    def stream_sum(self, n: int) -> int:
        """Sum ``p.numbers(n)`` by iterating it (streamed where the peer can)."""

    def step_sum(self, n: int) -> int:
        """Sum ``p.numbers(n)`` with one round trip per item."""

    def gather_adds(self, n: int) -> None:
        """Await ``n`` concurrent ``p.add(i, 1)`` calls (asyncio)."""

    def close(self) -> None:
        """End the server process."""


class ProxyHandle:
    """The cases for a peer whose proxy `self._p` forwards calls and attributes.

    Subclasses set `self._p` and add `close()`; they override a case where the
    peer differs (what it can carry, how threads share a proxy).
    """

    _p: Any

    def noop(self) -> None:
        self._p.noop()

    def add(self, a: int, b: int) -> Any:
        return self._p.add(a, b)

    def get_value(self) -> Any:
        return self._p.value

    def set_value(self, v: int) -> None:
        self._p.value = v

    def echo(self, x: Any) -> Any:
        return self._p.echo(x)

    def make_ref(self) -> None:
        ref = self._p.make()
        del ref

    def for_thread(self) -> Any:
        return self

    def stream_sum(self, n: int) -> int:
        raise Unsupported("streaming is measured for spawnproxy only")

    def step_sum(self, n: int) -> int:
        raise Unsupported("streaming is measured for spawnproxy only")

    def gather_adds(self, n: int) -> None:
        raise Unsupported("asyncio throughput is measured for spawnproxy only")


def socket_path() -> str:
    """A fresh path for a Unix domain socket, in a directory of its own."""
    return os.path.join(tempfile.mkdtemp(prefix="spbench-"), "sock")


def remove_socket(path: str) -> None:
    """Remove a path made by `socket_path`, and its directory."""
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Terminate a server process, then kill it if it does not end in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def start_server(module: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Run ``python -m module *args`` in a fresh interpreter; return it and the first line it prints."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        code = proc.wait(5)
        raise RuntimeError(f"server {module} exited with code {code} before it was ready")
    return proc, line


class EchoHandle:
    """A handle on an echo child: each operation is one round trip of the message a call would carry.

    ``(name, args)`` goes there and comes back; the answers (``add``'s sum, the value read) are
    made here from the echoed message, so that the cases can check them. A subclass sends and
    receives (``_round_trip``) and ends its child (``close``).
    """

    _value = 0

    def _round_trip(self, msg: Any) -> Any:
        raise NotImplementedError

    def noop(self) -> None:
        self._round_trip(("noop", ()))

    def add(self, a: int, b: int) -> Any:
        _, (x, y) = self._round_trip(("add", (a, b)))
        return x + y

    def get_value(self) -> Any:
        self._round_trip(("value", ()))
        return self._value

    def set_value(self, v: int) -> None:
        _, (self._value,) = self._round_trip(("value", (v,)))

    def echo(self, x: Any) -> Any:
        return self._round_trip(("echo", (x,)))[1][0]

    def make_ref(self) -> None:
        self._round_trip(("make", ()))

    def for_thread(self) -> EchoHandle:
        return self

    def stream_sum(self, n: int) -> int:
        raise Unsupported("the raw echo has no generators")

    step_sum = stream_sum

    def gather_adds(self, n: int) -> None:
        raise Unsupported("the raw echo has no asyncio interface")
