"""Forward what a child writes to its stdout and stderr, line by line, and its log records.

One thread per stream drains the pipe as fast as the child writes, so a child
that writes a lot never blocks; lines go to the parent's own stream (looked
up at each write, so redirections and capture work) or to a logger, and the
last lines are kept, bounded, for `DaemonProxy.logs` and error messages.

A line of the child's stderr that carries a record of the child's `logging`
(see `_child.records`) becomes a `logging.LogRecord` again, handled by the
parent's logger `<prefix>.<the child's logger name>`: the prefix is
`spawnproxy.child`, or the name of the `logger` given (none for the root
logger: the child's loggers are then the parent's own names), and a record
of the child's root logger goes to the prefix itself.  The parent's levels,
filters and handlers apply to it as to a local record.  The record keeps
the child's time, level, message (formatted there), exception text, stack,
source place, process and thread; `exc_info` is None.

`DaemonProxy.logs` entries are `LogLine`s: `str`s that say where they came
from (`.stream`: "stdout", "stderr", or "logging" for a record, whose text
is "LEVEL name: message").

Foundation layer: the standard library and the child package's `records`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import threading
from typing import IO, Any

from ._child import records

_CHUNK = 64 * 1024
# A "line" that grows past this without a newline is forwarded in pieces,
# so a flood without newlines keeps memory bounded.
MAX_LINE = 64 * 1024
# Where a child's records go without a `logger`: under this logger, by the child's logger name.
CHILD_LOGGERS = "spawnproxy.child"


class LogLine(str):
    """An entry of `DaemonProxy.logs`: the text, and the stream it came from (`.stream`).

    >>> line = LogLine("WARNING backend: slow", "logging")
    >>> line == "WARNING backend: slow", line.stream
    (True, 'logging')
    """

    stream: str

    def __new__(cls, text: str, stream: str) -> LogLine:
        made = super().__new__(cls, text)
        made.stream = stream
        return made

    def __reduce__(self) -> tuple[Any, ...]:
        return LogLine, (str(self), self.stream)


class OutputLog:
    """The last lines a child wrote, most recent last; safe to share between threads."""

    def __init__(self, maxlen: int) -> None:
        # (text, stream): a LogLine is made only when asked for (`entries`), not per line.
        self.lines: collections.deque[tuple[str, str]] = collections.deque(maxlen=maxlen)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)

    def entries(self) -> list[str]:
        """The lines kept, most recent last: `LogLine`s, which a caller may take for plain `str`s."""
        return [LogLine(text, stream) for text, stream in list(self.lines)]


def records_prefix(logger: logging.Logger | logging.LoggerAdapter[Any] | None) -> str:
    """The name under which a child's records are logged ("" for the root logger: no prefix)."""
    if logger is None:
        return CHILD_LOGGERS
    base = getattr(logger, "logger", logger)  # a LoggerAdapter: the logger it adapts
    return "" if base is logging.getLogger() else str(base.name)


def decode_record(raw: bytes, prefix: str) -> tuple[str, logging.LogRecord] | None:
    """(the child's logger name, the record) a line of the child's stderr carries after
    `records.MARK`, or None if it carries none (it is then a line like any other)."""
    try:
        return _decode_record(raw, prefix)
    except Exception:  # whatever the child wrote, the pump goes on draining
        return None


def _decode_record(raw: bytes, prefix: str) -> tuple[str, logging.LogRecord] | None:
    fields = json.loads(raw[len(records.MARK) :])
    name, levelno, message = fields[records.NAME], fields[records.LEVELNO], fields[records.MESSAGE]
    created = float(fields[records.CREATED])
    if not (isinstance(name, str) and isinstance(levelno, int) and isinstance(message, str)):
        return None
    if name == "root":
        parent_name = prefix or "root"
    else:
        parent_name = f"{prefix}.{name}" if prefix else name
    pathname = str(fields.get(records.PATHNAME) or "")
    filename = os.path.basename(pathname)
    return name, logging.makeLogRecord(
        {
            "name": parent_name,
            "msg": message,
            "args": None,
            "levelno": levelno,
            "levelname": str(fields.get(records.LEVELNAME) or logging.getLevelName(levelno)),
            "pathname": pathname,
            "filename": filename,
            "module": os.path.splitext(filename)[0],
            "lineno": fields.get(records.LINENO),
            "funcName": fields.get(records.FUNCNAME),
            "created": created,
            "msecs": (created - int(created)) * 1000,
            "thread": fields.get(records.THREAD),
            "threadName": fields.get(records.THREADNAME),
            "process": fields.get(records.PROCESS),
            "processName": fields.get(records.PROCESSNAME),
            "exc_info": None,
            "exc_text": fields.get(records.EXC_TEXT),
            "stack_info": fields.get(records.STACK_INFO),
        }
    )


class StreamPump:
    """Drain one of the child's pipes in a thread of its own."""

    def __init__(self, fd: int, name: str, log: OutputLog, logger: logging.Logger | None, pid: int) -> None:
        self._fd = fd
        self._name = name
        self._log = log
        self._logger = logger
        self._prefix = records_prefix(logger)
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
        if self._name == "stderr":
            at = raw.find(records.MARK)
            if at >= 0:
                decoded = decode_record(raw[at:], self._prefix)
                if decoded is not None:
                    if at:
                        # The child wrote part of a line with no newline yet (a progress bar):
                        # that part is passed on as a line, the record as a record.
                        self._line(raw[:at])
                    self._handle(*decoded)
                    return
        self._line(raw)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self._log.lines.append((text, self._name))
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

    def _handle(self, name: str, record: logging.LogRecord) -> None:
        """Log a record of the child's as the parent's logger of its name would a local one."""
        text = f"{record.levelname} {name}: {record.msg}"
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        self._log.lines.append((text, "logging"))
        self._log.stderr_tail.append(text)
        logger = logging.getLogger(None if record.name == "root" else record.name)
        try:
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        except Exception:
            pass  # a broken handler must not stop the draining: the child would block
