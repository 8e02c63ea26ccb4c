"""Where a daemon's state file and log live, and the checks that keep a neighbour out of them.

A state file holds a daemon's key: whoever writes one can point its reader at
a daemon of theirs, and whoever reads one can run code as its owner.  So, as
OpenSSH does with a private key, a state file is used only if it belongs to
this user and nobody else may read or write it; it is written with mode 0600
from its first byte.  By default it lives in a private per-user directory:
`$XDG_RUNTIME_DIR/spawnproxy/` when that is a directory of this user's that
only they can enter, else `$XDG_STATE_HOME/spawnproxy/` (by default
`~/.local/state/spawnproxy/`), created with mode 0700.  A daemon's log is
opened without following links, likewise refused if it is not private, and
rotated once when it grows past a bound, so that no flood can fill the disk.

A process is recognised by its pid together with its start time (field 22 of
`/proc/<pid>/stat`): a pid alone may have been reused by any process since.

Foundation layer: the standard library and `_errors` only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import tempfile
import threading
from typing import Any

from ._errors import ConnectError

DEFAULT_NAME = "default"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def check_name(name: str) -> str:
    """A daemon's name, if it is a plain file name: its state goes to `<name>.json`.

    Example:
        >>> check_name("calc-2")
        'calc-2'
        >>> check_name("../calc")
        Traceback (most recent call last):
        ...
        ValueError: daemon name '../calc' is not allowed: use up to 64 letters, digits, '_', '-' and '.', not starting with '.' or '-'
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"daemon name {name!r} is not allowed: use up to 64 letters, digits, '_', '-' and '.', "
            "not starting with '.' or '-'"
        )
    return name


def privacy_problem(st: os.stat_result, directory: bool = False) -> str | None:
    """Why a file (or a directory) is not private to this user, or None if it is."""
    if directory and not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if not directory and not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"is not owned by you (uid {os.geteuid()}) but by uid {st.st_uid}"
    if st.st_mode & 0o077:
        return f"is open to others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def state_directory(create: bool = False) -> str:
    """The private directory where daemons' state files and logs go by default (made if `create`)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = None
    if os.path.isabs(runtime):
        with contextlib.suppress(OSError):
            if privacy_problem(os.stat(runtime), directory=True) is None:
                base = runtime
    if base is None:
        base = os.environ.get("XDG_STATE_HOME", "")
        if not os.path.isabs(base):  # (the XDG spec: a relative path is to be ignored)
            base = os.path.join(os.path.expanduser("~"), ".local", "state")
    path = os.path.join(base, "spawnproxy")
    if create:
        os.makedirs(base, 0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path  # nothing there yet: a reader then finds no state file
    problem = "is a symbolic link" if stat.S_ISLNK(st.st_mode) else privacy_problem(st, directory=True)
    if problem is not None:
        raise PermissionError(
            f"refusing the state directory {path!r}: it {problem}; it must be yours alone (chmod 700 {path})"
        )
    return path


def default_paths(name: str = DEFAULT_NAME, create: bool = False) -> tuple[str, str]:
    """(state file, log file) of the daemon called `name`, in `state_directory()`."""
    directory = state_directory(create)
    check_name(name)
    return os.path.join(directory, name + ".json"), os.path.join(directory, name + ".log")


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write a file only its owner can read, atomically (a reader never sees half of it).

    The data goes to a new file created 0600 with O_EXCL and O_NOFOLLOW (mkstemp),
    renamed over `path` once complete: it is never readable by others, not even briefly.
    """
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".spawnproxy-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The address, key, pids and TLS settings a daemon wrote (see `serve(state_file=...)`).

    A file that is not this user's, or that others may read or write, is refused
    (`ConnectError`) before anything in it is used.
    """
    where = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO planted there must not hang the reader (it is refused below).
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConnectError(f"no state file {where!r}: is the daemon running?") from None
    except OSError as exc:
        raise ConnectError(f"cannot read the state file {where!r}: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        problem = privacy_problem(os.fstat(f.fileno()))
        if problem is not None:
            raise ConnectError(
                f"refusing the state file {where!r}: it {problem}; a state file holds a daemon's key "
                "and must be yours alone (chmod 600), or anyone could have written it"
            )
        try:
            state: dict[str, Any] = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConnectError(f"cannot read the state file {where!r}: {exc}") from None
    if not isinstance(state, dict) or "address" not in state or "authkey" not in state:
        raise ConnectError(f"{where!r} is not a spawnproxy state file")
    return state


def process_start_time(pid: int) -> int | None:
    """When a process started (clock ticks after boot, /proc/<pid>/stat field 22); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # The command name (field 2) may hold spaces and ')': split after its last ')'.
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, which nobody may reap in a container, counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# -- logs ----------------------------------------------------------------------------------------


def open_log(path: str) -> tuple[int, bool]:
    """Open a daemon's log for appending: (fd, whether it was created now).

    A symbolic link is not followed, and an existing file is used only if it is
    this user's and private; a new one is created 0600.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        try:
            fd, created = os.open(path, flags), False
        except OSError as exc:
            if os.path.islink(path):
                raise PermissionError(f"refusing the log file {path!r}: it is a symbolic link") from None
            raise PermissionError(f"cannot open the log file {path!r}: {exc}") from None
    problem = privacy_problem(os.fstat(fd))
    if problem is not None:
        os.close(fd)
        raise PermissionError(
            f"refusing the log file {path!r}: it {problem}; a daemon's log must be yours alone (chmod 600)"
        )
    os.set_blocking(fd, True)
    return fd, created


class RotatingLog(io.TextIOBase):
    """A detached daemon's stdout and stderr: a log that, past `max_bytes`, is renamed to `<log>.1` once.

    Both streams write through one lock; file descriptors 1 and 2 follow the
    current file, so that what the interpreter itself writes there lands in it too.
    """

    def __init__(self, path: str, fd: int, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self._lock = threading.Lock()
        self._point_fds()

    def _point_fds(self) -> None:
        for target in (1, 2):
            os.dup2(self._fd, target)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "backslashreplace")
        with self._lock:
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self._fd, view)
                except InterruptedError:
                    continue
                except OSError:
                    break  # a full disk: the daemon goes on without its log
                view = view[written:]
                self._size += written
        return len(text)

    def _rotate(self) -> None:
        old = self._fd
        try:
            os.replace(self.path, self.path + ".1")
            self._fd, _ = open_log(self.path)
        except OSError:
            # The log cannot be renamed or made anew (its directory changed): start it over.
            with contextlib.suppress(OSError):
                os.ftruncate(old, 0)
            self._size = 0
            return
        os.close(old)
        self._size = 0
        self._point_fds()
