"""Detached daemons: start one that outlives its starter, and stop one by its recorded process.

A detached daemon is a supervisor process (this same library, started with
`python -c`, see `_supervisor`) that double-forks away from its starter, runs
`serve` in the foreground, writes a state file readable only by its owner, and
ends the daemon when it receives SIGTERM.  The starter hands it the spec
(`serve`'s arguments) on its stdin and waits, bounded, for the one line that
says it listens.

Uses `_bootstrap` (the safe environment and path), `_serialize` (the spec),
`_statefile` (the log, the state file, process identity) and the child
package's `transports` (writing without SIGPIPE).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any, NamedTuple

from . import _bootstrap, _serialize
from ._child import transports
from ._errors import ConnectError, DaemonStartError
from ._statefile import open_log, pid_alive, process_start_time, read_state_file

# A detached daemon's log past this size is renamed to <log>.1 (replacing the older one).
LOG_MAX_BYTES = 4 * 1024 * 1024


def package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Detached(NamedTuple):
    """What a detached daemon's supervisor reports once the daemon listens."""

    address: tuple[str, int] | str
    daemon_pid: int
    supervisor: int  # the pid to signal
    supervisor_start: int | None  # its start time (see `_statefile.process_start_time`)


def start_detached(
    definition_or_object: Any,
    where: tuple[str, int] | str,
    key: bytes,
    python_exe: str | os.PathLike[str] | None,
    files: dict[str, str],
    state_path: str,
    log_file: str | os.PathLike[str] | None,
    handshake_timeout: float,
    keepalive: int,
    options: dict[str, Any],
) -> Detached:
    """Start a detached daemon that serves `definition_or_object` (`serve`'s checked arguments); bounded."""
    log_path = os.path.abspath(os.fspath(log_file)) if log_file is not None else state_path + ".log"
    spec = {
        "definition": definition_or_object,
        "address": where,
        "authkey": key,
        "python_exe": None if python_exe is None else os.fspath(python_exe),
        "files": files,
        "state_file": state_path,
        "log_file": log_path,
        "log_max_bytes": LOG_MAX_BYTES,
        "handshake_timeout": handshake_timeout,
        "keepalive": keepalive,
        "options": options,
    }
    # The starter's sys.path comes first, on its own: the supervisor needs it to load the spec
    # (a definition may be an object of the starter's modules), as a child of this interpreter gets it.
    path = _serialize.dumps(list(sys.path))
    data = len(path).to_bytes(4, "big") + path + _serialize.dumps_with_dill(spec)
    env = _bootstrap.safe_environment(os.environ)
    env["PYTHONPATH"] = package_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start_timeout = options.get("start_timeout", 60.0)
    log_fd, log_created = open_log(log_path)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _bootstrap.SAFE_PATH + "from spawnproxy._supervisor import supervise; supervise()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,
            env=env,
        )
    except BaseException:
        _forget_log(log_path, log_created)
        raise
    finally:
        os.close(log_fd)
    assert proc.stdin is not None and proc.stdout is not None
    # The supervisor reports one line once the daemon listens (or failed to).  The process
    # started here exits at once, leaving the supervisor to its forked child: it is the
    # wait that is bounded, as killing that process would end nothing.
    limit = None if start_timeout is None else start_timeout + 5
    try:
        # A supervisor that died at once must not take this process with it (SIGPIPE).
        with contextlib.suppress(BrokenPipeError):
            transports.no_sigpipe(proc.stdin.write, data)
        with contextlib.suppress(BrokenPipeError):
            transports.no_sigpipe(proc.stdin.close)
        line = proc.stdout.readline() if select.select([proc.stdout], [], [], limit)[0] else b""
    finally:
        proc.stdout.close()
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:  # it stalled before it forked: ending it ends everything
            proc.kill()
            proc.wait()
    try:
        report = json.loads(line)
    except ValueError:
        raise DaemonStartError(f"the detached daemon did not report that it listens (see {log_path})") from None
    if not report.get("ok"):
        _forget_log(log_path, log_created)  # what it holds is in the error
        raise DaemonStartError(report.get("error", "the detached daemon did not start"), report.get("remote_traceback"))
    address = report["address"]
    return Detached(
        tuple(address) if isinstance(address, list) else address,
        report["daemon_pid"],
        report["pid"],
        report.get("pid_start"),
    )


def check_not_running(state_path: str) -> None:
    """Refuse to take over the state file of a daemon that still runs (its process, same start time)."""
    try:
        old = read_state_file(state_path)
    except ConnectError:
        return  # unreadable, or not private: it is replaced, never used
    pid, started = old.get("pid"), old.get("pid_start")
    if isinstance(pid, int) and pid_alive(pid) and started in (None, process_start_time(pid)):
        raise DaemonStartError(f"a daemon (pid {pid}) already runs with state file {state_path!r}")


def _forget_log(path: str, created: bool) -> None:
    """Remove the log a failed start created (one it appended to holds older output: it stays)."""
    if created:
        with contextlib.suppress(OSError):
            os.unlink(path)


def stop_pid(pid: int, timeout: float = 5.0, start_time: int | None = None) -> bool:
    """SIGTERM a detached daemon's supervisor, then SIGKILL; whether it has ended.

    With `start_time` (see `Server.state`), a process that started at another
    time has merely reused the pid: it is not signalled, and the daemon counts as ended.
    """

    def ended() -> bool:
        return not pid_alive(pid) or (start_time is not None and process_start_time(pid) != start_time)

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if ended():
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if ended():
                return True
            time.sleep(0.02)
    return ended()
