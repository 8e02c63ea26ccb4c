"""Forward what a child writes to its stdout and stderr, line by line.

One thread per stream drains the pipe as fast as the child writes, so a child
that writes a lot never blocks; lines go to the parent's own stream (looked
up at each write, so redirections and capture work) or to a logger, and the
last lines are kept, bounded, for `DaemonProxy.logs` and error messages.

Foundation layer: the standard library only.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
from typing import IO

_CHUNK = 64 * 1024
# A "line" that grows past this without a newline is forwarded in pieces,
# so a flood without newlines keeps memory bounded.
MAX_LINE = 64 * 1024


class OutputLog:
    """The last lines a child wrote, most recent last; safe to share between threads."""

    def __init__(self, maxlen: int) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=maxlen)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)


class StreamPump:
    """Drain one of the child's pipes in a thread of its own."""

    def __init__(self, fd: int, name: str, log: OutputLog, logger: logging.Logger | None, pid: int) -> None:
        self._fd = fd
        self._name = name
        self._log = log
        self._logger = logger
        self._level = logging.INFO if name == "stdout" else logging.WARNING
        self._thread = threading.Thread(target=self._run, name=f"spawnproxy-{name}-{pid}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(self._fd, _CHUNK)
                except OSError:
                    break
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._emit(line)
                while len(pending) > MAX_LINE:
                    self._emit(pending[:MAX_LINE])
                    pending = pending[MAX_LINE:]
            if pending:
                self._emit(pending)
        finally:
            os.close(self._fd)

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self._log.lines.append(text)
        if self._name == "stderr":
            self._log.stderr_tail.append(text)
        if self._logger is not None:
            try:
                self._logger.log(self._level, "%s", text)
            except Exception:
                # A broken handler must not stop the draining: the child would block.
                pass
            return
        stream: IO[str] | None = sys.stdout if self._name == "stdout" else sys.stderr
        if stream is None:
            return
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # the parent's stream is closed: keep draining all the same
