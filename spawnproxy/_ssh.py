"""Children on other machines: `python_exe="ssh://[user@]host[:port]/path/to/python"`.

ssh is one launcher among others (see `_launch`): the system's OpenSSH client
runs the bootstrap on the remote host, the protocol travels over the ssh
process's stdin and stdout, and the remote child's output comes back on ssh's
stderr, marked; nothing needs to be installed there but a CPython 3.8+.  What
ssh changes: its command line (the words go to the remote login shell, each
quoted), the URL, and its messages (exit code 255 is ssh's own failure).

Lifetime: the local `ssh` process stands for the child (its exit code is the
remote child's, or 255 when ssh itself failed).  Closing ssh's stdin ends the
remote child's serve loop; a dropped connection closes the remote pipes,
which a watchdog thread of the remote child notices even while a call runs.

Processes layer: uses `_launch` (whose `LaunchedProcess` it extends), `_process`, `_bootstrap` and `_errors`.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence

from ._bootstrap import TOO_OLD_EXIT
from ._errors import DaemonStartError
from ._launch import LaunchedProcess, check_remote_env, child_words
from ._process import describe_exit

__all__ = ["SSH_OPTIONS_ENV", "SshProcess", "check_remote_env", "is_ssh_url", "parse_ssh_url", "ssh_command"]

SSH_OPTIONS_ENV = "SPAWNPROXY_SSH_OPTIONS"
_URL = re.compile(r"^ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/@]+)(?::(?P<port>\d+))?(?P<path>/.*)$")


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


def ssh_command(url: str, ssh_options: Sequence[str] | None, env: Mapping[str, str] | None) -> list[str]:
    """The local command line that starts the bootstrap on the remote host.

    The remote login shell runs `exec env NAME=VALUE... PYTHON -c BOOTSTRAP 0 stdio`,
    each word quoted for a POSIX shell; names are checked first (a name such as
    `--split-string` would be an option of `env`).  `cwd` is not here: the
    remote child changes to it itself (see DaemonProxy).
    """
    user, host, port, path = parse_ssh_url(url)
    words = child_words(path, env)  # checks the env names first
    ssh = shutil.which("ssh")
    if ssh is None:
        raise DaemonStartError(f"python_exe {url!r} needs the OpenSSH client, and there is no ssh on PATH")
    remote = "exec " + " ".join(map(shlex.quote, words))
    command = [ssh, "-T", "-o", "BatchMode=yes", "-e", "none"]
    if port is not None:
        command += ["-p", str(port)]
    if user is not None:
        command += ["-l", user]
    command += shlex.split(os.environ.get(SSH_OPTIONS_ENV, ""))
    command += list(ssh_options or ())
    command += ["--", host, remote]
    return command


class SshProcess(LaunchedProcess):
    """A child on an SSH host, behind a local `ssh` process: a launcher with a command line of its own."""

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
        self.ssh_options = ssh_options  # for `command`, which the constructor below runs
        super().__init__(["ssh"], url, env=env, logger=logger, logs_maxlen=logs_maxlen, start_timeout=start_timeout)

    def command(self, python_exe: str, env: Mapping[str, str] | None) -> list[str]:
        return ssh_command(python_exe, self.ssh_options, env)

    def what(self) -> str:
        return "ssh"

    def exited_error(self, code: int | None) -> str:
        if code == 255:
            return f"ssh could not reach the host of python_exe {self.executable!r}"
        if code == TOO_OLD_EXIT:
            return super().exited_error(code)
        return (
            f"python_exe {self.executable!r} is not a usable Python: the remote command exited with "
            f"{describe_exit(code)} before answering"
        )

    def silence_hint(self) -> str:
        return "ssh did not connect, or the remote interpreter did not start (see ssh_options, ConnectTimeout)"
