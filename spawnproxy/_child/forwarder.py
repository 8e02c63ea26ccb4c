"""The child's `logging`, connected to the parent: its records travel as records.

Shipped to the child as source (see `_bootstrap`), and loaded only once the
child's code imports `logging` (see `records.watch_logging`): standard
library only, CPython 3.8 syntax.  Uses `records` (the wire of a record).

What `install` does to the child's `logging`, and so what the child's own
configuration does:

- **The root logger** gets one handler, a `Forwarder`, when it has none (as
  pytest's caplog adds one, or dask's `forward_logging`): every record that
  reaches the child's root handlers goes to the parent, as a record.  The
  child's levels decide as they would locally: its root is at WARNING until
  its code says otherwise, and a record below a logger's effective level is
  never made, let alone sent.  The parent's levels, filters and handlers then
  apply to it (see `spawnproxy._output`).
- **`logging.basicConfig`** is wrapped, since with a handler on root it would
  do nothing: it runs as usual on a root without the forwarder, then the
  stderr handler it makes (no `stream`, `filename` or `handlers`, or
  `stream=sys.stderr`) is replaced by the forwarder.  So
  `basicConfig(level=logging.INFO)` sets the child's level, and its records
  reach the parent once, as records (its `format` is not used: the parent's
  handlers format).  A second call does nothing, as anywhere, unless
  `force=True`.  Given a file, another stream or handlers, basicConfig
  installs those instead of the forwarder, as it would anywhere: the records
  go there only (to stdout, they come back as lines).
- **The child's own handlers** run as they would: added beside the
  forwarder, both get the records; a configuration that replaces root's
  handlers (`dictConfig`, `fileConfig`) replaces the forwarder too.
- **`logging.lastResort`** (what logs when no handler is found at all) is a
  forwarder at WARNING: a record that would have been printed on stderr
  with no handler goes to the parent as a record.
"""

import logging
import os
import sys

from . import records

_formatter = logging.Formatter()
_basic_config = []  # logging.basicConfig as it was, once install has wrapped it


class Forwarder(logging.Handler):
    """Send each record to the parent: a line on this process's stderr (see `records`)."""

    configured = False  # put on root by basicConfig, rather than by install

    def emit(self, record):
        # Handler.handle holds this handler's lock (which logging renews in a forked child):
        # one record's line at a time, whatever its length.
        try:
            _write_all(encode(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def encode(record):
    """The line that carries `record` to the parent, mark and newline included, cut to fit."""
    import json  # here, not at the top: a child that imports logging but never logs skips its 1-2 ms

    exc_text = record.exc_text
    if record.exc_info and not exc_text:
        exc_text = _formatter.formatException(record.exc_info)
    fields = {
        records.NAME: record.name,
        records.LEVELNO: record.levelno,
        records.LEVELNAME: record.levelname,
        records.MESSAGE: record.getMessage(),
        records.CREATED: record.created,
        records.PATHNAME: record.pathname,
        records.LINENO: record.lineno,
        records.FUNCNAME: record.funcName,
        records.THREAD: record.thread,
        records.THREADNAME: record.threadName,
        records.PROCESS: record.process,
        records.PROCESSNAME: record.processName,
        records.EXC_TEXT: exc_text,
        records.STACK_INFO: record.stack_info,
    }
    for _ in range(len(records.LONG_FIELDS) + 1):
        line = records.MARK + json.dumps(fields, separators=(",", ":"), default=str).encode("ascii") + b"\n"
        excess = len(line) - records.MAX_RECORD
        if excess <= 0:
            return line
        # Cut the longest text by what is too much (a character is at least a byte), then look again.
        key = max(records.LONG_FIELDS, key=lambda name: len(fields[name] or ""))
        text = fields[key] or ""
        if text.endswith(records.TRUNCATED):
            text = text[: -len(records.TRUNCATED)]
        fields[key] = text[: max(0, len(text) - excess - len(records.TRUNCATED))] + records.TRUNCATED
    raise ValueError("a log record that cannot be cut to %d bytes" % records.MAX_RECORD)


def _write_all(data):
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:
        pass  # the parent has gone (EPIPE) or stderr is closed: nobody is left to tell


def basic_config(**kwargs):
    """`logging.basicConfig`, in a child: its handler to stderr is the forwarder (see the module)."""
    root = logging.getLogger()
    # The forwarder install put there is no configuration: basicConfig runs as on a bare root.
    placeholders = [handler for handler in root.handlers if isinstance(handler, Forwarder) and not handler.configured]
    for handler in placeholders:
        root.removeHandler(handler)
    before = list(root.handlers)
    try:
        _basic_config[0](**kwargs)
    finally:
        made = [handler for handler in root.handlers if handler not in before]
        to_stderr = [handler for handler in made if _writes_to_stderr(handler)]
        for handler in to_stderr:
            root.removeHandler(handler)
        if to_stderr:
            forwarder = Forwarder()
            forwarder.configured = True  # a later basicConfig does nothing, as anywhere
            root.addHandler(forwarder)
        elif not made:
            for handler in placeholders:
                root.addHandler(handler)


def _writes_to_stderr(handler):
    return type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__)


def install():
    """Connect this process's `logging` to the parent (see the module); once."""
    if _basic_config:
        return
    _basic_config.append(logging.basicConfig)
    logging.basicConfig = basic_config
    logging.lastResort = Forwarder(logging.WARNING)
    root = logging.getLogger()
    if not root.handlers:  # a configuration made before (a sitecustomize) is kept as it is
        root.addHandler(Forwarder())
