"""The child's log records on the wire: one marked line on its stderr per record.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax; uses nothing else of the package.  The parent imports
the mark and the field names (`spawnproxy._output` decodes the lines).

**Transport.** A record travels as one line on the child's stderr: `MARK`,
then a JSON object whose keys are the field names below, then a newline
(JSON escapes every newline inside, so the record stays one line).  Not the
channel: the parent reads the channel only while a call or a reader needs
it, while it drains the child's stderr all the time, in a thread per stream.
So a record from any thread of the child, made while no call runs, arrives
at once; it is written synchronously (no queue: the last records before the
child exits or dies are in the pipe already); it keeps its place among the
stderr lines; it is bounded like a line (at most `MAX_RECORD` bytes, see
`_output.MAX_LINE`: the longest text fields are cut, ending with
`TRUNCATED`); and it passes through a launcher's or ssh's stdio unchanged,
since those carry the child's stderr, line by line (see `stdio`).

**Loaded on demand.** Importing `logging` costs a child about 5 ms, so a
child does not import it: `watch_logging` (run as each child starts) puts a
finder first on `sys.meta_path` that, when anything imports `logging`, lets
the import run and then loads `forwarder`, which connects the child's
`logging` to this wire (see there for what it does to the child's
configuration).  The finder then leaves `sys.meta_path` (a mere look-up,
`importlib.util.find_spec`, leaves it there), and the loaded module's
`__loader__` and `__spec__.loader` are the normal ones.
"""

import sys

# What starts a record's line (after the launcher's stream mark, behind a launcher).
MARK = b"\x1eL"
# A record's line, mark and newline included, is at most this long: under the bound on a
# line (64 KiB), with room for the mark a launcher's child adds (stdio.STDERR_MARK) and for
# the start of a line the child had not ended when the record came (a progress bar).
MAX_RECORD = 60 * 1024
TRUNCATED = " [truncated]"

# The fields of a record: the keys of its JSON object.
NAME = "name"  # the child's logger name ("root" for its root logger)
LEVELNO = "levelno"
LEVELNAME = "levelname"
MESSAGE = "message"  # record.getMessage(), made in the child: its args may not pickle
CREATED = "created"
PATHNAME = "pathname"
LINENO = "lineno"
FUNCNAME = "funcName"
THREAD = "thread"
THREADNAME = "threadName"
PROCESS = "process"
PROCESSNAME = "processName"
EXC_TEXT = "exc_text"  # the formatted exception, or None: never the exception itself
STACK_INFO = "stack_info"
# The text fields that may be cut to fit MAX_RECORD.
LONG_FIELDS = (MESSAGE, EXC_TEXT, STACK_INFO)


def watch_logging():
    """Connect the child's `logging` to the parent when it is imported (at once if it is)."""
    if "logging" in sys.modules:
        _connect()
    else:
        sys.meta_path.insert(0, _LoggingFinder())


def _connect():
    sys.modules[__package__].load("forwarder").install()


class _LoggingFinder:
    """Finds nothing itself: wraps the loader that imports `logging`, to connect it afterwards."""

    def find_spec(self, name, path=None, target=None):
        if name != "logging":
            return None
        # Stays until logging runs: a spec may be looked up (importlib.util.find_spec) and not used.
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if finder is not self and find_spec is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenConnect(spec.loader, self)
                return spec
        return None


class _ThenConnect:
    """A loader that runs another, then connects the module it loaded; it and its finder step aside."""

    def __init__(self, loader, finder):
        self._loader = loader
        self._finder = finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            sys.meta_path.remove(self._finder)
        except ValueError:
            pass  # gone already (a second spec's loader)
        loader = self._loader
        module.__loader__ = loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = loader
        loader.exec_module(module)
        try:
            _connect()
        except Exception as exc:  # the child's import must not fail for it: its records stay lines
            sys.stderr.write("spawnproxy: the child's logging is not forwarded: %r\n" % (exc,))

    def __getattr__(self, name):
        return getattr(self._loader, name)
