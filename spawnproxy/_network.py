"""Serve a daemon to clients over a socket, and connect to one: `serve` and `connect`.

The daemon is an ordinary child (`DaemonProxy`) that is also asked to listen:
its accept loop and the per-client threads run in the child itself
(`_netchild`), so a client's calls cost no extra hop.  Every client proves it
holds the key with the HMAC challenge of `multiprocessing.connection` before
a single byte it sends is unpickled, and the daemon proves the same to it;
TLS (the standard `ssl` module) optionally wraps the socket first.

A detached daemon is a supervisor process (this same library, started with
`python -c`) that double-forks away from its starter, runs `serve` in the
foreground, writes a state file readable only by its owner, and ends the
daemon when it receives SIGTERM.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import pickle
import secrets
import select
import shlex
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from multiprocessing import AuthenticationError as _MpAuthenticationError
from multiprocessing.connection import answer_challenge, deliver_challenge
from typing import Any

from . import _bootstrap, _serialize
from ._child import network, protocol
from ._child.channel import Channel
from ._daemon import DaemonProxy
from ._errors import AuthenticationError, ConnectError, DaemonStartError, SpawnProxyError
from ._options import check_timeout
from ._output import OutputLog
from ._process import reap_later
from ._proxy import ObjectProxy
from ._statefile import RotatingLog, open_log, privacy_problem, process_start_time, read_state_file, write_private

__all__ = ["Server", "connect", "serve"]

log = logging.getLogger("spawnproxy")

Address = tuple[str, int] | str | os.PathLike[str]
DEFAULT_HOST = "127.0.0.1"
HANDSHAKE_TIMEOUT = 1.0
CONNECT_TIMEOUT = 5.0
KEEPALIVE = 10  # idle seconds; a lost peer is given up 25 s into its silence (see network.lost_after)
# A detached daemon's log past this size is renamed to <log>.1 (replacing the older one).
LOG_MAX_BYTES = 4 * 1024 * 1024
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


# -- addresses and keys -------------------------------------------------------------------


def parse_address(address: Any) -> tuple[str, int] | str:
    """`(host, port)`, `"host:port"`, `"[v6]:port"` or a Unix socket path -> `(host, port)` or the path.

    A string is a Unix socket path only when it contains a `/` or starts
    with `unix:`; any other string must be `HOST:PORT`, so that a typo (a
    forgotten port) is an error instead of a socket file in the current
    directory.  A `pathlib.Path` is always a path.

    Example:
        >>> parse_address("[::1]:8000"), parse_address(("localhost", 0))
        (('::1', 8000), ('localhost', 0))
        >>> parse_address("localhost")
        Traceback (most recent call last):
        ...
        ValueError: address 'localhost' has no port: give HOST:PORT (port 0: any free one), [IPv6]:PORT, or a Unix socket path with a / in it (or unix:PATH)
    """
    if isinstance(address, (tuple, list)):
        if len(address) != 2:
            raise ValueError(f"address must be (host, port), not {address!r}")
        host, port = address
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            raise ValueError(f"address must be (host: str, port: int), not {address!r}")
        return host, _check_port(port, address)
    if isinstance(address, os.PathLike) and not isinstance(address, str):
        return _socket_path(os.fspath(address))
    if isinstance(address, str):
        if address.startswith("unix:"):
            if address == "unix:":
                raise ValueError("the Unix socket path after 'unix:' is empty")
            return _socket_path(address[len("unix:") :])
        if "/" in address:
            return _socket_path(address)
        if not address:
            raise ValueError("address must not be empty")
        return _host_and_port(address)
    raise TypeError(f"address must be (host, port) or a Unix socket path, not {type(address).__name__}")


def _socket_path(path: str | bytes) -> str:
    if isinstance(path, bytes):
        raise TypeError("a Unix socket path must be str, not bytes")
    if not path:
        raise ValueError("address must not be empty")
    return os.path.abspath(path)


_FORMS = "HOST:PORT (port 0: any free one), [IPv6]:PORT, or a Unix socket path with a / in it (or unix:PATH)"


def _host_and_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT`: anything else is a one-line ValueError."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or ":" not in host or (rest and not rest.startswith(":")):
            raise ValueError(f"address {text!r} is not [IPv6]:PORT (brackets are for IPv6 addresses)")
        port = rest[1:]
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            host, port = text, ""
        elif ":" in host:
            raise ValueError(f"address {text!r}: write an IPv6 address and its port in brackets, [{host}]:{port}")
        elif not host:
            raise ValueError(f"address {text!r} has no host: give {_FORMS}")
    if not port:
        raise ValueError(f"address {text!r} has no port: give {_FORMS}")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"port {port!r} in address {text!r} is not a number (0-65535)")
    return host, _check_port(int(port), text)


def _check_port(port: int, address: object) -> int:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} in address {address!r} is out of range (0-65535)")
    return port


def format_address(address: tuple[str, int] | str) -> str:
    if isinstance(address, tuple):
        host, port = address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return address


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback only: `localhost`, 127.0.0.0/8 or ::1 (not a wildcard).

    Example:
        >>> [is_loopback(h) for h in ("localhost", "127.0.0.2", "::1", "0.0.0.0", "", "example.org")]
        [True, True, True, False, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # another name: it may resolve to anything
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


# Shorter keys are refused: 16 bytes (128 bits) is the least a key that guards a shell should have.
MIN_AUTHKEY = 16


def check_authkey(authkey: object) -> bytes:
    if not isinstance(authkey, (bytes, bytearray)):
        raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
    if not authkey:
        raise ValueError("authkey must not be empty: there is no unauthenticated mode")
    if len(authkey) < MIN_AUTHKEY:
        raise ValueError(
            f"authkey must be at least {MIN_AUTHKEY} bytes, not {len(authkey)}: a short key can be guessed "
            "(serve() makes a random 32-byte one when given none)"
        )
    return bytes(authkey)


def read_authkey_file(path: str | os.PathLike[str]) -> bytes:
    """The key in a key file: its bytes, without surrounding whitespace.

    As OpenSSH does with a private key, a file that is not the user's own,
    or that group or others may read or write, is refused: the key is a
    password to this account.
    """
    name = os.fspath(path)
    # O_NONBLOCK: a FIFO planted there must not hang the reader (it is refused below).
    with os.fdopen(os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
        problem = privacy_problem(os.fstat(f.fileno()))
        if problem is not None:
            raise PermissionError(
                f"refusing the key file {name!r}: it {problem}; it must be yours alone "
                f"(chmod 600 {shlex.quote(name)}, and make a new key if others may have read it)"
            )
        data = f.read().strip()
    try:
        return check_authkey(data)
    except ValueError as exc:
        raise ValueError(f"the key in {name!r}: {exc}") from None


# -- TLS -------------------------------------------------------------------------------------


def client_context(
    cafile: str | os.PathLike[str] | None = None,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    pinned: bool = False,
) -> ssl.SSLContext:
    """A client TLS context that trusts `cafile` (or the system's CAs) and may present a certificate.

    `pinned`: `cafile` is the server's own certificate, trusted as it is,
    whatever name it was issued for (the state file of a detached daemon).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # explicit: not left to the Python or OpenSSL build
    if pinned:
        context.check_hostname = False
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    return context


# -- the client side ----------------------------------------------------------------------------


class NetPeer:
    """A served daemon seen from one client: the `Peer` a `Session` talks to."""

    def __init__(self, channel: Channel, hello: dict[str, Any], address: str) -> None:
        self.channel = channel
        self.hello = hello
        self.pid: int = hello["pid"]
        self.executable: str = f"{hello['executable']} at {address}"
        self.address = address
        self.output = OutputLog(1)
        self._closed = False
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        return 0 if self._closed else None

    def wait_exit(self, timeout: float) -> int | None:
        return None  # another machine's process: its exit code is not ours to know

    def stderr_text(self) -> str:
        return f"; the connection to the daemon at {self.address} was lost"

    def said_stopping(self) -> bool:
        """Whether the next frame unread on the socket is the daemon's STOPPING.

        A client that was idle when its daemon stopped learns of the end by a failed
        send (a Unix socket refuses it at once): the frame is still there to be peeked.
        """
        sock = self.channel.sock
        try:
            head = sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT) if sock is not None else b""
            (size,) = struct.unpack_from("!i", head)
            frame = head[4 : 4 + size]
            return size == len(frame) and frame[:1] == b"P" and pickle.loads(frame[1:]) == (protocol.STOPPING,)
        except Exception:
            return False

    def interrupt(self) -> None:
        pass  # no signal crosses the network: a second Ctrl-C abandons the call

    def close_channel(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sock = self.channel.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.channel.close()

    def shutdown(self, timeout: float = 1.0) -> int | None:
        self.close_channel()
        return None


class Connection(DaemonProxy):
    """The handle on one client connection to a served daemon (what `daemon_of` gives for it).

    `terminate()` closes this connection (the daemon goes on serving others);
    `pid` is the daemon's process id; `is_alive()` says whether the connection is open.
    """

    def __init__(self, peer: NetPeer, call_timeout: float | None) -> None:
        from ._session import Session

        self._process = peer
        self._session = session = Session(peer, call_timeout)
        self._finalizer = weakref.finalize(self, reap_later, peer)
        self._finalizer.atexit = False
        self.address = peer.address
        label = f"the daemon at {peer.address}"
        try:
            reply = session.request("root", (), f"reading the root of {label}")
        except BaseException:
            self.terminate()
            raise
        if reply[2] == protocol.ERROR:
            self.terminate()
            raise _serialize.rebuild_exception(reply[3])
        self._adopt_root(reply[3], label)

    def stop_daemon(self) -> None:
        """End the daemon itself, for every client (its handle's `terminate()` does the same)."""
        with contextlib.suppress(SpawnProxyError):
            self._session.request("stop", (), f"stopping the daemon at {self.address}")
        self.terminate()


def _open(address: tuple[str, int] | str, timeout: float) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(address, timeout=timeout)


def connect(
    address: Address | None = None,
    authkey: bytes | None = None,
    *,
    state_file: str | os.PathLike[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    max_attempts: int | None = 1,
    retry_interval: float = 0.1,
    timeout: float = CONNECT_TIMEOUT,
    call_timeout: float | None = None,
    keepalive: int = KEEPALIVE,
) -> ObjectProxy:
    """Connect to a served daemon and return the proxy of the object it serves.

    `address` is `(host, port)`, `"host:port"`, `"[v6]:port"` or a Unix
    socket path (with a `/` in it, or `"unix:path"`), as for `serve`;
    `authkey` the daemon's key (bytes, at least 16).  Or give
    `state_file`, the file a detached daemon wrote: it holds both, and the
    daemon's certificate when it serves TLS; one that is not this user's, or
    that others may read or write, is refused (`ConnectError`) before anything
    connects.  `ssl_context` (an `ssl.SSLContext` for clients) makes
    the connection TLS; `server_hostname` is the name checked against the
    daemon's certificate (default: the host of `address`).

    `max_attempts` is how often to try while nothing listens yet (None: until
    the daemon is up; a daemon that closes the connection at once, busy with
    too many handshakes, is tried 5 times), `retry_interval` the first pause between tries
    (doubling, at most 1 s).  `timeout` bounds each attempt, handshakes
    included; `call_timeout` is the default timeout of calls, as for a local
    child; `keepalive` is the idle time in seconds after which TCP probes
    check that the daemon is still reachable (one lost with the network is
    given up 25 s into its silence with the default 10: see
    docs/reliability.md; 0: no probes).

    A wrong key raises `AuthenticationError` at once; a daemon that cannot
    be reached, or whose certificate is not trusted, `ConnectError`.
    Everything else works as with a local child; `terminate_daemon()` (or
    `daemon_of(proxy).terminate()`) closes this connection only, and
    dropping the last proxy closes it too.  The daemon then releases every
    object this client held.

    Example:
        >>> import spawnproxy
        >>> server = spawnproxy.serve(spawnproxy.ScriptDefinition("data = []"))
        >>> first = spawnproxy.connect(server.address, authkey=server.authkey)
        >>> second = spawnproxy.connect(server.address, authkey=server.authkey)
        >>> first.data.append("from the first client")
        >>> second.data
        ['from the first client']
        >>> server.terminate()
    """
    tls: Mapping[str, Any] | None = None
    if state_file is not None:
        state = read_state_file(state_file)
        if address is None:
            address = tuple(state["address"]) if isinstance(state["address"], list) else state["address"]
        if authkey is None:
            authkey = bytes.fromhex(state["authkey"])
        tls = state.get("tls")
    if address is None:
        raise TypeError("connect() needs the daemon's address (or a state_file)")
    if authkey is None:
        raise TypeError("connect() needs the daemon's authkey (or a state_file): there is no unauthenticated mode")
    key = check_authkey(authkey)
    where = parse_address(address)
    text = format_address(where)
    if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
        raise ValueError(f"max_attempts must be a positive int or None, not {max_attempts!r}")
    if isinstance(retry_interval, bool) or not isinstance(retry_interval, (int, float)) or not retry_interval > 0:
        raise ValueError(f"retry_interval must be a positive number of seconds, not {retry_interval!r}")
    check_timeout(timeout, "timeout")
    check_timeout(call_timeout, "call_timeout")
    if ssl_context is None and tls:
        ssl_context = client_context(cafile=tls.get("certfile"), pinned=True)
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
    attempt = 0
    pause = retry_interval
    while True:
        attempt += 1
        try:
            sock = _open(where, timeout)
            channel = _secure(sock, where, text, key, ssl_context, server_hostname, timeout, keepalive)
            break
        except _Shed as exc:
            # A daemon with too many handshakes pending closes new ones at once: busy, not
            # wrong.  But a few tries only: a daemon that always does expects something else (TLS).
            if attempt >= (max_attempts or _SHED_ATTEMPTS):
                raise ConnectError(str(exc)) from None
        except ConnectError:
            raise
        except OSError as exc:
            if max_attempts is not None and attempt >= max_attempts:
                raise ConnectError(
                    f"nothing listens at {text} ({type(exc).__name__}: {exc}); is the daemon running? "
                    "(max_attempts=None waits until it is)"
                ) from None
        time.sleep(pause)
        pause = min(1.0, pause * 2)
    peer = None
    try:
        if channel.wait(timeout) is None:
            raise ConnectError(f"the daemon at {text} did not greet within {timeout} s")
        tag, payload = channel.recv()
        message = _serialize.decode(tag, payload)
        if not (isinstance(message, tuple) and message[:1] == ("hello",)):
            raise ConnectError(f"the daemon at {text} sent an unexpected greeting")
        peer = NetPeer(channel, message[1], text)
        return Connection(peer, call_timeout).proxy
    except ConnectError:
        channel.close()
        raise
    except (EOFError, OSError) as exc:
        channel.close()
        raise ConnectError(f"the daemon at {text} closed the connection after the handshake: {exc}") from None
    except BaseException:
        if peer is None:
            channel.close()
        raise


def _secure(
    sock: socket.socket,
    where: tuple[str, int] | str,
    text: str,
    key: bytes,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    timeout: float,
    keepalive: int,
) -> Channel:
    """TLS (if asked), then the mutual key check; a channel ready for frames.  Closes the socket on failure."""
    deadline = time.monotonic() + timeout
    try:
        if ssl_context is not None:
            hostname = server_hostname or (where[0] if isinstance(where, tuple) else "localhost")
            sock.settimeout(timeout)  # ssl bounds the whole handshake by it
            sock = ssl_context.wrap_socket(sock, server_hostname=hostname, do_handshake_on_connect=False)
            _tls_handshake(sock, text)
        _authenticate(sock, key, deadline, text, ssl_context is not None)
    except BaseException:
        sock.close()
        raise
    channel: Channel = network.open_channel(sock, keepalive)
    return channel


def _tls_handshake(sock: ssl.SSLSocket, text: str) -> None:
    try:
        network.no_sigpipe(sock.do_handshake)
    except ssl.SSLCertVerificationError as exc:
        raise ConnectError(
            f"the daemon at {text} presented a certificate this client does not trust: "
            f"{exc.verify_message or exc}; give connect() an ssl_context that trusts it "
            "(its CA file, or the daemon's own certificate)"
        ) from None
    except (ssl.SSLError, OSError, EOFError) as exc:
        raise ConnectError(
            f"the TLS handshake with {text} failed ({type(exc).__name__}: {exc}); does the daemon serve TLS, "
            "and does it require a client certificate?"
        ) from None


# How often connect(max_attempts=None) tries a daemon that closes the connection at once.
_SHED_ATTEMPTS = 5


class _Shed(ConnectError):
    """The daemon closed a connection before its first handshake message (connect may try again)."""


def _authenticate(sock: socket.socket, key: bytes, deadline: float, text: str, tls: bool) -> None:
    """The client's half of `network.authenticate`, step by step: each failure has its own message."""
    conn: Any = network._HandshakeConnection(sock, deadline)
    answered = False
    try:
        answer_challenge(conn, key)
        answered = True
        deliver_challenge(conn, key)
    except (_MpAuthenticationError, AssertionError) as exc:
        # (Before 3.12, answer_challenge asserts that what came is a challenge.)
        if answered:
            raise AuthenticationError(
                f"the daemon at {text} did not prove that it holds the key: not talking to it"
            ) from None
        if "rejected" in str(exc):
            raise AuthenticationError(f"the daemon at {text} refused the key (authentication failed)") from None
        raise ConnectError(f"{text} does not speak the spawnproxy handshake ({exc})") from None
    except (EOFError, OSError) as exc:
        hint = "" if tls else " (does it expect TLS?)"
        if not conn.received:
            raise _Shed(
                f"the daemon at {text} closed the connection before its challenge{hint}: {type(exc).__name__}: {exc}"
            ) from None
        raise ConnectError(
            f"the daemon at {text} closed the connection during the handshake{hint}: {type(exc).__name__}: {exc}"
        ) from None


# -- the serving side -------------------------------------------------------------------------------


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
        return _pid_alive(self.supervisor or self.pid)

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
        if (
            isinstance(self.address, str)
            and self._socket_id is not None
            and self._socket_id == _socket_id(self.address)
        ):
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
        _check_not_running(state_path)
    if detach:
        if state_path is None:
            raise ValueError("serve(detach=True) needs a state_file: it is how clients find the daemon later")
        return _start_detached(
            definition_or_object, where, key, python_exe, files, state_path, log_file, handshake_timeout, keepalive,
            options,
        )  # fmt: skip
    if log_file is not None:
        raise ValueError("log_file is for detached daemons; give a logger instead")
    daemon = DaemonProxy(definition_or_object, python_exe, logger, **options)
    config = {
        "root": daemon._root[0],
        "address": where,
        "authkey": key,
        "handshake_timeout": handshake_timeout,
        "keepalive": keepalive,
        **files,
    }
    try:
        reply = daemon._session.request("listen", (config,), f"listening on {format_address(where)}")
    except BaseException:
        daemon.terminate()
        raise
    if reply[2] == protocol.ERROR:
        daemon.terminate()
        error = _serialize.rebuild_exception(reply[3])
        raise DaemonStartError(
            f"the daemon could not listen on {format_address(where)}: {type(error).__name__}: {error}"
        ) from error
    bound = reply[3]
    bound_address: tuple[str, int] | str = tuple(bound) if isinstance(bound, (list, tuple)) else bound  # type: ignore[assignment]
    server = Server(
        daemon, bound_address, key, daemon.pid, files.get("certfile"), state_path, socket_id=_socket_id(bound_address)
    )
    if state_path is not None:
        write_private(state_path, json.dumps(server.state(), indent=2) + "\n")
    log.debug("daemon %d serves on %s", daemon.pid, format_address(bound_address))
    return server


# -- detached daemons ----------------------------------------------------------------------------------


def _socket_id(address: tuple[str, int] | str) -> tuple[int, int, int] | None:
    """Which socket file is at `address` (not just its path), or None."""
    if not isinstance(address, str):
        return None
    try:
        identity: tuple[int, int, int] = network.socket_identity(os.lstat(address))
    except OSError:
        return None
    return identity


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start_detached(
    definition_or_object: Any,
    where: tuple[str, int] | str,
    key: bytes,
    python_exe: str | os.PathLike[str] | None,
    files: dict[str, str],
    state_path: str,
    log_file: str | os.PathLike[str] | None,
    handshake_timeout: float,
    keepalive: int,
    options: dict[str, Any],
) -> Server:
    log_path = os.path.abspath(os.fspath(log_file)) if log_file is not None else state_path + ".log"
    spec = {
        "definition": definition_or_object,
        "address": where,
        "authkey": key,
        "python_exe": None if python_exe is None else os.fspath(python_exe),
        "files": files,
        "state_file": state_path,
        "log_file": log_path,
        "log_max_bytes": LOG_MAX_BYTES,
        "handshake_timeout": handshake_timeout,
        "keepalive": keepalive,
        "options": options,
    }
    try:
        data = b"P" + _serialize.dumps(spec)
    except Exception:
        import dill

        data = b"D" + dill.dumps(spec)
    # The starter's sys.path comes first, on its own: the supervisor needs it to load the spec
    # (a definition may be an object of the starter's modules), as a child of this interpreter gets it.
    data = pickle.dumps(list(sys.path)) + data
    env = _bootstrap.safe_environment(os.environ)
    env["PYTHONPATH"] = _package_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start_timeout = options.get("start_timeout", 60.0)
    log_fd, log_created = open_log(log_path)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _bootstrap.SAFE_PATH + "from spawnproxy._network import _supervise; _supervise()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,
            env=env,
        )
    except BaseException:
        _forget_log(log_path, log_created)
        raise
    finally:
        os.close(log_fd)
    assert proc.stdin is not None and proc.stdout is not None
    # The supervisor reports one line once the daemon listens (or failed to).  The process
    # started here exits at once, leaving the supervisor to its forked child: it is the
    # wait that is bounded, as killing that process would end nothing.
    limit = None if start_timeout is None else start_timeout + 5
    try:
        # A supervisor that died at once must not take this process with it (SIGPIPE).
        with contextlib.suppress(BrokenPipeError):
            network.no_sigpipe(proc.stdin.write, data)
        with contextlib.suppress(BrokenPipeError):
            network.no_sigpipe(proc.stdin.close)
        line = proc.stdout.readline() if select.select([proc.stdout], [], [], limit)[0] else b""
    finally:
        proc.stdout.close()
        proc.wait()
    try:
        report = json.loads(line)
    except ValueError:
        raise DaemonStartError(f"the detached daemon did not report that it listens (see {log_path})") from None
    if not report.get("ok"):
        _forget_log(log_path, log_created)  # what it holds is in the error
        raise DaemonStartError(report.get("error", "the detached daemon did not start"), report.get("remote_traceback"))
    address = report["address"]
    return Server(
        None,
        tuple(address) if isinstance(address, list) else address,  # type: ignore[arg-type]
        key,
        report["daemon_pid"],
        files.get("certfile"),
        state_path,
        supervisor=report["pid"],
        supervisor_start=report.get("pid_start"),
    )


def _check_not_running(state_path: str) -> None:
    """Refuse to take over the state file of a daemon that still runs (its process, same start time)."""
    try:
        old = read_state_file(state_path)
    except ConnectError:
        return  # unreadable, or not private: it is replaced, never used
    pid, started = old.get("pid"), old.get("pid_start")
    if isinstance(pid, int) and _pid_alive(pid) and started in (None, process_start_time(pid)):
        raise DaemonStartError(f"a daemon (pid {pid}) already runs with state file {state_path!r}")


def _forget_log(path: str, created: bool) -> None:
    """Remove the log a failed start created (one it appended to holds older output: it stays)."""
    if created:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _supervise() -> None:
    """The detached daemon's supervisor: leave the starter's process tree, serve, report, wait."""
    starter_path = pickle.load(sys.stdin.buffer)
    sys.path[:] = starter_path + [p for p in sys.path if p not in starter_path]
    data = sys.stdin.buffer.read()
    if data[:1] == b"D":
        import dill

        spec = dill.loads(data[1:])
    else:
        spec = pickle.loads(data[1:])
    if os.fork():
        os._exit(0)  # the starter reaps this one at once; the daemon is nobody's child
    os.setsid()
    # The report goes through a private copy of the pipe: whatever the daemon prints
    # while it starts must land in the log, not in the starter's reading.
    report = os.fdopen(os.dup(1), "w")
    try:
        log_fd, _ = open_log(spec["log_file"])
    except OSError as exc:  # (the starter checked it: something changed it since)
        report.write(json.dumps({"ok": False, "error": str(exc)}) + "\n")
        report.close()
        os._exit(1)
    # Everything the daemon and this process write goes through one bounded log.
    sys.stdout = sys.stderr = RotatingLog(spec["log_file"], log_fd, spec["log_max_bytes"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        server = serve(
            spec["definition"],
            spec["address"],
            spec["authkey"],
            python_exe=spec["python_exe"],
            handshake_timeout=spec["handshake_timeout"],
            keepalive=spec["keepalive"],
            allow_plaintext=True,  # the starter's serve() has checked the address
            **spec["files"],
            **spec["options"],
        )
    except BaseException as exc:
        error = str(exc) if isinstance(exc, SpawnProxyError) else f"{type(exc).__name__}: {exc}"
        remote = getattr(exc, "remote_traceback", None)
        report.write(json.dumps({"ok": False, "error": error, "remote_traceback": remote}) + "\n")
        report.close()
        os._exit(1)
    server.supervisor = os.getpid()
    server.state_file = spec["state_file"]
    state = server.state()
    write_private(spec["state_file"], json.dumps(state, indent=2) + "\n")
    try:
        report.write(json.dumps({"ok": True, **state}) + "\n")
        report.close()
    except OSError:  # the starter gave up waiting: nobody knows of this daemon
        server.terminate()
        os._exit(1)
    log.info("daemon %d serves %s on %s", server.pid, type(spec["definition"]).__name__, format_address(server.address))
    while not stop.wait(0.5):
        if not server.is_alive():
            log.warning("daemon %d ended by itself", server.pid)
            break
    server.terminate()  # the daemon, its Unix socket and the state file
    log.info("daemon %d stopped", server.pid)
    logging.shutdown()
    os._exit(0)


def _pid_alive(pid: int) -> bool:
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


def stop_pid(pid: int, timeout: float = 5.0, start_time: int | None = None) -> bool:
    """SIGTERM a detached daemon's supervisor, then SIGKILL; whether it has ended.

    With `start_time` (see `Server.state`), a process that started at another
    time has merely reused the pid: it is not signalled, and the daemon counts as ended.
    """

    def ended() -> bool:
        return not _pid_alive(pid) or (start_time is not None and process_start_time(pid) != start_time)

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if ended():
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if ended():
                return True
            time.sleep(0.02)
    return ended()
