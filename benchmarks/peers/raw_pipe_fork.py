"""The raw Pipe echo of `raw_pipe`, with a *forked* child: a copy of the worker, not a fresh interpreter.

What `multiprocessing.Pipe` costs when the child shares the parent's warm pages (its
interpreter, its imported modules) copy-on-write, as a forked server does: the peer figures that
issue 18 quotes for "`Pipe`, fork". Start-up is a fork, not an interpreter's start.
"""

from __future__ import annotations

from benchmarks.peers.raw_pipe import RawHandle

DIST = None
NOTES = [
    "multiprocessing.get_context('fork').Process echoing `conn.send(conn.recv())` on a duplex Pipe "
    "(a copy of the worker process, sharing its pages copy-on-write)",
    "threads share the Pipe under a lock (one message in flight)",
]


class ForkedRawHandle(RawHandle):
    """The parent's end of the echo Pipe, the child forked."""

    start_method = "fork"


def start() -> ForkedRawHandle:
    """Fork the echo child."""
    return ForkedRawHandle()
