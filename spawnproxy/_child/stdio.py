"""The entry point of a child behind a launcher (ssh among them): serve over stdin/stdout, output marked.

Shipped to the child as source (see `_bootstrap`) but run there only in a
child reached through a launcher: standard library only, CPython 3.8 syntax.  The
parent imports the marks (`STDOUT_MARK`, `STDERR_MARK`) to sort the lines
back.  Uses `transports` (PipeChannel, no_sigpipe), `serve`, `ops` and
`lifetime`.
"""

import os
import select
import sys
import threading

from .lifetime import flush_and_exit, hello, start_process
from .ops import OPS
from .serve import Child
from .transports import PipeChannel, no_sigpipe

# What prefixes each line the child writes: the parent sorts them back into
# stdout and stderr (a launcher carries only one stream besides the channel).
STDOUT_MARK = b"\x1eO"
STDERR_MARK = b"\x1eE"
_LINE_MAX = 64 * 1024


def _forward_lines(read_fd, mark, out_fd, lock):
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        while len(pending) > _LINE_MAX:
            lines.append(pending[:_LINE_MAX])
            pending = pending[_LINE_MAX:]
        if lines:
            data = b"".join(mark + line + b"\n" for line in lines)
            with lock:
                _write_all(out_fd, data)
    if pending:
        with lock:
            _write_all(out_fd, mark + pending + b"\n")


def _write_all(fd, data):
    try:
        while data:
            data = data[no_sigpipe(os.write, fd, data) :]
    except OSError:
        pass


def _watch_connection(read_fd, write_fd):
    """End the process when the launcher's pipes close, even while a call runs: the parent or the connection is gone."""
    poller = select.poll()
    poller.register(read_fd, 0)  # only POLLHUP / POLLERR: the data stays for the serve loop
    poller.register(write_fd, 0)
    while True:
        events = poller.poll()
        if any(event & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, event in events):
            break
    flush_and_exit()


def main_stdio():
    """Serve the parent over stdin/stdout (the launcher's pipes); the child's output goes to stderr, marked."""
    read_fd, write_fd, err_fd = os.dup(0), os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    lock = threading.Lock()
    forwarders = []
    for target, mark in ((1, STDOUT_MARK), (2, STDERR_MARK)):
        pipe_read, pipe_write = os.pipe()
        os.dup2(pipe_write, target)
        os.close(pipe_write)
        thread = threading.Thread(
            target=_forward_lines, args=(pipe_read, mark, err_fd, lock), name="spawnproxy-output", daemon=True
        )
        thread.start()
        forwarders.append(thread)
    start_process()
    threading.Thread(
        target=_watch_connection, args=(read_fd, write_fd), name="spawnproxy-lifeline", daemon=True
    ).start()
    channel = PipeChannel(read_fd, write_fd)
    child = Child(channel, OPS)
    try:
        channel.send(*child.codec.dumps(("hello", hello())))
        child.serve()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        for thread in forwarders:
            thread.join(1.0)
        channel.close()
