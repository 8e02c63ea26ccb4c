"""Children that misbehave on request: the targets of the fault-injection tests (tests/test_faults_*.py).

Loaded in a child with `spawnproxy.run_module("tests.targets.faulty")`; the parent imports it too,
so that what the child returns by value can be rebuilt there (except `Fragile`, on purpose).
"""

import ctypes
import os
import signal
import sys
import threading
import time

_floods = []


def ping(value=None):
    """Answer at once with the value given."""
    return value


def nap(seconds, value=None):
    """Sleep (the GIL released) and return `value`, or `seconds` when no value is given."""
    sys.stderr.write("napping for %s s\n" % seconds)
    time.sleep(seconds)
    return seconds if value is None else value


def echo_len(data):
    """Return the length of what was sent."""
    return len(data)


def die(code, last_words):
    """Write a line on stderr, then end the process at once with `code`."""
    sys.stderr.write(last_words + "\n")
    sys.stderr.flush()
    os._exit(code)


def segfault(last_words):
    """Write a line on stderr, then crash with SIGSEGV (reads address 0)."""
    sys.stderr.write(last_words + "\n")
    sys.stderr.flush()
    ctypes.string_at(0)


def exit_from_method(arg):
    """Call sys.exit(arg) inside a remote call."""
    sys.exit(arg)


def hold_gil(seconds):
    """Block in a C call that keeps the GIL: no Python thread of the child can run meanwhile."""
    ctypes.PyDLL(None).sleep(int(seconds))


def ignore_sigterm():
    """Make the child deaf to SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def sigint_default():
    """Make SIGINT kill the child outright, as it does a process that is not Python."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stubborn(seconds):
    """Sleep with SIGINT ignored (a call that does not react to a forwarded Ctrl-C)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        time.sleep(seconds)
    finally:
        signal.signal(signal.SIGINT, previous)
    return seconds


class Handle:
    """An object that never travels by value: it always comes back as a proxy."""

    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        raise TypeError("a Handle stays in the child")


_SAME_HANDLE = Handle(-1)


def make_handle(n=0):
    """A new object that comes back as a proxy."""
    return Handle(n)


def same_handle():
    """The same object each time, coming back as a proxy."""
    return _SAME_HANDLE


def _rebuild_fragile():
    if "_spawnproxy_child" not in sys.modules:
        raise RuntimeError("a Fragile cannot be rebuilt outside the child")
    return Fragile()


class Fragile:
    """Pickles fine in the child, but cannot be unpickled in the parent."""

    def __reduce__(self):
        return (_rebuild_fragile, ())


def make_fragile(delay=0.0):
    """Return a Fragile after `delay` seconds."""
    time.sleep(delay)
    return Fragile()


def _flood(stream_name, megabytes):
    stream = getattr(sys, stream_name)
    block = "x" * (1 << 20)  # no newline at all
    for _ in range(megabytes):
        stream.write(block)
    stream.flush()


def start_flood(megabytes):
    """Write `megabytes` MiB to stdout and as much to stderr, without newlines, in two threads."""
    del _floods[:]
    for name in ("stdout", "stderr"):
        thread = threading.Thread(target=_flood, args=(name, megabytes))
        thread.start()
        _floods.append(thread)


def flood_done():
    """Whether the flood threads have written everything."""
    return not any(t.is_alive() for t in _floods)


def flood_stderr_then_die(nbytes, code):
    """Write `nbytes` to stderr without a newline, then exit with `code`."""
    sys.stderr.write("y" * nbytes)
    sys.stderr.flush()
    os._exit(code)


def make_handle_after(delay, n=0):
    """A new object that comes back as a proxy, after `delay` seconds."""
    time.sleep(delay)
    return Handle(n)


def function_after(delay):
    """Return a function (always a proxy: it stays in the child), after `delay` seconds."""
    time.sleep(delay)
    return ping
