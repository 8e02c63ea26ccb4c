"""Children behind a launcher: a command prefix under which the child's interpreter runs.

`launcher=["docker", "exec", "-i", "box"]` runs
`docker exec -i box env NAME=VALUE... python3 -c BOOTSTRAP 0 stdio`: the
protocol travels over the launcher's stdin and stdout, which it must pass
through untouched and unbuffered; the child sends what it writes to its own
stdout and stderr down the launcher's stderr, each line marked with its
stream (`stdio.main_stdio`), and the parent sorts the lines back.  `python_exe`
names the interpreter as the launcher sees it.  ssh is such a launcher
(`_ssh.SshProcess` extends `LaunchedProcess` with ssh's own command line).

Lifetime: the launcher's process stands for the child (its exit code is the
child's when the launcher passes it on).  Closing the launcher's stdin ends
the child's serve loop; a parent that dies closes the pipes, which a
watchdog thread of the child notices even while a call runs, wherever the
launcher put it.  No lifeline or deathline pipe is passed: a launcher may
close descriptors, change users or hosts.

Starting is bounded by `start_timeout` in every step, whatever the launcher
does: the bundle is written without blocking, and the child's first frame
(its hello) is read here, checked before it is trusted, so that a launcher
that never starts the interpreter, buffers its output or writes text of its
own fails with one line that says so, with what the launcher wrote to stderr.

Processes layer: uses `_process` (whose `ChildProcess` it extends), `_bootstrap`, `_serialize`,
`_errors`, `_output` and the child package's `protocol`, `stdio` and `transports`.
"""

from __future__ import annotations

import logging
import os
import re
import select
import signal
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import _bootstrap, _serialize
from ._child import protocol, stdio, transports
from ._errors import DaemonStartError
from ._output import StreamPump
from ._process import STEP, ChildProcess, describe_exit

log = logging.getLogger("spawnproxy")

# The interpreter a launcher runs when python_exe is not given: as found on its PATH.
DEFAULT_PYTHON = "python3"
# The frame header of `protocol` (a 4-byte signed big-endian length), read here before a
# channel is trusted with the stream; a hello is far smaller than HELLO_MAX.
_HEADER = struct.Struct("!i")
HELLO_MAX = 1 << 20
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STDERR_LINES = 5


def check_remote_env(env: Mapping[str, str]) -> None:
    """Refuse what the child's `env` command could take for an option or a command: names only."""
    for key in env:
        if not _NAME.match(key):
            raise ValueError(
                f"env key {key!r} is not a variable name the child's `env` command can be given "
                "(letters, digits and _, not starting with a digit)"
            )


def child_words(python_exe: str, env: Mapping[str, str] | None) -> list[str]:
    """`env NAME=VALUE... PYTHON -c BOOTSTRAP 0 stdio`: what runs under the launcher.

    Names are checked first: a name such as `--split-string` would be an option of `env`.
    There is always one NAME=VALUE (PYTHONSAFEPATH), so `env` never reads python_exe as an option.
    """
    if env:
        check_remote_env(env)
    variables = _bootstrap.safe_environment(env or {})
    return ["env", *(f"{k}={v}" for k, v in variables.items()), python_exe, "-c", _bootstrap.BOOTSTRAP, "0", "stdio"]


class StdioPump(StreamPump):
    """The launcher's stderr: the child's stdout and stderr lines (marked), and the launcher's own messages."""

    def _emit(self, raw: bytes) -> None:
        if raw.startswith(stdio.STDOUT_MARK):
            self._name, self._level, raw = "stdout", logging.INFO, raw[2:]
        else:
            if raw.startswith(stdio.STDERR_MARK):
                raw = raw[2:]
            self._name, self._level = "stderr", logging.WARNING
        super()._emit(raw)


class _Ended(Exception):
    """The launcher closed its stdout, or ended, before the child answered."""


class _Junk(Exception):
    """The launcher's stdout carried something other than the child's frames."""


class _Late(Exception):
    """The start's deadline passed."""


class LaunchedProcess(ChildProcess):
    """A child behind a launcher: its interpreter runs under a command prefix, over its stdin and stdout."""

    lanes = False  # pipes, not a socket pair: no descriptor can be passed to the child

    def __init__(
        self,
        launcher: Sequence[str],
        python_exe: str,
        *,
        env: Mapping[str, str] | None,
        logger: logging.Logger | None,
        logs_maxlen: int,
        start_timeout: float | None,
    ) -> None:
        self.launcher = list(launcher)  # for `_spawn`, which the constructor below runs
        super().__init__(python_exe, env=env, logger=logger, logs_maxlen=logs_maxlen, start_timeout=start_timeout)

    # -- what a kind of launcher says: ssh changes these --------------------------------------

    def command(self, python_exe: str, env: Mapping[str, str] | None) -> list[str]:
        """The whole command line: the launcher, then the words that start the child."""
        return [*self.launcher, *child_words(python_exe, env)]

    def what(self) -> str:
        """The launcher, as error messages name it."""
        return f"the launcher {self.launcher!r}"

    def exited_error(self, code: int | None) -> str:
        """What to say when the launcher ended before the child answered (the launcher's stderr follows)."""
        if code == _bootstrap.TOO_OLD_EXIT:
            return f"python_exe {self.executable!r} is older than CPython 3.8 (through {self.what()})"
        return (
            f"{self.what()} exited with {describe_exit(code)} before the child answered "
            f"(the launcher failed, or python_exe {self.executable!r} is not a usable Python through it)"
        )

    def silence_hint(self) -> str:
        """Why a child may not have answered in time (the launcher's stderr follows)."""
        return (
            "the launcher did not start the interpreter, or buffers its output "
            "(it must pass stdin and stdout through, unbuffered)"
        )

    # -- starting ------------------------------------------------------------------------------

    def _spawn(self, python_exe: Any, env: Mapping[str, str] | None, logger: logging.Logger | None) -> bool:
        """Start the launcher; its stdin and stdout are the channel, its stderr the child's output."""
        self.executable = str(python_exe)
        command = self.command(self.executable, env)
        try:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C in the parent's terminal must not end the launcher
                close_fds=True,
            )
        except OSError as exc:
            raise DaemonStartError(f"could not start {self.what()} for python_exe {self.executable!r}: {exc}") from exc
        watch = self._started(popen)
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        self._pumps = [StdioPump(os.dup(popen.stderr.fileno()), "stderr", self.output, logger, self.pid)]
        popen.stderr.close()
        self._read_fd, self._write_fd = os.dup(popen.stdout.fileno()), os.dup(popen.stdin.fileno())
        popen.stdout.close()
        popen.stdin.close()
        self.channel = transports.PipeChannel(self._read_fd, self._write_fd, watch_fds=watch)  # type: ignore[no-untyped-call]
        return False  # never the parent's own interpreter: sources travel, not code objects

    def _handshake(self, own: bool, timeout: float | None) -> dict[str, Any]:
        """Send the bundle and read the hello, each bounded by `timeout`, whatever the launcher does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bundle = _serialize.dumps(_bootstrap.bundle(False, None))
        try:
            self._write_frame(protocol.TAG_PICKLE + bundle, deadline)
            head = self._read(_HEADER.size + 1, deadline)
            (size,) = _HEADER.unpack(head[: _HEADER.size])
            if not 1 < size <= HELLO_MAX or head[-1:] != protocol.TAG_PICKLE:
                raise _Junk(head)
            payload = self._read(size - 1, deadline)
            try:
                kind, *rest = _serialize.decode(protocol.TAG_PICKLE, memoryview(payload))
            except Exception:
                raise _Junk(head + payload[:60]) from None
            if kind != "hello":
                raise _Junk(head + payload[:60])
        except _Late:
            self._end_now()
            raise DaemonStartError(
                f"python_exe {self.executable!r} did not answer within {timeout} s through {self.what()}: "
                f"{self.silence_hint()}{self.launcher_stderr()}"
            ) from None
        except _Ended:
            code = self.wait_exit(STEP)
            if code is None:  # it closed its stdout, yet runs on
                self._end_now()
                code = self.popen.returncode
            raise DaemonStartError(f"{self.exited_error(code)}{self.launcher_stderr()}") from None
        except _Junk as junk:
            shown = self._shown(junk.args[0])
            self._end_now()
            raise DaemonStartError(
                f"{self.what()} wrote {shown!r} to its stdout, not the child's frames: a "
                f"launcher must pass the child's stdout through untouched{self.launcher_stderr()}"
            ) from None
        hello: dict[str, Any]
        (hello,) = rest
        return hello

    def _shown(self, start: bytes) -> bytes:
        """The first bytes of what the launcher wrote: up to its first line's end, if that comes soon."""
        shown = start
        while b"\n" not in shown and len(shown) < 80 and select.select([self._read_fd], [], [], 0.05)[0]:
            more = os.read(self._read_fd, 80 - len(shown))
            if not more:
                break
            shown += more
        return shown[: shown.index(b"\n") + 1] if b"\n" in shown else shown

    def _write_frame(self, frame: bytes, deadline: float | None) -> None:
        """Write one frame (tag and payload) before `deadline`, never blocking: the launcher may not read."""
        data = memoryview(_HEADER.pack(len(frame)) + frame)
        poller = select.poll()
        poller.register(self._write_fd, select.POLLOUT)
        os.set_blocking(self._write_fd, False)
        try:
            while data:
                try:
                    data = data[transports.no_sigpipe(os.write, self._write_fd, data) :]  # type: ignore[no-untyped-call]
                except BlockingIOError:
                    poller.poll(self._ms_left(deadline))
                except BrokenPipeError:
                    return  # nobody reads: the launcher ended, which reading the hello finds
        finally:
            os.set_blocking(self._write_fd, True)  # as the channel expects

    def _read(self, count: int, deadline: float | None) -> bytes:
        """Read exactly `count` bytes of the launcher's stdout before `deadline` (nothing more: the channel reads on)."""
        data = b""
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        for fd in self.channel.watch_fds:  # the launcher's pidfd: it ended
            poller.register(fd, select.POLLIN)
        while len(data) < count:
            ready = dict(poller.poll(self._ms_left(deadline)))
            if self._read_fd in ready:
                chunk = os.read(self._read_fd, count - len(data))
                if not chunk:
                    raise _Junk(data) if data else _Ended()
                data += chunk
            elif ready:
                raise _Junk(data) if data else _Ended()
        return data

    @staticmethod
    def _ms_left(deadline: float | None) -> int:
        if deadline is None:
            return -1
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Late
        return int(left * 1000 + 0.999)

    def _end_now(self) -> None:
        """The child never answered: end the launcher and what it started, without a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            self._signal_group(sig)
            if self.wait_exit(STEP) is not None:
                return

    def _signal_group(self, sig: signal.Signals) -> None:
        """Signal the launcher's process group (its own session): what it started ends with it."""
        if self.popen.returncode is not None:
            return  # reaped: its group id may name another group by now
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # gone already, or a launcher that became another user this one may not signal

    def launcher_stderr(self) -> str:
        """The launcher's last lines on stderr, on one line, to end a start error with."""
        lines = [line.strip() for line in list(self.output.stderr_tail)[-_STDERR_LINES:] if line.strip()]
        if not lines:
            return "; it wrote nothing to stderr"
        shown = " | ".join(line if len(line) <= 200 else line[:200] + "..." for line in lines)
        return f"; its stderr: {shown}"

    # -- running and ending ----------------------------------------------------------------------

    def escalate(self, step: str | signal.Signals) -> None:
        """One step past the grace period: no lifeline to close; signals go to the launcher's group."""
        if step == "lifeline":
            return
        assert isinstance(step, signal.Signals)
        log.warning("launcher %d did not exit; sending %s to its process group", self.pid, step.name)
        self._signal_group(step)

    def wait_exit(self, timeout: float) -> int | None:
        code = super().wait_exit(timeout)
        if code is not None:
            # The launcher has gone: an interpreter it left running sees its pipes close, and ends.
            self.channel.close()
        return code

    def interrupt(self) -> None:
        pass  # a signal would end the launcher, not the call: a second Ctrl-C abandons the call

    def close_channel(self) -> None:
        # Closing the launcher's stdin ends the child's serve loop; the launcher then exits.
        self.channel.close()
