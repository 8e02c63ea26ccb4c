"""The command line: `spawnproxy serve | connect | call | stop` (also `python -m spawnproxy`)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from . import _statefile
from ._addresses import LOOPBACK, format_address, parse_address
from ._client import client_context, connect
from ._definitions import InstanceDefinition, ModuleDefinition, ScriptDefinition
from ._detach import stop_pid
from ._errors import AuthenticationError, ConnectError, DaemonStartError, RemoteError, SpawnProxyError
from ._keys import read_authkey_file
from ._server import HANDSHAKE_TIMEOUT, serve
from ._version import __version__

HELP_WIDTH = 100

DESCRIPTION = "Serve Python objects to authenticated clients, and reach them: the spawnproxy command line."

SERVE_DESCRIPTION = """\
Run TARGET in a daemon that listens for clients holding its key.

TARGET is a script file (path/to/script.py), a module name (package.module), or
module:Class, instantiated with ARGs: NAME=VALUE gives a keyword argument, any other ARG
a positional one; each VALUE is read as a Python literal where it is one (42, 'text',
[1, 2]) and as a string otherwise.

The daemon listens on 127.0.0.1 and a free port unless --address says otherwise. Its
address, process id and key go to its state file, DAEMON.json in a directory only you can
enter ($XDG_RUNTIME_DIR/spawnproxy, else ~/.local/state/spawnproxy), where `connect`,
`call` and `stop` find it by its --name from any directory; --state-file puts it
elsewhere. Without --authkey-file a random key is made. Whoever holds the key can run
any code in the daemon.

Without --detach the daemon runs until Ctrl-C or SIGTERM; with it, the command returns
once the daemon listens, and the daemon runs on until `spawnproxy stop`. Its output
then goes to DAEMON.log beside the state file, renamed to DAEMON.log.1 past 4 MiB.

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
Stop a daemon. With its state file: connect with the key in it and, if the daemon
answers as the one recorded there, end the process recorded (SIGTERM, then SIGKILL);
if it does not answer, end that process all the same, but only while its start time
is the one recorded: a pid alone is never enough. A daemon not recorded there (another
machine's) is asked to stop over the connection, as is one given by --address. A state
file whose process has ended and whose local address answers nothing is removed."""


class UsageError(Exception):
    """The command line itself is wrong: status 2, like argparse's own errors."""


class CommandError(Exception):
    """A command failed for a reason its message says in full."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other error (argparse would print the usage first).
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _name(text: str) -> str:
    try:
        return _statefile.check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        "--name",
        metavar="DAEMON",
        type=_name,
        help=f"the daemon's name, as given to `serve` (default: {_statefile.DEFAULT_NAME})",
    )
    group.add_argument(
        "--state-file",
        metavar="FILE",
        help="the file `serve` wrote (default: DAEMON.json in the state directory, unless --address is given)",
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
    parser = _Parser(prog="spawnproxy", description=DESCRIPTION, formatter_class=_formatter)
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
        "--name",
        metavar="DAEMON",
        type=_name,
        help=f"the daemon's name: several run side by side (default: {_statefile.DEFAULT_NAME})",
    )
    serve.add_argument(
        "--state-file",
        metavar="FILE",
        help="where to write address, pid and key (default: DAEMON.json in the state directory)",
    )
    serve.add_argument("--detach", action="store_true", help="return once the daemon listens; it runs on")
    serve.add_argument(
        "--log-file", metavar="FILE", help="a detached daemon's output (default: DAEMON.log, or STATE_FILE.log)"
    )
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
        default=HANDSHAKE_TIMEOUT,
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
    call.add_argument("attribute", metavar="NAME", help="the attribute to call, e.g. add or store.get")
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
            raise UsageError(f"a script takes no ARG (got {' '.join(args)})")
        try:
            with open(target, encoding="utf-8") as f:
                # Under its own path: tracebacks and syntax errors then name the file.
                return ScriptDefinition(f.read(), filename=os.path.abspath(target))
        except OSError as exc:
            raise CommandError(f"cannot read the script {target!r}: {exc}") from None
    module, sep, cls = target.partition(":")
    if sep:
        positional, keywords = parse_arguments(args)
        return InstanceDefinition(module, cls, *positional, **keywords)
    if args:
        raise UsageError(f"a module takes no ARG; did you mean {target}:Class?")
    return ModuleDefinition(target)


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
    from ._daemon import daemon_of

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
