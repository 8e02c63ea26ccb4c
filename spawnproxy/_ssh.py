"""Children on other machines: `python_exe="ssh://[user@]host[:port]/path/to/python"`.

The system's OpenSSH client runs the bootstrap on the remote host; the
protocol travels over the ssh process's stdin and stdout, so nothing needs
to be installed there but a CPython 3.8+.  The remote child sends what it
writes to its own stdout and stderr down ssh's stderr, each line marked with
its stream (`stdio.main_stdio`); the parent sorts the lines back.

Lifetime: the local `ssh` process stands for the child (its exit code is the
remote child's, or 255 when ssh itself failed).  Closing ssh's stdin ends the
remote child's serve loop; a dropped connection closes the remote pipes,
which a watchdog thread of the remote child notices even while a call runs.

Processes layer: uses `_process` (whose `ChildProcess` it extends), `_bootstrap`, `_output` and
the child package's `stdio` and `transports`.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from . import _bootstrap
from ._child import stdio, transports
from ._errors import DaemonStartError
from ._output import StreamPump
from ._process import ChildProcess

log = logging.getLogger("spawnproxy")

SSH_OPTIONS_ENV = "SPAWNPROXY_SSH_OPTIONS"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_URL = re.compile(r"^ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?(?P<path>/.*)$")


def is_ssh_url(python_exe: object) -> bool:
    return isinstance(python_exe, str) and python_exe.startswith("ssh://")


def parse_ssh_url(url: str) -> tuple[str | None, str, int | None, str]:
    """`ssh://[user@]host[:port]/path/to/python` -> (user, host, port, path)."""
    match = _URL.match(url)
    if match is None:
        raise DaemonStartError(
            f"python_exe {url!r} is not an ssh URL of the form ssh://[user@]host[:port]/path/to/python"
        )
    port = match.group("port")
    return match.group("user"), match.group("host").strip("[]"), int(port) if port else None, match.group("path")


def check_remote_env(env: Mapping[str, str]) -> None:
    """Refuse what the remote `env` command could take for an option or a command: names only."""
    for key in env:
        if not _NAME.match(key):
            raise ValueError(
                f"env key {key!r} is not a variable name the remote host can be given "
                "(letters, digits and _, not starting with a digit)"
            )


def ssh_command(url: str, ssh_options: Sequence[str] | None, env: Mapping[str, str] | None) -> list[str]:
    """The local command line that starts the bootstrap on the remote host.

    The remote login shell runs `exec env NAME=VALUE... PYTHON -c BOOTSTRAP 0 stdio`,
    each word quoted for a POSIX shell; names are checked first (a name such as
    `--split-string` would be an option of `env`).  `cwd` is not here: the
    remote child changes to it itself (see DaemonProxy).
    """
    user, host, port, path = parse_ssh_url(url)
    if env:
        check_remote_env(env)
    ssh = shutil.which("ssh")
    if ssh is None:
        raise DaemonStartError(f"python_exe {url!r} needs the OpenSSH client, and there is no ssh on PATH")
    remote_env = _bootstrap.safe_environment(env or {})
    remote = "exec env " + " ".join(shlex.quote(f"{k}={v}") for k, v in remote_env.items()) + " "
    remote += f"{shlex.quote(path)} -c {shlex.quote(_bootstrap.BOOTSTRAP)} 0 stdio"
    command = [ssh, "-T", "-o", "BatchMode=yes", "-e", "none"]
    if port is not None:
        command += ["-p", str(port)]
    if user is not None:
        command += ["-l", user]
    command += shlex.split(os.environ.get(SSH_OPTIONS_ENV, ""))
    command += list(ssh_options or ())
    command += ["--", host, remote]
    return command


class SshPump(StreamPump):
    """ssh's stderr: the remote child's stdout and stderr lines (marked), and ssh's own messages."""

    def _emit(self, raw: bytes) -> None:
        if raw.startswith(stdio.STDOUT_MARK):
            self._name, self._level, raw = "stdout", logging.INFO, raw[2:]
        else:
            if raw.startswith(stdio.STDERR_MARK):
                raw = raw[2:]
            self._name, self._level = "stderr", logging.WARNING
        super()._emit(raw)


class SshProcess(ChildProcess):
    """A child on an SSH host, behind a local `ssh` process."""

    lanes = False  # pipes, not a socket pair: no descriptor can be passed to the child

    def __init__(
        self,
        url: str,
        *,
        env: Mapping[str, str] | None,
        logger: logging.Logger | None,
        logs_maxlen: int,
        start_timeout: float | None,
        ssh_options: Sequence[str] | None,
    ) -> None:
        self.ssh_options = ssh_options  # for `_spawn`, which the constructor below runs
        super().__init__(url, env=env, logger=logger, logs_maxlen=logs_maxlen, start_timeout=start_timeout)

    def _spawn(self, python_exe: Any, env: Mapping[str, str] | None, logger: logging.Logger | None) -> bool:
        """Start ssh, which runs the bootstrap on the remote host; its pipes are the channel."""
        url: str = python_exe
        command = ssh_command(url, self.ssh_options, env)
        self.executable = url
        # No lifeline or deathline pipes reach another machine: the remote child
        # watches its ssh pipes instead (see the module docstring).
        try:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C in the parent's terminal must not kill ssh
                close_fds=True,
            )
        except OSError as exc:
            raise DaemonStartError(f"could not start ssh for python_exe {url!r}: {exc}") from exc
        watch = self._started(popen)
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        self._pumps = [SshPump(os.dup(popen.stderr.fileno()), "stderr", self.output, logger, self.pid)]
        popen.stderr.close()
        read_fd, write_fd = os.dup(popen.stdout.fileno()), os.dup(popen.stdin.fileno())
        popen.stdout.close()
        popen.stdin.close()
        self.channel = transports.PipeChannel(read_fd, write_fd, watch_fds=watch)
        return False

    def _start_error(self, error: DaemonStartError) -> DaemonStartError:
        if self.popen.returncode == 255:
            return DaemonStartError(
                f"ssh could not reach the host of python_exe {self.executable!r}{self.stderr_text()}"
            )
        return DaemonStartError(str(error).replace("the child exited", "the remote command exited"))

    def interrupt(self) -> None:
        pass  # a signal would end ssh, not the call: a second Ctrl-C abandons the call

    def close_channel(self) -> None:
        # Closing ssh's stdin ends the remote serve loop; ssh then exits with the child's code.
        self.channel.close()

    def remote_pid(self) -> Any:
        return self.hello.get("pid")
