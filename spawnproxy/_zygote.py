"""Warm children: forked from a zygote of their interpreter instead of started cold.

A zygote (`Zygote`) is a child started cold once per interpreter and
environment (the key: what changes how an interpreter starts), holding the
child package and no thread of the user, no user code; it forks a new child
(`WarmProcess`) on request (`spawnproxy._child.zygote` is its side, and says
what travels).  A warm child gets its own channel, lifeline, deathline,
stdout and stderr pipes, environment and working directory, then reads a
slim bundle (no module sources: the zygote has them) and says hello as a
cold child does: from there the session cannot tell them apart.

The registry keeps one zygote per key, made on the first warm start, made
again when it has died, ended at exit after every other child (it reports
its forks' exit codes) and, as a cold child, with the parent (its lifeline
and deathline).  A warm child is not the parent's child but the zygote's:
"ended" comes from its pidfd (which works for any process), signals go
through the pidfd (no race with pid reuse), the exit code from the zygote's
report.  A warm child that ends after its zygote has died has lost its exit
code: it is reported as `LOST_EXIT`.

Processes layer: uses `_process` (whose `ChildProcess` both classes extend),
`_bootstrap`, `_errors` and the child package's `zygote` (its message layouts).
"""

from __future__ import annotations

import array
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, cast

from . import _bootstrap
from ._child import zygote as wire
from ._child.channel import Channel
from ._errors import DaemonStartError
from ._output import StreamPump
from ._process import ChildProcess, resolve_executable

log = logging.getLogger("spawnproxy")

# The exit code of a warm child that ended after its zygote died (nobody could reap it for us).
LOST_EXIT = 255
# How long the zygote may take to report a fork it has reaped (it does so at once on SIGCHLD).
_REPORT = 2.0
# Zygotes kept with no child alive: a program that starts warm children with ever new
# environments (one zygote each) would otherwise keep one process per environment until it exits.
IDLE_ZYGOTES = 4
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


class ZygoteGone(Exception):
    """The zygote ended (or closed its socket) before it answered."""


class Zygote(ChildProcess):
    """A child that forks warm children: started cold, it runs only the child package."""

    ends_last = True

    def __init__(self, python_exe: str, env: Mapping[str, str], start_timeout: float | None) -> None:
        # Requests are pipelined: many threads may send theirs (each whole, under the lock) before
        # the first reply; the zygote answers in order, so the n-th reply is the n-th request's.
        # One thread at a time reads, without the lock; the others wait on the condition.
        self._cond = threading.Condition()
        self._sent = 0  # requests sent
        self._replied = 0  # replies read
        self._replies: dict[int, tuple[Any, ...]] = {}  # request number -> its reply
        self._codes: dict[int, int] = {}  # pid -> exit code, as reported
        self._live: set[int] = set()  # forks whose end has not been reported
        self._reading = False
        self._pending = b""
        self._gone = False
        super().__init__(python_exe, env=env, logger=None, logs_maxlen=100, start_timeout=start_timeout)

    def _bundle(self, own: bool) -> dict[str, Any]:
        bundle = super()._bundle(own)
        assert bundle is not None
        bundle["zygote"] = True
        bundle["sys_path"] = None  # each fork gets the parent's own, as it is when it starts
        return bundle

    def fork(self, fds: list[int], request: dict[str, Any], timeout: float | None) -> int:
        """Fork a warm child holding `fds` (in the order of `FORK_FDS`); its pid."""
        deadline = None if timeout is None else time.monotonic() + timeout
        data = wire.frame(request)  # type: ignore[no-untyped-call]
        with self._cond:
            sock = self.channel.sock
            rest = memoryview(data)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            # Whole, under the lock: a request the socket takes in parts must not interleave with another.
            while rest:
                try:
                    rest = rest[sock.sendmsg([rest], ancillary, _SEND_FLAGS) :]
                    ancillary = []  # the descriptors went with the first byte
                except BlockingIOError:
                    if _left(deadline) == 0:
                        self._gone = len(rest) < len(data)  # half a request sent: the next warm start replaces it
                        raise DaemonStartError(f"the zygote {self.pid} took no request within {timeout} s") from None
                    select.select([], [sock], [], _left(deadline))
                except (OSError, ValueError) as exc:
                    raise ZygoteGone(str(exc)) from None
            number = self._sent
            self._sent += 1
        if not self._await(lambda: number in self._replies, deadline):
            if self._gone:
                raise ZygoteGone("it closed its socket")
            raise DaemonStartError(f"the zygote {self.pid} did not fork a child within {timeout} s")
        with self._cond:
            reply = self._replies.pop(number)
        if reply[wire.REPORT_KIND] != wire.FORKED:
            raise DaemonStartError(f"the zygote {self.pid} could not fork a child: {reply[1]}")
        pid: int = reply[wire.REPORT_PID]
        return pid

    def idle(self) -> bool:
        """Whether no child of it runs and no request waits: ending it loses nothing."""
        with self._cond:
            return not self._live and self._sent == self._replied

    def exit_code(self, pid: int, timeout: float) -> int | None:
        """The exit code the zygote reported for `pid`, waiting up to `timeout`; None if it has none."""
        if not self._await(lambda: pid in self._codes, time.monotonic() + timeout):
            return None
        with self._cond:
            return self._codes.pop(pid)

    def _await(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """Whether `ready()` came true before `deadline`, reading the zygote's messages meanwhile."""
        with self._cond:
            while not ready():
                left = _left(deadline)
                if self._gone:
                    return False
                if self._reading:
                    if left == 0:
                        return False
                    self._cond.wait(left)
                    continue
                self._reading = True
                self._cond.release()
                try:
                    data = self._read(left)
                finally:
                    self._cond.acquire()
                    self._reading = False
                    self._cond.notify_all()
                if data == b"":
                    self._gone = True
                elif data is not None:
                    self._sort(data)
                if left == 0:  # one look at what has come, no wait
                    return ready()
            return True

    def _read(self, timeout: float | None) -> bytes | None:
        """What the zygote sent within `timeout` (None: nothing yet; b"": it has gone)."""
        sock = self.channel.sock
        try:
            if not select.select([sock], [], [], timeout)[0]:
                return None
            return sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except (OSError, ValueError):  # closed: the zygote was ended (it had died)
            return b""

    def _sort(self, data: bytes) -> None:
        """File the zygote's messages: exit reports by pid, replies by request number."""
        messages, self._pending = wire.split(self._pending + data)  # type: ignore[no-untyped-call]
        for message in messages:
            if message[wire.REPORT_KIND] == wire.EXITED:
                self._codes[message[wire.REPORT_PID]] = message[wire.REPORT_CODE]
                self._live.discard(message[wire.REPORT_PID])
            else:
                if message[wire.REPORT_KIND] == wire.FORKED:
                    self._live.add(message[wire.REPORT_PID])
                self._replies[self._replied] = message
                self._replied += 1


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


_zygotes: dict[tuple[str, tuple[tuple[str, str], ...]], Zygote] = {}
_registry = threading.Lock()
_fork_hook = False  # registered with the first zygote


def _forget_after_fork() -> None:
    # A forked process shares its parent's zygote sockets: it must start zygotes of its own.
    global _registry
    _zygotes.clear()
    _registry = threading.Lock()  # another thread may have held it at the fork


def zygote_for(executable: str, env: Mapping[str, str], start_timeout: float | None) -> Zygote:
    """The running zygote of `executable` with `env` (started, or started again, if needed)."""
    global _fork_hook
    key = (os.path.abspath(executable), tuple(sorted(env.items())))
    with _registry:
        if not _fork_hook:
            # At the first zygote, not at import: importing spawnproxy has no side effects.
            os.register_at_fork(after_in_child=_forget_after_fork)
            _fork_hook = True
        zygote = _zygotes.pop(key, None)  # put back last: the registry is in order of use
        if zygote is not None and (zygote.poll() is not None or zygote._gone):
            log.debug("zygote %d has ended: starting another", zygote.pid)
            zygote.shutdown(0)
            zygote = None
        if zygote is None:
            _end_idle(IDLE_ZYGOTES - 1)
            zygote = Zygote(executable, env, start_timeout)
            log.debug("zygote %d started for %s", zygote.pid, executable)
        _zygotes[key] = zygote
        return zygote


def _end_idle(keep: int) -> None:
    """End the zygotes with no child alive but the `keep` used last (the registry's lock is held)."""
    idle = [key for key, zygote in _zygotes.items() if zygote.idle()]
    for key in idle[: max(0, len(idle) - keep)]:
        zygote = _zygotes.pop(key)
        log.debug("zygote %d ended: no child of it runs, and %d others are idle", zygote.pid, keep)
        zygote.shutdown()


def zygote_pids() -> list[int]:
    """The process ids of the zygotes running now (each outlives the children it forked).

    Example:
        >>> import spawnproxy._zygote
        >>> isinstance(spawnproxy._zygote.zygote_pids(), list)
        True
    """
    with _registry:
        return [zygote.pid for zygote in _zygotes.values() if zygote.poll() is None]


class _Forked:
    """A warm child as `subprocess.Popen` shows a process: `pid`, `returncode`, `poll`, `wait`."""

    def __init__(self, pid: int, zygote: Zygote) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._zygote = zygote
        # Several threads may wait for the same child (a session that saw it die, a shutdown):
        # the zygote reports its exit once, and the first to collect it keeps it for all.
        self._collecting = threading.Lock()
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # it ended, and the zygote reaped it, before we could look
            self._pidfd = os.open(os.devnull, os.O_RDONLY)  # always "readable": ended
            self._collect()
        # Closed with this object, not when the child ends: another thread may be polling it.
        weakref.finalize(self, os.close, self._pidfd).atexit = False  # at exit, the children end first
        # The zygote reports a fork's end after reaping it, and only a reaped pid can be reused:
        # with no report yet, the pidfd is this child's.
        if self.returncode is None and (code := zygote.exit_code(pid, 0)) is not None:
            self.returncode = code

    def poll(self) -> int | None:
        if self.returncode is None and self._ended(0):
            self._collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._ended(timeout):
                raise subprocess.TimeoutExpired(["warm child", str(self.pid)], timeout or 0.0)
            self._collect()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def _ended(self, timeout: float | None) -> bool:
        return self.returncode is not None or bool(select.select([self._pidfd], [], [], timeout)[0])

    def _collect(self) -> None:
        with self._collecting:
            if self.returncode is not None:
                return
            code = self._zygote.exit_code(self.pid, _REPORT)
            self.returncode = LOST_EXIT if code is None else code


class WarmProcess(ChildProcess):
    """A child forked from the zygote of its interpreter: started in a few milliseconds."""

    def _spawn(self, python_exe: Any, env: Mapping[str, str] | None, logger: logging.Logger | None) -> bool:
        exe, own = resolve_executable(python_exe)
        self.executable = exe
        child_env = dict(os.environ if env is None else env)
        timeout = self.start_timeout
        parent_sock, child_sock = socket.socketpair()
        life_read, life_write = os.pipe()
        death_read, death_write = os.pipe()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        mine = [parent_sock.detach(), life_write, death_write, out_read, err_read]
        theirs = [child_sock.detach(), life_read, death_read, out_write, err_write]
        # The fork's bundle travels with the request (the zygote has the module sources).
        # No environment: the zygote's key is the child's environment, which its forks inherit.
        request = {
            "cwd": os.getcwd(),
            "cpus": sorted(os.sched_getaffinity(0)),  # as a cold child inherits them now
            "bundle": {"sys_path": list(sys.path) if own else None},
        }
        try:
            for attempt in (1, 2):
                zygote = zygote_for(exe, _bootstrap.safe_environment(child_env), timeout)
                try:
                    pid = zygote.fork(theirs, request, timeout)
                    break
                except ZygoteGone:
                    if attempt == 2:
                        raise DaemonStartError(f"the zygote of {exe!r} ended as it was asked to fork") from None
        except BaseException:
            for fd in mine:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        forked = _Forked(pid, zygote)
        watch = self._started(cast(Any, forked))  # a Popen as far as ChildProcess is concerned
        self._lifeline, self._deathline = life_write, death_write
        self._pumps = [
            StreamPump(out_read, "stdout", self.output, logger, pid),
            StreamPump(err_read, "stderr", self.output, logger, pid),
        ]
        self._sock = sock = socket.socket(fileno=mine[0])
        self.channel = Channel(sock, watch_fds=watch)
        return own

    def _bundle(self, own: bool) -> None:
        return None  # the fork had its bundle with the request

    def escalate(self, step: str | signal.Signals) -> None:
        if step == "lifeline":
            super().escalate(step)
            return
        assert isinstance(step, signal.Signals)
        log.warning("child %d did not exit; sending %s", self.pid, step.name)
        cast(_Forked, self.popen).send_signal(step)

    def interrupt(self) -> None:
        cast(_Forked, self.popen).send_signal(signal.SIGINT)
