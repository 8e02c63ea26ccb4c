"""Start a child interpreter and end it: the parent side of a child's lifetime.

The child is `python -c BOOTSTRAP` started with `subprocess`, never with
`multiprocessing`: its spawn method rewrites the child's `sys.path` and
re-imports the parent's `__main__`, and its fork method ignores the
executable.  The child gets one end of a socket pair (the channel) and the
read end of a "lifeline" pipe whose write end only the parent holds: when the
parent dies, however it dies, the child sees the pipe close and exits.

Shutdown is bounded and escalating: close the channel (the child's serve loop
ends) -> wait -> close the lifeline (the child's watchdog exits) -> wait ->
SIGTERM -> wait -> SIGKILL -> reap.  It is idempotent.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import _bootstrap, _serialize
from ._child import protocol
from ._child.channel import Channel
from ._errors import DaemonStartError
from ._output import OutputLog, StreamPump

if TYPE_CHECKING:
    from ._peer import Peer

log = logging.getLogger("spawnproxy")

# Bounds of each shutdown step, in seconds.
GRACE = 1.0
STEP = 0.5


def resolve_executable(python_exe: str | os.PathLike[str] | None) -> tuple[str, bool]:
    """Return (path of the interpreter, whether it is the parent's own one)."""
    if python_exe is None:
        return sys.executable, True
    if not isinstance(python_exe, (str, os.PathLike)):
        raise TypeError(f"python_exe must be a path (str or os.PathLike), not {type(python_exe).__name__}")
    path = os.fspath(python_exe)
    if os.path.isdir(path):
        for candidate in ("bin/python3", "bin/python", "Scripts/python.exe"):
            if os.path.isfile(os.path.join(path, candidate)):
                path = os.path.join(path, candidate)
                break
        else:
            raise DaemonStartError(f"python_exe {path!r} is a directory without bin/python in it")
    if not os.path.exists(path):
        raise DaemonStartError(f"python_exe {path!r} does not exist")
    if not os.access(path, os.X_OK):
        raise DaemonStartError(f"python_exe {path!r} is not executable")
    own = os.path.abspath(path) == os.path.abspath(sys.executable)
    return path, own


class ChildProcess:
    """A running child interpreter: its process, channel, lifeline and output."""

    lanes = True  # a local socket pair: a session may open lanes (see _lanes)
    # Ended at exit after the other children (a zygote: it reports its forks' exit codes).
    ends_last = False

    def __init__(
        self,
        python_exe: str | os.PathLike[str] | None,
        *,
        env: Mapping[str, str] | None,
        logger: logging.Logger | None,
        logs_maxlen: int,
        start_timeout: float | None,
    ) -> None:
        """Start the child (`_spawn`, which a subclass may replace) and wait for its hello."""
        self.output = OutputLog(logs_maxlen)
        self._lock = threading.Lock()
        self._closed = False
        self._lifeline: int | None = None
        self._deathline: int | None = None
        self._deathline_in_child: int | None = None  # its number in the child (pass_fds)
        self._pidfd: int | None = None
        self.start_timeout = start_timeout  # bounds `_spawn` too where it waits (a zygote's fork)
        own = self._spawn(python_exe, env, logger)
        _register(self)
        try:
            self.hello = self._handshake(own, start_timeout)
        except DaemonStartError as exc:
            self.shutdown()
            raise self._start_error(exc) from None
        except BaseException:
            self.shutdown()
            raise
        log.debug(
            "child %d started with %s (Python %s)", self.pid, self.executable, ".".join(map(str, self.hello["version"]))
        )

    def _spawn(
        self, python_exe: str | os.PathLike[str] | None, env: Mapping[str, str] | None, logger: logging.Logger | None
    ) -> bool:
        """Start the process and make its channel; return whether it runs the parent's own interpreter."""
        # No cwd here: the child changes to it itself (DaemonProxy asks), as a child on
        # another machine must, so that a missing one is the child's error in every case.
        exe, own = resolve_executable(python_exe)
        self.executable = exe
        parent_sock, child_sock = socket.socketpair()
        life_read, life_write = os.pipe()
        # The deathline: the child asks the kernel to SIGKILL it when the write end
        # closes, which happens once the child is gone, or when the parent dies.  Unlike
        # the lifeline it needs no thread of the child to run (a C call may hold the GIL).
        death_read, death_write = os.pipe()
        try:
            child_env = _bootstrap.safe_environment(os.environ if env is None else env)
            popen = subprocess.Popen(
                [exe, "-c", _bootstrap.BOOTSTRAP, str(child_sock.fileno()), str(life_read)],
                pass_fds=(child_sock.fileno(), life_read, death_read),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # Own session: a Ctrl-C meant for the parent's terminal never reaches the child.
                start_new_session=True,
                env=child_env,
            )
        except OSError as exc:
            parent_sock.close()
            os.close(life_write)
            os.close(death_write)
            raise DaemonStartError(f"could not start python_exe {exe!r}: {exc}") from exc
        finally:
            child_sock.close()
            os.close(life_read)
            os.close(death_read)
        watch = self._started(popen)
        self._lifeline = life_write
        self._deathline = death_write
        self._deathline_in_child = death_read
        assert popen.stdout is not None and popen.stderr is not None
        self._pumps = [
            StreamPump(os.dup(popen.stdout.fileno()), "stdout", self.output, logger, self.pid),
            StreamPump(os.dup(popen.stderr.fileno()), "stderr", self.output, logger, self.pid),
        ]
        popen.stdout.close()
        popen.stderr.close()
        self._sock = parent_sock
        self.channel = Channel(parent_sock, watch_fds=watch)
        return own

    def _started(self, popen: subprocess.Popen[bytes]) -> tuple[int, ...]:
        """Take the started process; return the descriptors that become readable when it ends."""
        self.popen = popen
        self.pid = popen.pid
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        return () if self._pidfd is None else (self._pidfd,)

    def _start_error(self, error: DaemonStartError) -> DaemonStartError:
        """The error to raise when the child did not say hello (the child has been ended)."""
        return error

    def _bundle(self, own: bool) -> dict[str, Any] | None:
        """The first frame the child reads (a subclass may send more, or none: its child has it)."""
        bundle = _bootstrap.bundle(own, list(sys.path) if own else None)
        bundle["deathline"] = self._deathline_in_child
        return bundle

    def _handshake(self, own: bool, timeout: float | None) -> dict[str, Any]:
        bundle = self._bundle(own)
        try:
            if bundle is not None:
                self.channel.send(protocol.TAG_PICKLE, _serialize.dumps(bundle))
        except OSError:
            pass  # the child is already gone: the wait below says why
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = self.channel.wait(remaining)
            if ready is None:
                raise DaemonStartError(
                    f"child {self.pid} ({self.executable}) did not answer within {timeout} s{self.stderr_text()}"
                )
            if ready[0] == self.channel.fd:
                try:
                    tag, payload = self.channel.recv()
                except (EOFError, OSError):
                    pass
                else:
                    kind, *rest = _serialize.decode(tag, payload)
                    if kind == "hello":
                        hello: dict[str, Any]
                        (hello,) = rest
                        return hello
            self.wait_exit(STEP)
            code = self.popen.returncode
            reason = "is older than CPython 3.8" if code == _bootstrap.TOO_OLD_EXIT else "is not a usable Python"
            raise DaemonStartError(
                f"python_exe {self.executable!r} {reason}: the child exited with {describe_exit(code)} "
                f"before answering{self.stderr_text()}"
            )

    # -- state -----------------------------------------------------------------

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to `timeout` for the child to exit; reap it; return its code."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.join_output(STEP)
        return code

    def join_output(self, timeout: float) -> None:
        """Let the output threads forward what the child wrote before it ended."""
        deadline = time.monotonic() + timeout
        for pump in self._pumps:
            pump.join(max(0.0, deadline - time.monotonic()))

    def stderr_text(self) -> str:
        tail = list(self.output.stderr_tail)
        if not tail:
            return ""
        lines = [line if len(line) <= 300 else line[:300] + f"... ({len(line)} characters)" for line in tail[-20:]]
        return "; last lines on its stderr:\n    " + "\n    ".join(lines)

    def said_stopping(self) -> bool:
        return False  # a child of ours stops on purpose only when we end it: the session knows

    def interrupt(self) -> None:
        """Send SIGINT: the call running in the child raises KeyboardInterrupt there."""
        if self.popen.returncode is None:
            try:
                os.kill(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    # -- ending ----------------------------------------------------------------

    def close_channel(self) -> None:
        """The first, non-blocking step of every shutdown: the child's loop ends.

        Shutting the socket down first wakes any thread polling it in the parent.
        """
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.channel.close()

    def escalate(self, step: str | signal.Signals) -> None:
        """One step past the grace period: close the lifeline (the child's watchdog exits), or signal."""
        if step == "lifeline":
            if self._lifeline is not None:
                os.close(self._lifeline)
                self._lifeline = None
            return
        assert isinstance(step, signal.Signals)
        log.warning("child %d did not exit; sending %s", self.pid, step.name)
        try:
            os.kill(self.pid, step)
        except ProcessLookupError:
            pass

    def shutdown(self, timeout: float = GRACE) -> int | None:
        """End the child within a bounded time, escalating; idempotent; returns the exit code."""
        with self._lock:
            if self._closed:
                return self.popen.returncode
            self.close_channel()
            code = self.wait_exit(timeout)
            for step in ("lifeline", signal.SIGTERM, signal.SIGKILL):
                if code is not None:
                    break
                self.escalate(step)
                code = self.wait_exit(5.0 if step == signal.SIGKILL else STEP)
            if self._lifeline is not None:
                os.close(self._lifeline)
                self._lifeline = None
            if self._deathline is not None:
                os.close(self._deathline)  # the child has ended: nothing left to signal
                self._deathline = None
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self.join_output(STEP)
            self._closed = True
            _unregister(self)
            log.debug("child %d ended with %s", self.pid, describe_exit(code))
            return code


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status yet"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# -- children that outlive their handles: reaped in the background, and at exit ---------

_live: weakref.WeakSet[ChildProcess] = weakref.WeakSet()
_to_reap: list[Peer] = []
# Re-entrant: a collection may run a dropped handle's finalizer (`reap_later`) in a thread that holds
# it already (inside `_register`'s WeakSet.add, say); a plain lock deadlocks that thread.
_reaper_lock = threading.RLock()
_reaper: threading.Thread | None = None
_atexit_registered = False


def _register(child: ChildProcess) -> None:
    global _atexit_registered
    with _reaper_lock:
        _live.add(child)
        if not _atexit_registered:
            atexit.register(_end_all)
            _atexit_registered = True


def _unregister(child: ChildProcess) -> None:
    with _reaper_lock:
        _live.discard(child)


def reap_later(child: Peer) -> None:
    """End a child without blocking the caller (a finalizer): a thread finishes the job."""
    global _reaper
    child.close_channel()
    with _reaper_lock:
        _to_reap.append(child)
        if _reaper is None or not _reaper.is_alive():
            _reaper = threading.Thread(target=_reap, name="spawnproxy-reaper", daemon=True)
            _reaper.start()


def _reap() -> None:
    global _reaper
    while True:
        with _reaper_lock:
            if not _to_reap:
                _reaper = None
                return
            child = _to_reap.pop(0)
        child.shutdown()


def _end_all() -> None:
    """At interpreter exit: end every child still running."""
    with _reaper_lock:
        children = list(_live) + _to_reap
        _to_reap.clear()
    shutdown_all([child for child in children if not getattr(child, "ends_last", False)])
    shutdown_all([child for child in children if getattr(child, "ends_last", False)])


def shutdown_all(peers: Sequence[Peer], timeout: float = GRACE) -> None:
    """End many children at once: each step of the escalation runs for all of them together.

    Ending them one after another would add up their bounds (about 2 s for a
    child stuck in C and deaf to SIGTERM); together, the whole takes that once.
    Other peers (a child on an SSH host) end by their own shutdown, after.
    """
    for peer in peers:
        peer.close_channel()
    children = [peer for peer in peers if isinstance(peer, ChildProcess)]
    _wait_all(children, timeout)
    for step in ("lifeline", signal.SIGTERM, signal.SIGKILL):
        alive = [child for child in children if child.popen.returncode is None]
        if not alive:
            break
        for child in alive:
            child.escalate(step)
        _wait_all(alive, 5.0 if step == signal.SIGKILL else STEP)
    for peer in peers:
        peer.shutdown(0 if isinstance(peer, ChildProcess) else timeout)  # closes descriptors, reaps


def _wait_all(children: list[ChildProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
