"""RPyC: a `ThreadedServer` in a fresh interpreter on a Unix domain socket, reached with RPyC.

The service exposes the `Target` instance; the client works on its netref, so ``p.noop()`` is an
attribute lookup and a call, as RPyC does it. Run as a module, this file is the server.
"""

from __future__ import annotations

import sys
from typing import Any

import rpyc
from rpyc.utils.factory import unix_connect

from benchmarks.peers.base import ProxyHandle, Unsupported, remove_socket, socket_path, start_server, stop_process
from benchmarks.target import Target

DIST = "rpyc"
NOTES = [
    "ThreadedServer in a fresh interpreter on a Unix domain socket (over TCP loopback, without "
    "TCP_NODELAY, RPyC's asynchronous releases stall ~40 ms on delayed ACKs)",
    "config allow_public_attrs, allow_setattr; `p` is a netref to the Target, so `p.noop()` is "
    "an attribute lookup plus a call",
    "`p.make()` returns a netref, released (asynchronously) when dropped",
    "NumPy arrays travel as netrefs, not by value, so the NumPy case is not applicable",
]

CONFIG = {"allow_public_attrs": True, "allow_setattr": True, "sync_request_timeout": 300}


class RpycHandle(ProxyHandle):
    """An RPyC connection and the netref of the `Target`."""

    def __init__(self) -> None:
        self._path = socket_path()
        self._proc, _ = start_server("benchmarks.peers.rpyc_peer", self._path)
        try:
            self._conn = unix_connect(self._path, config=CONFIG)
            self._p: Any = self._conn.root.target
        except BaseException:
            self._stop()
            raise

    def echo(self, x: Any) -> Any:
        if not isinstance(x, (bytes, str, int, float)):
            raise Unsupported(f"RPyC passes a {type(x).__name__} by reference (netref), not by value")
        return self._p.echo(x)

    def _stop(self) -> None:
        stop_process(self._proc)
        remove_socket(self._path)

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            self._stop()


def start() -> RpycHandle:
    """Start an RPyC server hosting a `Target` and connect to it."""
    return RpycHandle()


def _serve(path: str) -> None:
    """The server process: listen, say so, then serve until terminated."""
    from rpyc.utils.server import ThreadedServer

    target = Target()

    class TargetService(rpyc.Service):  # type: ignore[misc]
        exposed_target = target

    server = ThreadedServer(TargetService, socket_path=path, protocol_config=CONFIG)
    server.listener.listen(server.backlog)  # start() listens too late to say "ready" before it
    print("ready", flush=True)
    server.start()


if __name__ == "__main__":
    _serve(sys.argv[1])
