"""Serve a daemon to clients over a socket: `serve` and its handle, `Server`.

The daemon is an ordinary child (`DaemonProxy`) that is also asked to listen:
its accept loop and the per-client threads run in the child itself (the child
package's `network` and `listener`), so a client's calls cost no extra hop.
Every client proves it holds the key with the HMAC challenge of
`multiprocessing.connection` before a single byte it sends is unpickled, and
the daemon proves the same to it; TLS (the standard `ssl` module) optionally
wraps the socket first.  A daemon that runs on its own is started by `_detach`.

Uses `_addresses`, `_keys`, `_client` (a `Server` makes clients of itself),
`_detach` and `_statefile`, and the handle layer (`_daemon`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from typing import Any

from . import _serialize_errors
from ._addresses import DEFAULT_HOST, Address, format_address, is_loopback, parse_address, socket_id
from ._child import protocol
from ._client import KEEPALIVE, client_context, connect
from ._daemon import DaemonProxy, root_id_of, session_of
from ._detach import check_not_running, start_detached, stop_pid
from ._errors import DaemonStartError, SpawnProxyError
from ._keys import check_authkey
from ._options import check_timeout
from ._proxy import ObjectProxy
from ._statefile import pid_alive, process_start_time, write_private

__all__ = ["Server", "serve"]

log = logging.getLogger("spawnproxy")

HANDSHAKE_TIMEOUT = 1.0


class Server:
    """The handle on a served daemon: its address, key and process; `serve` returns it.

    `.proxy` is the root proxy for the process that started it (a local
    child's proxy, not a network client); `connect()` makes a network client
    of it.  A context manager that terminates the daemon on exit.

    Example:
        >>> import spawnproxy
        >>> with spawnproxy.serve(spawnproxy.ScriptDefinition("x = 41"), ("127.0.0.1", 0)) as server:
        ...     client = server.connect()
        ...     print(client.x + 1, server.is_alive())
        42 True
        >>> server.is_alive()
        False
    """

    def __init__(
        self,
        daemon: DaemonProxy | None,
        address: tuple[str, int] | str,
        authkey: bytes,
        pid: int,
        certfile: str | None,
        state_file: str | None,
        supervisor: int | None = None,
        socket_id: tuple[int, int, int] | None = None,
        supervisor_start: int | None = None,
    ) -> None:
        self._daemon = daemon
        self.address = address
        self.authkey = authkey
        self.pid = pid
        self.certfile = certfile
        self.state_file = state_file
        self.supervisor = supervisor  # a detached daemon: the pid to signal
        self._socket_id = socket_id  # which Unix socket the daemon made, to unlink that one only
        self._supervisor_start = supervisor_start  # ... while it is still the process that started then
        self._terminated = False

    @property
    def detached(self) -> bool:
        """Whether the daemon runs on its own, outliving the process that started it."""
        return self.supervisor is not None

    @property
    def proxy(self) -> ObjectProxy:
        """The root proxy through the daemon's own channel (not for a detached daemon)."""
        if self._daemon is None:
            raise SpawnProxyError("a detached daemon has no local proxy: use connect()")
        return self._daemon.proxy

    def connect(self, **options: Any) -> ObjectProxy:
        """A new network client of this daemon (see `connect` for the options)."""
        if self.certfile is not None and "ssl_context" not in options:
            options["ssl_context"] = client_context(cafile=self.certfile, pinned=True)
        return connect(self.address, self.authkey, **options)

    def is_alive(self) -> bool:
        """Whether the daemon still runs."""
        if self._daemon is not None:
            return self._daemon.is_alive()
        return pid_alive(self.supervisor or self.pid)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the daemon ends (or `timeout` passes); whether it has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def terminate(self, timeout: float = 5.0) -> None:
        """End the daemon (every client's connection with it); idempotent."""
        if self._daemon is not None:
            self._daemon.terminate(timeout)
        elif self.supervisor is not None and not self._terminated:
            stop_pid(self.supervisor, timeout, self._supervisor_start)
        self._terminated = True
        if isinstance(self.address, str) and self._socket_id is not None and self._socket_id == socket_id(self.address):
            # Only the daemon's own socket: another daemon may have replaced it since (this one was killed).
            with contextlib.suppress(OSError):
                os.unlink(self.address)
        if self.state_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.state_file)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        kind = "detached " if self.detached else ""
        tls = " tls" if self.certfile else ""
        return f"<spawnproxy {kind}Server {format_address(self.address)}{tls} pid={self.pid}>"

    def state(self) -> dict[str, Any]:
        """What the state file holds: enough for `connect(state_file=...)` and `spawnproxy stop`."""
        pid = self.supervisor or os.getpid()
        return {
            "address": list(self.address) if isinstance(self.address, tuple) else self.address,
            "authkey": self.authkey.hex(),
            "pid": pid,
            # With its start time, the pid names this very process, never one that reused it.
            "pid_start": process_start_time(pid),
            "daemon_pid": self.pid,
            "tls": {"certfile": self.certfile} if self.certfile else None,
        }


def serve(
    definition_or_object: Any,
    address: Address | None = None,
    authkey: bytes | None = None,
    *,
    python_exe: str | os.PathLike[str] | None = None,
    logger: logging.Logger | None = None,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    cafile: str | os.PathLike[str] | None = None,
    detach: bool = False,
    state_file: str | os.PathLike[str] | None = None,
    log_file: str | os.PathLike[str] | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    keepalive: int = KEEPALIVE,
    allow_plaintext: bool = False,
    **options: Any,
) -> Server:
    """Run a definition (or an object) in a daemon that listens for authenticated clients.

    `address` is `(host, port)` (port 0: any free port), `"host:port"`,
    `"[v6]:port"`, or a Unix socket path (a string with a `/` in it, or
    `"unix:path"`); default `("127.0.0.1", 0)`, loopback only; `localhost`
    listens on 127.0.0.1 and ::1 both.  `authkey` is the key clients must
    hold (bytes, at least 16); None makes a random one (`server.authkey`).
    Whoever holds the key can run any code in the daemon: treat it as a
    password to this user's account.

    An address beyond loopback (a wildcard such as `0.0.0.0` included)
    needs TLS, or `allow_plaintext=True` for a private network you trust:
    the key check alone neither encrypts nor stops a relay.

    TLS: `certfile` (and `keyfile`, if the key is not in it) make the daemon
    serve TLS; `cafile` additionally requires clients to present a
    certificate signed by that CA.  The daemon builds its own TLS context
    from these files (it may run another Python), which is why they are paths
    and not an `ssl.SSLContext`.

    `detach=True` starts the daemon on its own: it goes on running after
    this process exits, until `terminate()` or `spawnproxy stop`.  Its
    output goes to `log_file` (default: the state file's name + `.log`),
    which must be this user's alone if it exists (a symbolic link is
    refused) and which is renamed to `<log>.1` when it passes 4 MiB.
    `state_file` (required with `detach`) receives, readable only by its
    owner, the address, key, process ids and certificate: what
    `connect(state_file=...)` and `spawnproxy stop` need.

    `handshake_timeout` bounds each client's TLS and key handshake (a peer
    that is slower is dropped); `keepalive` is the idle time in seconds after
    which TCP probes find clients lost with the network (25 s into their
    silence with the default 10; 0: no probes).  `python_exe`,
    `logger` and `**options` are those of `DaemonProxy`.

    Example:
        >>> import spawnproxy
        >>> server = spawnproxy.serve(spawnproxy.InstanceDefinition("collections", "Counter"))
        >>> counter = spawnproxy.connect(server.address, authkey=server.authkey)
        >>> counter.update("hello")
        >>> counter["l"]
        2
        >>> server.terminate()
    """
    where = parse_address((DEFAULT_HOST, 0) if address is None else address)
    key = secrets.token_bytes(32) if authkey is None else check_authkey(authkey)
    check_timeout(handshake_timeout, "handshake_timeout")
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) or keepalive < 0:
        raise ValueError(f"keepalive must be a number of seconds (int >= 0), not {keepalive!r}")
    files = {}
    for name, value in (("certfile", certfile), ("keyfile", keyfile), ("cafile", cafile)):
        if value is not None:
            path = os.path.abspath(os.fspath(value))
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{name} {path!r} does not exist")
            files[name] = path
    if ("keyfile" in files or "cafile" in files) and "certfile" not in files:
        raise ValueError("keyfile and cafile need a certfile: they only make sense for a TLS daemon")
    if isinstance(where, tuple) and not is_loopback(where[0]) and "certfile" not in files:
        if not allow_plaintext:
            shown = format_address((where[0] or "0.0.0.0", where[1]))
            raise ValueError(
                f"{shown} is beyond loopback: without TLS, anyone on the network could read the traffic, or relay "
                "the key check and take over a client's session; serve TLS (certfile=, --certfile), or on a "
                "private network you trust pass allow_plaintext=True (--allow-plaintext)"
            )
        log.warning(
            "serving on %s without TLS: clients are authenticated, but the traffic is neither encrypted "
            "nor protected from tampering",
            format_address(where),
        )
    state_path = None if state_file is None else os.path.abspath(os.fspath(state_file))
    if state_path is not None and os.path.exists(state_path):
        check_not_running(state_path)
    if detach:
        if state_path is None:
            raise ValueError("serve(detach=True) needs a state_file: it is how clients find the daemon later")
        started = start_detached(
            definition_or_object, where, key, python_exe, files, state_path, log_file, handshake_timeout, keepalive,
            options,
        )  # fmt: skip
        return Server(
            None,
            started.address,
            key,
            started.daemon_pid,
            files.get("certfile"),
            state_path,
            supervisor=started.supervisor,
            supervisor_start=started.supervisor_start,
        )
    if log_file is not None:
        raise ValueError("log_file is for detached daemons; give a logger instead")
    daemon = DaemonProxy(definition_or_object, python_exe, logger, **options)
    config = {
        "root": root_id_of(daemon),
        "address": where,
        "authkey": key,
        "handshake_timeout": handshake_timeout,
        "keepalive": keepalive,
        **files,
    }
    try:
        _, _, how, bound = session_of(daemon).request("listen", (config,), f"listening on {format_address(where)}")
    except BaseException:
        daemon.terminate()
        raise
    if how == protocol.ERROR:
        daemon.terminate()
        error = _serialize_errors.rebuild_exception(bound)
        raise DaemonStartError(
            f"the daemon could not listen on {format_address(where)}: {type(error).__name__}: {error}"
        ) from error
    bound_address: tuple[str, int] | str = tuple(bound) if isinstance(bound, (list, tuple)) else bound  # type: ignore[assignment]
    server = Server(
        daemon, bound_address, key, daemon.pid, files.get("certfile"), state_path, socket_id=socket_id(bound_address)
    )
    if state_path is not None:
        write_private(state_path, json.dumps(server.state(), indent=2) + "\n")
    log.debug("daemon %d serves on %s", daemon.pid, format_address(bound_address))
    return server
