"""Pyro5: a `Daemon` in a fresh interpreter on a Unix domain socket, reached with a `Proxy`.

Pyro5 only serves exposed members, and plain instance attributes are never exposed, so the
server hosts `PyroTarget`, a thin exposed wrapper with ``value`` as a property. Run as a module,
this file is the server.
"""

from __future__ import annotations

import sys
from typing import Any

import Pyro5
import Pyro5.api

from benchmarks.peers.base import ProxyHandle, Unsupported, remove_socket, socket_path, start_server, stop_process
from benchmarks.target import Holder, Target

DIST = "Pyro5"
NOTES = [
    "Daemon in a fresh interpreter on a Unix domain socket; serializer 'msgpack', which carries "
    "bytes as bytes (the default serpent base64-encodes them; marshal fails on attribute access)",
    "a Proxy may not be shared between threads: each thread makes its own Proxy (and connection)",
    "`make()` registers the Holder and autoproxies it; Pyro5 has no distributed GC, so dropping "
    "the proxy releases nothing on the server",
    "msgpack (like every Pyro5 serializer) cannot carry a NumPy array, so that case is not applicable",
]

SERIALIZER = "msgpack"


@Pyro5.api.expose
class PyroTarget:
    """An exposed wrapper of `Target` (Pyro5 exposes neither inherited methods nor attributes)."""

    def __init__(self) -> None:
        self._target = Target()

    @property
    def value(self) -> Any:
        return self._target.value

    @value.setter
    def value(self, v: Any) -> None:
        self._target.value = v

    def noop(self) -> None:
        self._target.noop()

    def add(self, a: int, b: int) -> Any:
        return self._target.add(a, b)

    def echo(self, x: Any) -> Any:
        return self._target.echo(x)

    def make(self) -> PyroHolder:
        holder = PyroHolder(self._target.make())
        self._pyroDaemon.register(holder)  # type: ignore[attr-defined]
        return holder


@Pyro5.api.expose
class PyroHolder:
    """An exposed wrapper of `Holder` (Pyro5 will not proxy an object that exposes nothing)."""

    def __init__(self, holder: Holder) -> None:
        self._holder = holder

    def locked(self) -> bool:
        return self._holder.lock.locked()


def _proxy(uri: str) -> Any:
    proxy = Pyro5.api.Proxy(uri)
    proxy._pyroSerializer = SERIALIZER
    return proxy


class Pyro5Handle(ProxyHandle):
    """A Pyro5 proxy of the `PyroTarget`; owns the server unless made for another thread."""

    def __init__(self, uri: str | None = None) -> None:
        self._proc = None
        self._path = None
        if uri is None:
            self._path = socket_path()
            self._proc, uri = start_server("benchmarks.peers.pyro5_peer", self._path)
        self._uri = uri
        self._p = _proxy(uri)

    def echo(self, x: Any) -> Any:
        if not isinstance(x, (bytes, str, int, float)):
            raise Unsupported(f"Pyro5's {SERIALIZER} serializer cannot carry a {type(x).__name__}")
        return self._p.echo(x)

    def for_thread(self) -> Pyro5Handle:
        return Pyro5Handle(self._uri)

    def close(self) -> None:
        self._p._pyroClaimOwnership()  # close() may run on another thread
        self._p._pyroRelease()
        if self._proc is not None:
            stop_process(self._proc)
        if self._path is not None:
            remove_socket(self._path)


def start() -> Pyro5Handle:
    """Start a Pyro5 daemon hosting a `PyroTarget` and connect to it."""
    return Pyro5Handle()


def _serve(path: str) -> None:
    """The server process: print the URI, then serve until terminated."""
    daemon = Pyro5.api.Daemon(unixsocket=path)
    print(daemon.register(PyroTarget(), "target"), flush=True)
    daemon.requestLoop()


if __name__ == "__main__":
    _serve(sys.argv[1])
