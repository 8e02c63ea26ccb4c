"""The zygote: a child that runs no user code and forks warm children on request.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax.  Uses `lifetime` (a fork then runs exactly as a cold
child does).  The parent's side is `spawnproxy._zygote`.

A zygote is started cold, once per interpreter and environment, by the
bootstrap (its bundle says `zygote`).  It has loaded every child module, and
the standard library modules a child needs as it starts, and it holds one
thread: a `select` loop over its socket to the parent, its lifeline and the
wakeup pipe of SIGCHLD.  On the socket, frames of `HEADER` (length) and a
pickle travel each way:

- parent -> zygote: a FORK request, a dict (`cwd`, `cpus`, and the `bundle`
  a cold child reads first, without the module sources), with the new
  child's descriptors attached (SCM_RIGHTS, in the order of `FORK_FDS`);
  no environment: a zygote serves one environment (the parent starts one
  per environment), which its forks inherit;
- zygote -> parent: (`FORKED`, pid) or (`FAILED`, reason) answering it, and
  (`EXITED`, pid, code) when a fork has ended and been reaped (`code` as
  `subprocess` gives it: negative for a signal).  `REPORT_*` name the items.

The fork drops the zygote's descriptors and signal handling, starts its own
session, takes its stdout and stderr pipes, working directory and CPU
affinity (what a cold child would inherit from the parent at that
moment) and runs `lifetime.main` with the request's bundle.
The zygote ends when its lifeline or its socket closes (the parent ended it,
or died); its deathline ends it even when no thread of it can run.  A fork
outlives its zygote: it has a lifeline and deathline of its own.
"""

import array
import os
import pickle
import select
import signal
import socket
import struct
import sys

from . import lifetime

HEADER = struct.Struct("!i")
PROTOCOL = 4  # every interpreter from 3.8 loads it; these messages are tiny
# The descriptors a FORK request carries, in this order.
FORK_FDS = ("channel", "lifeline", "deathline", "stdout", "stderr")
FORKED = "forked"
FAILED = "failed"
EXITED = "exited"
REPORT_KIND = 0
REPORT_PID = 1
REPORT_CODE = 2  # of EXITED; FAILED's item 1 is the reason
_FDS_SPACE = socket.CMSG_SPACE(len(FORK_FDS) * array.array("i").itemsize)
# Loaded here once, so that each fork starts with them in memory (the bootstrap has loaded the
# child package; these are what a starting child imports on top).
_PRELOAD = ("faulthandler", "fcntl", "threading", "traceback", "mmap", "errno", "weakref", "tempfile")


def frame(message):
    """A message as it travels between the zygote and its parent: its length, then its pickle."""
    data = pickle.dumps(message, PROTOCOL)
    return HEADER.pack(len(data)) + data


def split(pending):
    """(the whole messages at the start of `pending`, the bytes after them)."""
    messages = []
    while len(pending) >= HEADER.size:
        (size,) = HEADER.unpack(pending[: HEADER.size])
        if len(pending) < HEADER.size + size:
            break
        messages.append(pickle.loads(pending[HEADER.size : HEADER.size + size]))
        pending = pending[HEADER.size + size :]
    return messages, pending


def exit_code(status):
    """`os.waitpid`'s status as `subprocess` reports it (os.waitstatus_to_exitcode is 3.9+)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def main(fd, lifeline_fd, bundle):
    """Serve FORK requests on the socket `fd` until the parent closes it or the lifeline."""
    os.set_inheritable(fd, False)
    os.set_inheritable(lifeline_fd, False)
    deathline = bundle.get("deathline")
    if deathline is not None:
        lifetime.arm_deathline(deathline)
    for name in _PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    sock = socket.socket(fileno=fd)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, stack: None)  # the wakeup pipe is what matters
    # The same first frame a cold child sends (the parent's handshake reads it).
    hello = pickle.dumps(("hello", lifetime.hello()), PROTOCOL)
    sock.sendall(HEADER.pack(len(hello) + 1) + b"P" + hello)
    zygote_fds = (fd, lifeline_fd, wake_read, wake_write, deathline)
    import gc

    # What the zygote holds stays out of every later collection: a fork's collections then
    # touch (and copy) none of its pages.
    gc.collect()
    gc.freeze()
    gc.disable()
    pending = b""
    fds = []
    while True:
        ready = select.select([sock, lifeline_fd, wake_read], [], [])[0]
        if lifeline_fd in ready and not _drain(lifeline_fd):
            os._exit(0)
        if wake_read in ready:
            _drain(wake_read)
            _reap(sock)
        if sock in ready:
            data, ancillary, _, _ = sock.recvmsg(65536, _FDS_SPACE)
            if not data:
                os._exit(0)
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(raw[: len(raw) - len(raw) % got.itemsize])
                    fds.extend(got)
            requests, pending = split(pending + data)
            for request in requests:
                mine, fds = fds[: len(FORK_FDS)], fds[len(FORK_FDS) :]
                # Descriptors of the requests after this one, already received, are not the fork's.
                _fork(sock, request, mine, zygote_fds + tuple(fds))


def _drain(fd):
    """Read what `fd` holds; False at its end."""
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return True
    except OSError:
        return False


def _reap(sock):
    """Report every fork that has ended (a SIGCHLD may stand for several)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.sendall(frame((EXITED, pid, exit_code(status))))


def _fork(sock, request, fds, zygote_fds):
    """Fork a warm child with `fds` (see FORK_FDS); answer with its pid, or why there is none."""
    if len(fds) != len(FORK_FDS):
        for fd in fds:
            os.close(fd)
        sock.sendall(frame((FAILED, "the request carried %d descriptors, not %d" % (len(fds), len(FORK_FDS)))))
        return
    try:
        pid = os.fork()
    except OSError as exc:
        pid = None
        reason = "fork failed: %s" % exc
    if pid == 0:
        code = 1
        try:
            _become_child(request, dict(zip(FORK_FDS, fds)), zygote_fds)
            code = 0
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            import traceback

            traceback.print_exc()
        # Out through the interpreter's normal end, as a cold child's -c program ends:
        # atexit handlers run and the standard streams are flushed.
        raise SystemExit(code)
    for fd in fds:
        os.close(fd)
    sock.sendall(frame((FAILED, reason) if pid is None else (FORKED, pid)))


def _become_child(request, fds, zygote_fds):
    """In the fork: let go of the zygote, become a fresh child, and serve as a cold one does."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in zygote_fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    os.setsid()  # as a cold child: a Ctrl-C meant for the parent's terminal never reaches it
    for target, name in ((1, "stdout"), (2, "stderr")):
        fd = fds.pop(name)
        os.dup2(fd, target)
        os.close(fd)
    import gc

    gc.enable()
    os.chdir(request["cwd"])
    if sorted(os.sched_getaffinity(0)) != request["cpus"]:
        os.sched_setaffinity(0, request["cpus"])
    sys.argv[1:] = [str(fds["channel"]), str(fds["lifeline"])]
    # `random` re-seeds itself in a fork (an at-fork hook, 3.7+); the hash seed cannot change.
    bundle = request["bundle"]
    bundle["deathline"] = fds["deathline"]
    lifetime.main(fds["channel"], fds["lifeline"], bundle)
