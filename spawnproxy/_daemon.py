"""`DaemonProxy`, the handle on one child, and `daemon_of`.

A handle is built whole in one of two ways: `DaemonProxy(...)` starts a child
and loads a definition in it; `attach` wraps a process that already runs and
serves its root object (a served daemon that `connect` reached).  `session_of`
and `root_id_of` give the layers above (`_server`) what they send the child
their own requests with.  Uses the session, process and proxy layers.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Any, TypeVar

from . import _launch, _ssh
from ._child import protocol
from ._definitions import as_definition
from ._errors import CallTimeoutError, DaemonStartError, RemoteError
from ._handle import Remote, proxy_maker
from ._options import Options, call_timeout, check_child_path, check_logger
from ._peer import Peer
from ._process import STEP, ChildProcess, reap_later
from ._proxy import ObjectProxy, handle_of, make_proxy
from ._serialize_errors import rebuild_exception
from ._session import Session
from ._zygote import WarmProcess

__all__ = ["DaemonProxy", "daemon_of"]

H = TypeVar("H", bound="DaemonProxy")


class DaemonProxy:
    """The handle on one child interpreter running a definition or an object.

    `definition_or_object` is a `ScriptDefinition`, `ModuleDefinition`,
    `InstanceDefinition`, or any picklable instance to send over.
    `python_exe` is the child's interpreter (a CPython 3.8+ executable or a
    virtual environment; default: the parent's own).  `logger`, when given,
    receives the child's stdout at INFO and stderr at WARNING instead of the
    parent's streams; the child's `logging` records keep their levels, under
    `<logger name>.<child logger name>` (without a logger, `spawnproxy.child.`;
    see the guide "Output and logging").  Options: `call_timeout` (seconds, None = no limit),
    `start_timeout` (seconds, default 60), `env` (the child's environment),
    `cwd` (its working directory, a path where it runs, checked there),
    `logs_maxlen` (lines kept in `.logs`),
    `ssh_options` (extra arguments of `ssh`, for `python_exe="ssh://..."`),
    `launcher` (a command prefix the child's interpreter runs under, such as
    `["docker", "exec", "-i", "box"]`, talking over its stdin and stdout;
    `python_exe` then names the interpreter as the launcher sees it, default
    `python3`; see the guide "Launchers"), `warm` (True: fork the child from a
    zygote of its interpreter, ready in a few milliseconds; default False; not
    with a launcher or ssh; see the guide "Warm start").

    Used as a context manager, it terminates the child on exit.

    Example:
        >>> import spawnproxy
        >>> with spawnproxy.DaemonProxy(spawnproxy.ScriptDefinition("x = [1, 2]")) as daemon:
        ...     daemon.proxy.x.append(3)
        ...     print(daemon.proxy.x)
        [1, 2, 3]
        >>> daemon.is_alive()
        False
    """

    def __init__(
        self,
        definition_or_object: Any,
        python_exe: str | os.PathLike[str] | None = None,
        logger: logging.Logger | None = None,
        **options: Any,
    ) -> None:
        opts = Options.from_kwargs(options)
        definition = as_definition(definition_or_object)
        logger = check_logger(logger)
        started = time.monotonic()
        process = start_process(python_exe, opts, logger)
        session = self._open_session(process, opts.call_timeout)
        label = definition.label()
        # One budget for the whole start: the handshake and the load share it.
        left = None if opts.start_timeout is None else max(0.001, opts.start_timeout - (time.monotonic() - started))
        try:
            with call_timeout(left):
                if opts.cwd is not None:
                    self._change_directory(os.fspath(opts.cwd))
                reply = session.request(
                    "load",
                    (definition.wire(),),
                    f"loading the {label}",
                    lambda: [(f"the {label}", definition.wire()[-1])],
                )
        except CallTimeoutError:
            self.terminate(STEP)
            raise DaemonStartError(
                f"the {label} did not load within start_timeout={opts.start_timeout} s in child {process.pid}"
                f"{process.stderr_text()}"
            ) from None
        except BaseException:
            self.terminate(STEP)
            raise
        _, _, how, payload = reply
        if how == protocol.ERROR:
            self.terminate(STEP)
            error = rebuild_exception(payload)
            remote_tb = error.remote_traceback if isinstance(error, RemoteError) else payload[protocol.EXC_TRACEBACK]
            raise DaemonStartError(
                f"the {label} failed in child {process.pid}:\n{remote_tb.rstrip()}", remote_tb
            ) from error
        self._adopt_root(payload, label)

    def _open_session(self, process: Peer, call_timeout: float | None) -> Session:
        """Talk to `process` through a new session; a finalizer ends it when this handle is dropped."""
        self._process: Peer = process
        self._session = session = Session(process, call_timeout)
        self._finalizer = weakref.finalize(self, reap_later, process)
        self._finalizer.atexit = False  # the process registry ends children at exit
        return session

    def _change_directory(self, cwd: str) -> None:
        """The child changes to `cwd` before it loads anything: a path where the child runs, checked there."""
        _, _, how, payload = self._session.request("chdir", (cwd,), f"changing to cwd {cwd!r}")
        if how == protocol.ERROR:
            error = rebuild_exception(payload)
            raise DaemonStartError(
                f"cwd {cwd!r} cannot be the working directory of child {self._process.pid}: "
                f"{type(error).__name__}: {error}"
            ) from error

    def _adopt_root(self, root: tuple[Any, ...], label: str) -> None:
        """Take the child's description of its root object, from which `proxy` is made."""
        oid, key, info, names = root
        self._session.types[key] = info
        self._session.make_proxy = proxy_maker(weakref.ref(self))
        self._root = (oid, info, names, label)
        self._proxy_ref: weakref.ref[ObjectProxy] | None = None

    @property
    def proxy(self) -> ObjectProxy:
        """The root proxy: the module, or the object, the child runs."""
        proxy = None if self._proxy_ref is None else self._proxy_ref()
        if proxy is None:
            oid, info, names, label = self._root
            handle = Remote(
                self, self._session, oid, None, info, names, None, label, bool(info[protocol.TYPE_CALLABLE])
            )
            proxy = make_proxy(handle)
            self._proxy_ref = weakref.ref(proxy)
        return proxy

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @property
    def python_version(self) -> tuple[int, int, int]:
        """The child interpreter's version, as `sys.version_info[:3]`."""
        return tuple(self._process.hello["version"])  # type: ignore[return-value]

    @property
    def exitcode(self) -> int | None:
        """The child's exit code (negative: the signal that ended it), or None while it runs."""
        return self._process.poll()

    @property
    def logs(self) -> list[str]:
        """The last lines the child wrote to stdout and stderr and its log records, most recent
        last (bounded); each entry's `.stream` says which: "stdout", "stderr" or "logging"."""
        return self._process.output.entries()

    def is_alive(self) -> bool:
        """Whether the child process is still running."""
        return self._process.poll() is None

    def terminate(self, timeout: float = 5.0) -> int | None:
        """End the child: ask, wait up to `timeout`, then escalate; idempotent.

        Returns its exit code.  Proxies of it then raise `DaemonTerminatedError`.
        """
        self._finalizer.detach()
        return self._session.terminate(timeout)

    def __enter__(self) -> DaemonProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else f"ended, exit code {self.exitcode}"
        *_, label = self._root
        return f"<DaemonProxy pid={self.pid} {label} python={self._process.executable} {state}>"


def start_process(python_exe: str | os.PathLike[str] | None, opts: Options, logger: logging.Logger | None) -> Peer:
    """Start the child these options ask for: behind ssh, behind a launcher, or a local child of ours (warm or cold)."""
    launcher = opts.launcher
    if opts.warm and (launcher is not None or _ssh.is_ssh_url(python_exe)):
        what = "launcher" if launcher is not None else f"python_exe={python_exe!r}"
        raise ValueError(f"warm=True cannot be combined with {what}: a zygote runs only on this machine")
    if launcher is not None:
        assert isinstance(launcher, list)  # Options checked it, a callable called
        if _ssh.is_ssh_url(python_exe):
            raise ValueError(
                f"launcher cannot be combined with python_exe={python_exe!r}: ssh is already that child's launcher"
            )
        return _launch.LaunchedProcess(
            launcher,
            _launch.DEFAULT_PYTHON if python_exe is None else check_child_path(python_exe, "python_exe"),
            env=opts.env,
            logger=logger,
            logs_maxlen=opts.logs_maxlen,
            start_timeout=opts.start_timeout,
        )
    if _ssh.is_ssh_url(python_exe):
        return _ssh.SshProcess(
            str(python_exe),
            env=opts.env,
            logger=logger,
            logs_maxlen=opts.logs_maxlen,
            start_timeout=opts.start_timeout,
            ssh_options=opts.ssh_options,
        )
    return (WarmProcess if opts.warm else ChildProcess)(
        python_exe, env=opts.env, logger=logger, logs_maxlen=opts.logs_maxlen, start_timeout=opts.start_timeout
    )


def attach(cls: type[H], process: Peer, call_timeout: float | None, label: str) -> H:
    """A handle of class `cls` on `process`, which already runs and serves its root object (`connect`).

    The process is asked for its root; if that fails, the session is ended and
    the error raised.  `label` names the process in messages ("the daemon at ...").
    """
    handle = cls.__new__(cls)
    session = handle._open_session(process, call_timeout)
    try:
        _, _, how, payload = session.request("root", (), f"reading the root of {label}")
    except BaseException:
        handle.terminate()
        raise
    if how == protocol.ERROR:
        handle.terminate()
        raise rebuild_exception(payload)
    handle._adopt_root(payload, label)
    return handle


def session_of(daemon: DaemonProxy) -> Session:
    """The session that carries `daemon`'s requests: for the library's own requests (`serve` asks it to listen)."""
    return daemon._session


def root_id_of(daemon: DaemonProxy) -> int:
    """The child's id of the object `daemon` runs (its root)."""
    oid: int
    oid, *_ = daemon._root
    return oid


def daemon_of(proxy: ObjectProxy) -> DaemonProxy:
    """Return the `DaemonProxy` behind a proxy (root or nested).

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("x = 1")
        >>> daemon = spawnproxy.daemon_of(mod.x)
        >>> daemon.is_alive()
        True
        >>> daemon.terminate()
        0
    """
    return handle_of(proxy)._sp_daemon  # type: ignore[no-any-return]
