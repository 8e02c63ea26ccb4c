"""execnet: a popen gateway (a fresh interpreter) running a dispatch loop sent with `remote_exec`.

execnet has no proxies: the remote side keeps the `Target` and answers ``(op, arg)`` messages on
one channel. Remote references are ids in a table on the remote side, released with a one-way
``drop`` message.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import execnet

from benchmarks.peers.base import ROOT, Unsupported

DIST = "execnet"
NOTES = [
    "popen gateway on the same interpreter, dispatch loop in remote_exec, one channel",
    "no proxies: `make` returns an id in a remote table, dropped with a one-way message",
    "threads share the channel under a lock (one request in flight)",
    "execnet's serializer carries only builtin types, so the NumPy case is not applicable",
]

_LOOP = """
import sys
sys.path.insert(0, channel.receive())
from benchmarks.target import Target
target = Target()
refs = {}
for op, arg in channel:
    if op == "noop":
        channel.send(target.noop())
    elif op == "add":
        channel.send(target.add(*arg))
    elif op == "get":
        channel.send(target.value)
    elif op == "set":
        target.value = arg
        channel.send(None)
    elif op == "echo":
        channel.send(target.echo(arg))
    elif op == "make":
        obj = target.make()
        refs[id(obj)] = obj
        channel.send(id(obj))
    elif op == "drop":
        del refs[arg]
"""

_BUILTIN = (bytes, str, int, float, tuple, list, dict, type(None))


class ExecnetHandle:
    """A gateway and the channel of its dispatch loop."""

    def __init__(self) -> None:
        self._gw = execnet.makegateway(f"popen//python={sys.executable}")
        self._ch = self._gw.remote_exec(_LOOP)
        self._ch.send(str(ROOT))
        self._lock = threading.Lock()

    def _call(self, op: str, arg: Any = None) -> Any:
        with self._lock:
            self._ch.send((op, arg))
            return self._ch.receive()

    def noop(self) -> None:
        self._call("noop")

    def add(self, a: int, b: int) -> Any:
        return self._call("add", (a, b))

    def get_value(self) -> Any:
        return self._call("get")

    def set_value(self, v: int) -> None:
        self._call("set", v)

    def echo(self, x: Any) -> Any:
        if not isinstance(x, _BUILTIN):
            raise Unsupported(f"execnet's serializer cannot carry a {type(x).__name__}")
        return self._call("echo", x)

    def make_ref(self) -> None:
        ref = self._call("make")
        with self._lock:
            self._ch.send(("drop", ref))

    def for_thread(self) -> ExecnetHandle:
        return self

    def close(self) -> None:
        self._ch.close()
        self._gw.exit()


def start() -> ExecnetHandle:
    """Start a popen gateway running the dispatch loop."""
    return ExecnetHandle()
