"""The command line: `spawnproxy serve | connect | call | stop` (also `python -m spawnproxy`)."""

from __future__ import annotations

import argparse
import ast
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from . import _network
from ._definitions import InstanceDefinition, ModuleDefinition, ScriptDefinition
from ._errors import AuthenticationError, SpawnProxyError
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
once the daemon listens, and the daemon runs on until `spawnproxy stop`."""

CONNECT_DESCRIPTION = """\
Connect to a daemon and describe what it serves: a quick check that it is up and that
the key (and certificate) are right. Exits with status 1 and a message if not."""

CALL_DESCRIPTION = """\
Call NAME (an attribute of the served object, dotted for a nested one) with ARGs, read
as for `serve`, and print the result's repr. With no ARG and --get, print the value of
NAME instead of calling it."""

STOP_DESCRIPTION = """\
Stop a daemon: by the process id in its state file, when it runs on this machine, or
else by asking it over an authenticated connection."""


def _formatter(prog: str) -> argparse.HelpFormatter:
    # A fixed width: the help is the same in every terminal (docs/cli.md quotes it).
    return argparse.RawDescriptionHelpFormatter(prog, width=HELP_WIDTH, max_help_position=32)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which daemon")
    group.add_argument(
        "--state-file",
        metavar="FILE",
        help=f"the file `serve` wrote (default: {DEFAULT_STATE_FILE}, unless --address is given)",
    )
    group.add_argument("--address", metavar="HOST:PORT|PATH", help="the daemon's address (with --authkey-file)")
    group.add_argument("--authkey-file", metavar="FILE", help="a file holding the daemon's key")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--cafile", metavar="FILE", help="trust the daemon's certificate if this CA (or file) signed it")
    tls.add_argument("--certfile", metavar="FILE", help="a client certificate, for a daemon that requires one")
    tls.add_argument("--keyfile", metavar="FILE", help="the client certificate's private key")
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
        help="where to listen: a TCP address or a Unix socket path (default: 127.0.0.1:0, any free port)",
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
    tls = serve.add_argument_group("TLS")
    tls.add_argument("--certfile", metavar="FILE", help="serve TLS with this certificate (PEM)")
    tls.add_argument("--keyfile", metavar="FILE", help="its private key, if not in the certificate file")
    tls.add_argument("--cafile", metavar="FILE", help="require client certificates signed by this CA")
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


def _connect(options: argparse.Namespace) -> Any:
    import ssl

    state_file = options.state_file
    authkey = None
    if options.authkey_file:
        authkey = _network.read_authkey_file(options.authkey_file)
    if options.address is None and state_file is None:
        state_file = DEFAULT_STATE_FILE
    if options.address is not None and authkey is None and state_file is None:
        raise SystemExit("spawnproxy: error: --address needs --authkey-file (or give --state-file)")
    context: ssl.SSLContext | None = None
    if options.cafile or options.certfile:
        context = _network.client_context(options.cafile, options.certfile, options.keyfile)
    attempts = None if options.wait else 1
    connect_options: dict[str, Any] = {"ssl_context": context, "server_hostname": options.server_hostname}
    if options.wait:
        return _with_deadline(options.wait, options.address, authkey, state_file, attempts, connect_options)
    return _network.connect(options.address, authkey, state_file=state_file, max_attempts=attempts, **connect_options)


def _with_deadline(
    seconds: float, address: Any, authkey: bytes | None, state_file: str | None, attempts: Any, options: dict[str, Any]
) -> Any:
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            return _network.connect(address, authkey, state_file=state_file, **options)
        except SpawnProxyError as exc:
            if isinstance(exc, AuthenticationError) or time.monotonic() >= deadline:
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
    state_file = options.state_file
    if options.address is None and state_file is None:
        state_file = DEFAULT_STATE_FILE
    if state_file is not None and options.address is None:
        state = _network.read_state_file(state_file)
        pid = state.get("pid")
        if isinstance(pid, int) and _network._pid_alive(pid) and _network._looks_like_supervisor(pid):
            _network.stop_pid(pid)
            try:
                os.unlink(state_file)
            except OSError:
                pass
            print(f"spawnproxy: stopped the daemon of {state_file} (pid {pid})")
            return 0
    from ._daemon import daemon_of

    root = _connect(options)
    handle = daemon_of(root)
    handle.stop_daemon()  # type: ignore[attr-defined]
    print(f"spawnproxy: asked daemon {handle.pid} to stop")
    if state_file is not None:
        try:
            os.unlink(state_file)
        except OSError:
            pass
    return 0


COMMANDS = {"serve": cmd_serve, "connect": cmd_connect, "call": cmd_call, "stop": cmd_stop}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    options = build_parser().parse_args(argv)
    try:
        return COMMANDS[options.command](options)
    except (SpawnProxyError, OSError, ValueError, TypeError) as exc:
        print(f"spawnproxy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
