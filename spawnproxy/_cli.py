"""The command line: `spawnproxy serve | connect | call | stop` (also `python -m spawnproxy`)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from . import _network
from ._definitions import InstanceDefinition, ModuleDefinition, ScriptDefinition
from ._errors import AuthenticationError, ConnectError, SpawnProxyError
from ._version import __version__

DEFAULT_STATE_FILE = "spawnproxy.json"
HELP_WIDTH = 100

DESCRIPTION = "Serve Python objects to authenticated clients, and reach them: the spawnproxy command line."

SERVE_DESCRIPTION = """\
Run TARGET in a daemon that listens for clients holding its key.

TARGET is a script file (path/to/script.py), a module name (package.module), or
module:Class, instantiated with ARGs: NAME=VALUE gives a keyword argument, any other ARG
a positional one; each VALUE is read as a Python literal where it is one (42, 'text',
[1, 2]) and as a string otherwise.

The daemon listens on 127.0.0.1 and a free port unless --address says otherwise. Its
address, process id and key go to the state file (readable only by its owner), which
`connect`, `call` and `stop` read, as does spawnproxy.connect(state_file=...). Without
--authkey-file a random key is made. Whoever holds the key can run any code in the daemon.

Without --detach the daemon runs until Ctrl-C or SIGTERM; with it, the command returns
once the daemon listens, and the daemon runs on until `spawnproxy stop`.

An address beyond loopback (0.0.0.0 included) needs TLS (--certfile), or --allow-plaintext
on a private network you trust."""

CONNECT_DESCRIPTION = """\
Connect to a daemon and describe what it serves: a quick check that it is up and that
the key (and certificate) are right. Exits with status 1 and a message if not."""

CALL_DESCRIPTION = """\
Call NAME (an attribute of the served object, dotted for a nested one) with ARGs, read
as for `serve`, and print the result's repr. With no ARG and --get, print the value of
NAME instead of calling it."""

STOP_DESCRIPTION = """\
Stop a daemon: by the process id in its state file, when it runs on this machine, or
else by asking it over an authenticated connection. A state file whose daemon has ended
(its process is gone and nothing answers at its local address) is removed."""


def _formatter(prog: str) -> argparse.HelpFormatter:
    # A fixed width: the help is the same in every terminal (docs/cli.md quotes it).
    return argparse.RawDescriptionHelpFormatter(prog, width=HELP_WIDTH, max_help_position=32)


def _file_options(parser: argparse.ArgumentParser, title: str, helps: dict[str, str]) -> argparse._ArgumentGroup:
    """A group of options that each name a file: {"--flag": help}."""
    group = parser.add_argument_group(title)
    for flag, text in helps.items():
        group.add_argument(flag, metavar="FILE", help=text)
    return group


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which daemon")
    group.add_argument(
        "--state-file",
        metavar="FILE",
        help=f"the file `serve` wrote (default: {DEFAULT_STATE_FILE}, unless --address is given)",
    )
    group.add_argument("--address", metavar="HOST:PORT|PATH", help="the daemon's address (with --authkey-file)")
    group.add_argument("--authkey-file", metavar="FILE", help="a file holding the daemon's key")
    tls = _file_options(
        parser,
        "TLS",
        {
            "--cafile": "trust the daemon's certificate if this CA (or file) signed it",
            "--certfile": "a client certificate, for a daemon that requires one",
            "--keyfile": "the client certificate's private key",
        },
    )
    tls.add_argument("--server-hostname", metavar="NAME", help="the name to check the certificate against")
    parser.add_argument(
        "--wait", metavar="SECONDS", type=float, help="retry while nothing listens yet, up to this long"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spawnproxy", description=DESCRIPTION, formatter_class=_formatter)
    parser.add_argument("--version", action="version", version=f"spawnproxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="run a script, module or class in a daemon", description=SERVE_DESCRIPTION,
        formatter_class=_formatter,
    )  # fmt: skip
    serve.add_argument("target", metavar="TARGET", help="path/to/script.py, a module name, or module:Class")
    serve.add_argument("args", metavar="ARG", nargs="*", help="arguments of module:Class (NAME=VALUE for keywords)")
    serve.add_argument("--python", metavar="EXE", help="the daemon's interpreter (default: this one; ssh://... too)")
    serve.add_argument(
        "--address",
        metavar="HOST:PORT|PATH",
        help="where to listen: HOST:PORT, [IPv6]:PORT, or a Unix socket path with a / in it (or unix:PATH); "
        "default: 127.0.0.1:0, any free port",
    )
    serve.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="listen beyond loopback without TLS (only on a private network you trust)",
    )
    serve.add_argument("--authkey-file", metavar="FILE", help="read the key from FILE (default: a random key)")
    serve.add_argument(
        "--state-file",
        metavar="FILE",
        default=DEFAULT_STATE_FILE,
        help=f"where to write address, pid and key (default: {DEFAULT_STATE_FILE})",
    )
    serve.add_argument("--detach", action="store_true", help="return once the daemon listens; it runs on")
    serve.add_argument("--log-file", metavar="FILE", help="a detached daemon's output (default: STATE_FILE.log)")
    _file_options(
        serve,
        "TLS",
        {
            "--certfile": "serve TLS with this certificate (PEM)",
            "--keyfile": "its private key, if not in the certificate file",
            "--cafile": "require client certificates signed by this CA",
        },
    )
    serve.add_argument(
        "--handshake-timeout",
        metavar="SECONDS",
        type=float,
        default=_network.HANDSHAKE_TIMEOUT,
        help="drop a client that has not authenticated within this time (default: %(default)s)",
    )

    connect = commands.add_parser(
        "connect", help="check that a daemon answers", description=CONNECT_DESCRIPTION, formatter_class=_formatter
    )
    _connection_options(connect)

    call = commands.add_parser(
        "call", help="call a function of a daemon, print the result", description=CALL_DESCRIPTION,
        formatter_class=_formatter,
    )  # fmt: skip
    call.add_argument("name", metavar="NAME", help="the attribute to call, e.g. add or store.get")
    call.add_argument("args", metavar="ARG", nargs="*", help="its arguments (NAME=VALUE for keywords)")
    call.add_argument("--get", action="store_true", help="print the attribute's value instead of calling it")
    _connection_options(call)

    stop = commands.add_parser("stop", help="stop a daemon", description=STOP_DESCRIPTION, formatter_class=_formatter)
    _connection_options(stop)
    return parser


# -- helpers ---------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A Python literal where the text is one, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_arguments(args: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        if sep and name.isidentifier():
            keywords[name] = parse_value(value)
        else:
            positional.append(parse_value(arg))
    return positional, keywords


def definition_of(target: str, args: Sequence[str]) -> Any:
    """TARGET and its ARGs -> a definition."""
    if target.endswith(".py") or os.sep in target:
        if args:
            raise SystemExit(f"spawnproxy: error: a script takes no ARG (got {' '.join(args)})")
        try:
            with open(target, encoding="utf-8") as f:
                return ScriptDefinition(f.read())
        except OSError as exc:
            raise SystemExit(f"spawnproxy: error: cannot read the script {target!r}: {exc}") from None
    module, sep, cls = target.partition(":")
    if sep:
        positional, keywords = parse_arguments(args)
        return InstanceDefinition(module, cls, *positional, **keywords)
    if args:
        raise SystemExit(f"spawnproxy: error: a module takes no ARG; did you mean {target}:Class?")
    return ModuleDefinition(target)


def _state_file(options: argparse.Namespace) -> str | None:
    """--state-file, else the default one unless --address says where the daemon is."""
    if options.state_file is None and options.address is None:
        return DEFAULT_STATE_FILE
    return options.state_file  # type: ignore[no-any-return]


def _connect(options: argparse.Namespace) -> Any:
    state_file = _state_file(options)
    authkey = _network.read_authkey_file(options.authkey_file) if options.authkey_file else None
    if options.address is not None and authkey is None and state_file is None:
        raise SystemExit("spawnproxy: error: --address needs --authkey-file (or give --state-file)")
    context = None
    if options.cafile or options.certfile:
        context = _network.client_context(options.cafile, options.certfile, options.keyfile)
    # --wait retries here rather than with connect(max_attempts=None): until the deadline,
    # a state file not written yet is worth waiting for too.
    deadline = time.monotonic() + (options.wait or 0)
    while True:
        try:
            return _network.connect(
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
    authkey = _network.read_authkey_file(options.authkey_file) if options.authkey_file else None
    address = _network.parse_address(options.address) if options.address else None
    server = _network.serve(
        definition,
        address,
        authkey,
        python_exe=options.python,
        certfile=options.certfile,
        keyfile=options.keyfile,
        cafile=options.cafile,
        detach=options.detach,
        state_file=options.state_file,
        log_file=options.log_file,
        handshake_timeout=options.handshake_timeout,
        allow_plaintext=options.allow_plaintext,
    )
    where = _network.format_address(server.address)
    if options.detach:
        print(f"spawnproxy: daemon {server.pid} serves {options.target} on {where}")
        print(
            f"spawnproxy: address, pid and key in {server.state_file}; output in {options.log_file or str(server.state_file) + '.log'}"
        )
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
    from ._daemon import daemon_of

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
        for part in options.name.split("."):
            target = getattr(target, part)
        if options.get:
            print(repr(target))
        else:
            positional, keywords = parse_arguments(options.args)
            print(repr(target(*positional, **keywords)))
    finally:
        root.terminate_daemon()
    return 0


def cmd_stop(options: argparse.Namespace) -> int:
    state_file = _state_file(options)
    stale = False
    if state_file is not None and options.address is None:
        state = _network.read_state_file(state_file)
        pid = state.get("pid")
        if isinstance(pid, int) and _network._pid_alive(pid) and _network._looks_like_supervisor(pid):
            if not _network.stop_pid(pid):
                print(
                    f"spawnproxy: the daemon of {state_file} (pid {pid}) did not end, even on SIGKILL", file=sys.stderr
                )
                return 1
            _remove(state_file)
            print(f"spawnproxy: stopped the daemon of {state_file} (pid {pid})")
            return 0
        stale = isinstance(pid, int) and not _network._pid_alive(pid) and _is_local(state["address"])
    from ._daemon import daemon_of

    try:
        root = _connect(options)
    except ConnectError as exc:
        if not stale or isinstance(exc, AuthenticationError):
            raise
        # The process that wrote it has ended and nothing answers there: the file is all that is left.
        _remove(state_file)
        print(f"spawnproxy: no daemon runs for {state_file} (pid {pid} has ended); removed the stale state file")
        return 0
    handle = daemon_of(root)
    handle.stop_daemon()  # type: ignore[attr-defined]
    print(f"spawnproxy: asked daemon {handle.pid} to stop")
    _remove(state_file)
    return 0


def _is_local(address: Any) -> bool:
    """Whether a state file's address is on this machine (a Unix socket, or loopback)."""
    return isinstance(address, str) or address[0] in _network._LOOPBACK


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


COMMANDS = {"serve": cmd_serve, "connect": cmd_connect, "call": cmd_call, "stop": cmd_stop}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    options = build_parser().parse_args(argv)
    try:
        return COMMANDS[options.command](options)
    except (SpawnProxyError, OSError, ValueError, TypeError) as exc:
        print(f"spawnproxy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
