"""How a child process starts and ends: its entry point and its watchdogs.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax.  Uses `channel`, `serve` (the Child), `ops` (the table a
plain child serves) and `outbox` (what a fork must let go of).  Everything
here that touches the whole process (signal handlers, threads, the at-fork
hook, the standard streams) runs only when a child starts (`main`, or
`stdio.main_stdio` through `start_process`), never at import.
"""

import os
import socket
import sys
import threading

from .channel import Channel
from .ops import OPS
from .outbox import after_fork
from .records import watch_logging
from .serve import Child


def hello():
    """What this process tells a peer about itself in its first message."""
    return {
        "pid": os.getpid(),
        "version": tuple(sys.version_info[:3]),
        "executable": sys.executable,
        "implementation": sys.implementation.name,
    }


def flush_and_exit():
    """Exit at once, from any thread, after handing what is buffered to the parent."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)


def start_process():
    """What every child process does as it starts, whatever reaches it (a socket, ssh's pipes)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=after_fork)
    for stream in (sys.stdout, sys.stderr):
        try:
            # Lines reach the parent as they are written, even without PYTHONUNBUFFERED.
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    watch_logging()  # the child's logging records reach the parent as records


def _watch_parent(lifeline_fd):
    """End the child as soon as the parent is gone, whatever the main thread does."""
    try:
        while os.read(lifeline_fd, 4096):
            pass
    except OSError:
        pass
    flush_and_exit()


def _forward_sigint_to_calls(child):
    """A SIGINT the parent forwards interrupts the call in progress, and nothing else."""
    import signal

    def on_sigint(signum, frame):
        if child.running:
            raise KeyboardInterrupt
        # Between calls (the call ended as Ctrl-C was pressed): nothing to interrupt.

    signal.signal(signal.SIGINT, on_sigint)


def arm_deathline(fd):
    """Have the kernel SIGKILL this process when the parent is gone, even if no thread here can run.

    The lifeline thread needs the GIL, which a call stuck in C may hold for ever.
    Linux can instead signal the owner of a pipe when its write end closes (O_ASYNC
    with F_SETSIG); the parent closes that end only once this process has ended,
    or by dying.
    """
    os.set_inheritable(fd, False)
    try:
        import fcntl
        import signal

        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGKILL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux: the lifeline thread is the only watchdog


def main(fd, lifeline_fd, bundle):
    """Serve the parent on the socket `fd` until it goes; `lifeline_fd` closes when it dies."""
    os.set_inheritable(fd, False)
    os.set_inheritable(lifeline_fd, False)
    if bundle.get("deathline") is not None:
        arm_deathline(bundle["deathline"])
    threading.Thread(target=_watch_parent, args=(lifeline_fd,), name="spawnproxy-lifeline", daemon=True).start()
    try:
        import faulthandler

        # A crash (segfault, abort) prints the Python stack on stderr, whose last lines the
        # parent's DaemonDiedError quotes.
        faulthandler.enable(all_threads=False)
    except (ImportError, RuntimeError, ValueError):
        pass
    start_process()
    if bundle.get("sys_path") is not None:
        parent_path = bundle["sys_path"]
        sys.path[:] = parent_path + [p for p in sys.path if p not in parent_path]
    channel = Channel(socket.socket(fileno=fd))
    child = Child(channel, OPS)
    _forward_sigint_to_calls(child)
    channel.send(*child.codec.dumps(("hello", hello())))
    try:
        child.serve()
    finally:
        channel.close()
