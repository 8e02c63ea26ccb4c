"""spawny: `run_object(Target())`, with multiprocessing's start method forced to ``spawn``.

spawny starts its child with `multiprocessing.Process` under the default start method, which is
``fork`` on Linux up to Python 3.13: a copy of the parent, not a fresh interpreter. This peer runs
in a worker process of its own, so it sets the global start method to ``spawn`` there.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

import spawny

from benchmarks.peers.base import ProxyHandle, Unsupported
from benchmarks.target import Target

DIST = "spawny"
NOTES = [
    "start method forced to 'spawn' (spawny's default on Linux is 'fork', which copies the parent)",
    "a method call is two round trips in spawny (an `is_function` query, then the call)",
    "spawny has no lock: threads share its Pipe unguarded, as a user's threads would",
]

_QUIET = logging.getLogger("benchmarks.spawny")
_QUIET.setLevel(logging.WARNING)


class SpawnyHandle(ProxyHandle):
    """A spawny proxy of a `Target`."""

    def __init__(self) -> None:
        multiprocessing.set_start_method("spawn", force=True)
        self._p: Any = spawny.run_object(Target(), logger=_QUIET)

    def set_value(self, v: int) -> None:
        raise Unsupported(
            "spawny 2.1.4 does not forward attribute writes: `p.value = 3` sets a local attribute "
            "on the proxy (ObjectProxy.__setattr__ is a TODO in its source)"
        )

    def make_ref(self) -> None:
        try:
            ref = self._p.make()
        except spawny.DaemonCouldNotSendMsgError as exc:
            raise Unsupported(f"spawny returns call results only by value: {exc}") from exc
        del ref

    def close(self) -> None:
        self._p.terminate_daemon()


def start() -> SpawnyHandle:
    """Start a spawny child hosting a `Target`."""
    return SpawnyHandle()
