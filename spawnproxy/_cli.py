"""The command line: `spawnproxy serve | connect | call | stop` (also `python -m spawnproxy`).

The commands and `main`; their parser and help are in `_cli_args`.

Interface layer: uses the network modules (`_server`, `_client`, `_detach`), `_daemon`,
`_statefile` and `_cli_args`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from . import _statefile
from ._addresses import LOOPBACK, format_address, parse_address
from ._cli_args import CommandError, UsageError, build_parser, definition_of, parse_arguments
from ._client import client_context, connect
from ._daemon import daemon_of
from ._detach import stop_pid
from ._errors import AuthenticationError, ConnectError, DaemonStartError, RemoteError, SpawnProxyError
from ._keys import read_authkey_file
from ._server import serve

__all__ = ["build_parser", "main"]


def _state_file(options: argparse.Namespace) -> str | None:
    """--state-file, else the named (or default) daemon's unless --address says where the daemon is."""
    if options.state_file is not None:
        if options.name is not None:
            raise UsageError("give --name or --state-file, not both")
        return options.state_file  # type: ignore[no-any-return]
    if options.address is not None and options.name is None:
        return None
    return _statefile.default_paths(options.name or _statefile.DEFAULT_NAME)[0]


def _connect(options: argparse.Namespace) -> Any:
    state_file = _state_file(options)
    if options.address is not None and options.authkey_file is None and state_file is None:
        raise UsageError("--address needs --authkey-file (or give --state-file)")
    if state_file is not None and os.path.lexists(state_file):
        _statefile.read_state_file(state_file)  # a planted one is refused at once, not waited on
    authkey = read_authkey_file(options.authkey_file) if options.authkey_file else None
    context = None
    if options.cafile or options.certfile:
        context = client_context(options.cafile, options.certfile, options.keyfile)
    # --wait retries here rather than with connect(max_attempts=None): until the deadline,
    # a state file not written yet is worth waiting for too.
    deadline = time.monotonic() + (options.wait or 0)
    while True:
        try:
            return connect(
                options.address,
                authkey,
                state_file=state_file,
                ssl_context=context,
                server_hostname=options.server_hostname,
            )
        except AuthenticationError:
            raise  # a wrong key does not become right
        except SpawnProxyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


# -- commands -----------------------------------------------------------------------------------


def cmd_serve(options: argparse.Namespace) -> int:
    definition = definition_of(options.target, options.args)
    if options.log_file is not None and not options.detach:
        raise UsageError("--log-file is for --detach (in the foreground the output goes to this terminal)")
    state_file, log_file = options.state_file, options.log_file
    if state_file is None:
        state_file, default_log = _statefile.default_paths(options.name or _statefile.DEFAULT_NAME, create=True)
        log_file = log_file or (default_log if options.detach else None)
    elif options.name is not None:
        raise UsageError("give --name or --state-file, not both")
    authkey = read_authkey_file(options.authkey_file) if options.authkey_file else None
    address = parse_address(options.address) if options.address else None
    server = serve(
        definition,
        address,
        authkey,
        python_exe=options.python,
        certfile=options.certfile,
        keyfile=options.keyfile,
        cafile=options.cafile,
        detach=options.detach,
        state_file=state_file,
        log_file=log_file,
        handshake_timeout=options.handshake_timeout,
        allow_plaintext=options.allow_plaintext,
    )
    where = format_address(server.address)
    if options.detach:
        print(f"spawnproxy: daemon {server.pid} serves {options.target} on {where}")
        print(f"spawnproxy: address, pid and key in {server.state_file}; output in {log_file or state_file + '.log'}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"spawnproxy: daemon {server.pid} serves {options.target} on {where}", flush=True)
    print(f"spawnproxy: address, pid and key in {server.state_file}; Ctrl-C stops it", flush=True)
    try:
        while not stop.wait(0.5):
            if not server.is_alive():
                print("spawnproxy: the daemon ended by itself", file=sys.stderr)
                server.terminate()
                return 1
    except KeyboardInterrupt:
        pass
    server.terminate()
    return 0


def cmd_connect(options: argparse.Namespace) -> int:
    root = _connect(options)
    handle = daemon_of(root)
    version = ".".join(map(str, handle.python_version))
    print(f"connected to daemon {handle.pid} (Python {version}) at {handle.address}: {root!r}")  # type: ignore[attr-defined]
    root.terminate_daemon()
    return 0


def cmd_call(options: argparse.Namespace) -> int:
    root = _connect(options)
    try:
        target = root
        reached: list[str] = []
        for part in options.attribute.split("."):
            reached.append(part)
            try:
                target = getattr(target, part)
            except AttributeError:
                raise CommandError(f"the served object has no attribute {'.'.join(reached)!r}") from None
        if options.get:
            print(repr(target))
        else:
            positional, keywords = parse_arguments(options.args)
            shown = f"{options.attribute}({', '.join(options.args)})"
            try:
                result = target(*positional, **keywords)
            except RemoteError as exc:
                raise CommandError(f"{shown} raised {exc.remote_type}: {exc.remote_message}") from None
            except SpawnProxyError:
                raise  # the daemon or the connection failed, not the call
            except Exception as exc:
                raise CommandError(f"{shown} raised {type(exc).__name__}: {exc}") from None
            print(repr(result))
    finally:
        root.terminate_daemon()
    return 0


def cmd_stop(options: argparse.Namespace) -> int:
    state_file = _state_file(options)
    if state_file is None:  # --address and --authkey-file: only the daemon itself can be asked
        root = _connect(options)
        handle = daemon_of(root)
        handle.stop_daemon()  # type: ignore[attr-defined]
        print(f"spawnproxy: asked daemon {handle.pid} to stop")
        return 0
    state = _statefile.read_state_file(state_file)  # a planted one is refused before anything happens
    pid: Any = state.get("pid")
    started: Any = state.get("pid_start")
    # The process that wrote the state file, if it still runs: the same pid AND the same start time.
    recorded = isinstance(pid, int) and isinstance(started, int) and _statefile.process_start_time(pid) == started
    try:
        root = _connect(options)
    except AuthenticationError:
        raise  # whatever answers there is not this daemon: nothing is signalled
    except ConnectError:
        if recorded:
            return _end_process(state_file, pid, started, " (it did not answer)")
        if isinstance(pid, int) and _statefile.process_start_time(pid) is not None:
            why = "records no start time" if started is None else "records another start time"
            raise CommandError(
                f"nothing answers at {format_address(_address(state))} and process {pid} is not "
                f"provably its daemon ({state_file} {why}): not signalling it; remove {state_file} if the daemon is gone"
            ) from None
        if not _is_local(state["address"]):
            raise
        # The process that wrote it has ended and nothing answers there: the file is all that is left.
        _remove(state_file)
        print(f"spawnproxy: no daemon runs for {state_file} (pid {pid} has ended); removed the stale state file")
        return 0
    handle = daemon_of(root)
    if recorded and handle.pid == state.get("daemon_pid"):
        # The daemon proved it holds the key, and it is the one the file records: so is its process.
        root.terminate_daemon()
        return _end_process(state_file, pid, started, "")
    handle.stop_daemon()  # type: ignore[attr-defined]
    print(f"spawnproxy: asked daemon {handle.pid} to stop")
    _remove(state_file)
    return 0


def _end_process(state_file: str, pid: int, started: int, how: str) -> int:
    if not stop_pid(pid, start_time=started):
        raise CommandError(f"the daemon of {state_file} (pid {pid}) did not end, even on SIGKILL")
    _remove(state_file)
    print(f"spawnproxy: stopped the daemon of {state_file} (pid {pid}){how}")
    return 0


def _address(state: dict[str, Any]) -> tuple[str, int] | str:
    address = state["address"]
    return (address[0], address[1]) if isinstance(address, list) else address  # type: ignore[no-any-return]


def _is_local(address: Any) -> bool:
    """Whether a state file's address is on this machine (a Unix socket, or loopback)."""
    return isinstance(address, str) or address[0] in LOOPBACK


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


# Python's words in the library's messages, and the command line's for the same thing.
_CLI_WORDS = [
    ("(max_attempts=None waits until it is)", "(--wait SECONDS waits for it)"),
    ("give connect() an ssl_context that trusts it (its CA file, or the daemon's own certificate)",
     "give --cafile with its CA (or the daemon's own certificate)"),
    ("keyfile and cafile need a certfile", "--keyfile and --cafile need --certfile"),
    ("allow_plaintext=True", "--allow-plaintext"),
]  # fmt: skip


def describe(exc: BaseException) -> str:
    """One line for an error, in the words of the command line."""
    if isinstance(exc, DaemonStartError) and exc.remote_traceback:
        head = str(exc).splitlines()[0].rstrip(":")
        text = f"{head}: {_summary(exc.remote_traceback)}"
    elif isinstance(exc, (SpawnProxyError, CommandError, OSError, ValueError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    for python, command_line in _CLI_WORDS:
        text = text.replace(python, command_line)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _summary(traceback: str) -> str:
    """A traceback's last line, with where it was raised: `ZeroDivisionError: ... (calc.py, line 3)`."""
    lines = [line for line in traceback.splitlines() if line.strip()]
    where = re.findall(r'^\s*File "(.*)", line (\d+)', traceback, re.M)
    last = lines[-1].strip() if lines else "(no traceback)"
    return f"{last} ({where[-1][0]}, line {where[-1][1]})" if where else last


COMMANDS = {"serve": cmd_serve, "connect": cmd_connect, "call": cmd_call, "stop": cmd_stop}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0, 1 on failure, 2 for a wrong command line)."""
    options = build_parser().parse_args(argv)
    try:
        return COMMANDS[options.command](options)
    except UsageError as exc:
        prog = f"spawnproxy {options.command}"
        print(f"{prog}: error: {exc} (see {prog} --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spawnproxy: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"spawnproxy: error: {describe(exc)}", file=sys.stderr)
        return 1
