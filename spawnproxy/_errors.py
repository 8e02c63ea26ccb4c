"""The errors spawnproxy raises: one root, a small tree.

None of them is an `AttributeError`: `hasattr(proxy, "x")` must not turn a
dead child into `False`.

Foundation layer: the standard library only; every other module may use it.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CallTimeoutError",
    "ConnectError",
    "DaemonDiedError",
    "DaemonStartError",
    "DaemonTerminatedError",
    "RemoteError",
    "SerializationError",
    "SpawnProxyError",
]


class SpawnProxyError(Exception):
    """Base of every error spawnproxy itself raises.

    Example:
        >>> import spawnproxy
        >>> issubclass(spawnproxy.DaemonDiedError, spawnproxy.SpawnProxyError)
        True
    """


class DaemonStartError(SpawnProxyError):
    """The child could not start, or its definition failed to load.

    `remote_traceback` holds the child's formatted traceback when there is one.

    Example:
        >>> import spawnproxy
        >>> try:
        ...     spawnproxy.run_module("no_such_module_here")
        ... except spawnproxy.DaemonStartError as err:
        ...     print("ModuleNotFoundError" in str(err))
        True
    """

    def __init__(self, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class DaemonDiedError(SpawnProxyError):
    """The child ended by itself, before or during a call.

    The message gives the exit code or signal and the last lines the child
    wrote to stderr; `exitcode` holds the code (negative for a signal).

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("import os")
        >>> try:
        ...     mod.os._exit(3)
        ... except spawnproxy.DaemonDiedError as err:
        ...     print(err.exitcode)
        3
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class DaemonTerminatedError(SpawnProxyError):
    """A proxy was used after its child was terminated on purpose.

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("x = 1")
        >>> mod.terminate_daemon()
        >>> try:
        ...     mod.x + 1
        ... except spawnproxy.DaemonTerminatedError:
        ...     print("terminated")
        terminated
    """


class RemoteError(SpawnProxyError):
    """A remote exception whose type cannot be rebuilt in the parent.

    Carries the remote type's name (`remote_type`, as ``module.QualName``), its
    message and the formatted remote traceback (`remote_traceback`).

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script('''
        ... class Oops(Exception):
        ...     pass
        ... def fail():
        ...     raise Oops("no luck")
        ... ''')
        >>> try:
        ...     mod.fail()
        ... except spawnproxy.RemoteError as err:
        ...     print(err.remote_type, "|", err.remote_message)
        __spawnproxy_script__.Oops | no luck
        >>> mod.terminate_daemon()
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str) -> None:
        super().__init__(f"{remote_type}: {remote_message}\n\nRemote traceback:\n{remote_traceback}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


class CallTimeoutError(SpawnProxyError, TimeoutError):
    """A call ran past its timeout; the proxy stays usable.

    The call itself keeps running in the child until it finishes; its late
    answer is discarded.

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("import time")
        >>> with spawnproxy.call_timeout(0.2):
        ...     try:
        ...         mod.time.sleep(1)
        ...     except spawnproxy.CallTimeoutError:
        ...         print("timed out")
        timed out
        >>> mod.terminate_daemon()
    """


class SerializationError(SpawnProxyError):
    """An argument or a result could not be serialized or loaded; says which and in which direction.

    Raised before anything is sent when the parent cannot serialize an argument,
    and when the child cannot load one (that call does not run); either way the
    child, its state and its other callers are untouched.  `obtain` raises it
    when no local copy of a proxy's object can be made.

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("def f(x): return x")
        >>> try:
        ...     mod.f(i for i in range(3))
        ... except spawnproxy.SerializationError as err:
        ...     print("argument 0" in str(err))
        True
        >>> mod.terminate_daemon()
    """


for _cls in (
    SpawnProxyError,
    DaemonStartError,
    DaemonDiedError,
    DaemonTerminatedError,
    RemoteError,
    CallTimeoutError,
    SerializationError,
):
    _cls.__module__ = "spawnproxy"


class ConnectError(SpawnProxyError, ConnectionError):
    """`connect` could not reach a served daemon, or could not set up a secure connection to it.

    Also a `ConnectionError`.  The message says which address and why
    (nothing listening, a certificate the client does not trust, ...).

    Example:
        >>> import spawnproxy
        >>> try:
        ...     spawnproxy.connect("/nonexistent/daemon.sock", authkey=b"a key of 16 bytes or more")
        ... except spawnproxy.ConnectError as err:
        ...     print("nothing listens" in str(err))
        True
    """


class AuthenticationError(ConnectError):
    """The daemon refused the client's key, or could not prove that it holds the key itself.

    Raised at once, never retried: a wrong key does not become right.

    Example:
        >>> import spawnproxy
        >>> server = spawnproxy.serve(spawnproxy.ScriptDefinition("x = 1"))
        >>> try:
        ...     spawnproxy.connect(server.address, authkey=b"not the key, though long enough")
        ... except spawnproxy.AuthenticationError as err:
        ...     print("refused the key" in str(err))
        True
        >>> server.terminate()
    """
