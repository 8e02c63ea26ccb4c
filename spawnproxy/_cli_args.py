"""The command line's words: its help, its parser, and how TARGET and ARGs become a definition.

`_cli` runs the commands; this module only turns text into options and
definitions, with `UsageError` (exit status 2) for a command line that is wrong.
Uses `_statefile` (daemon names), `_server` (the default handshake timeout) and `_definitions`.
"""

from __future__ import annotations

import argparse
import ast
import os
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

from . import _statefile
from ._definitions import InstanceDefinition, ModuleDefinition, ScriptDefinition
from ._server import HANDSHAKE_TIMEOUT
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


class _Options(Protocol):
    """A parser or an argument group: what options are added to."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


def _which_daemon(options: _Options, name_help: str, state_file_help: str) -> None:
    """--name and --state-file: the two ways to name a daemon's state file."""
    options.add_argument("--name", metavar="DAEMON", type=_name, help=name_help)
    options.add_argument("--state-file", metavar="FILE", help=state_file_help)


def _file_options(parser: argparse.ArgumentParser, title: str, helps: dict[str, str]) -> _Options:
    """A group of options that each name a file: {"--flag": help}."""
    group = parser.add_argument_group(title)
    for flag, text in helps.items():
        group.add_argument(flag, metavar="FILE", help=text)
    return group


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which daemon")
    _which_daemon(
        group,
        f"the daemon's name, as given to `serve` (default: {_statefile.DEFAULT_NAME})",
        "the file `serve` wrote (default: DAEMON.json in the state directory, unless --address is given)",
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

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=summary, description=description, formatter_class=_formatter
        )
        return parser

    serve = command("serve", "run a script, module or class in a daemon", SERVE_DESCRIPTION)
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
    _which_daemon(
        serve,
        f"the daemon's name: several run side by side (default: {_statefile.DEFAULT_NAME})",
        "where to write address, pid and key (default: DAEMON.json in the state directory)",
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

    _connection_options(command("connect", "check that a daemon answers", CONNECT_DESCRIPTION))

    call = command("call", "call a function of a daemon, print the result", CALL_DESCRIPTION)
    call.add_argument("attribute", metavar="NAME", help="the attribute to call, e.g. add or store.get")
    call.add_argument("args", metavar="ARG", nargs="*", help="its arguments (NAME=VALUE for keywords)")
    call.add_argument("--get", action="store_true", help="print the attribute's value instead of calling it")
    _connection_options(call)

    _connection_options(command("stop", "stop a daemon", STOP_DESCRIPTION))
    return parser


# -- TARGET and ARGs ---------------------------------------------------------------------------------


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
