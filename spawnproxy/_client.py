"""Connect to a served daemon: `connect`, the client's half of the handshake, and `Connection`.

A client opens a socket (TCP or Unix), wraps it in TLS when asked
(`client_context`), then proves it holds the key with the HMAC challenge of
`multiprocessing.connection` and asks the daemon to prove the same, before a
single byte it receives is unpickled.  The daemon then greets it (its pid,
version and executable) and the connection becomes a `Session` like any
child's: `NetPeer` is the `Peer` it talks to, and `Connection` the handle
(`daemon_of`) on it.

Uses `_addresses` and `_keys` (what the user gives), the child package's
`transports` (the channel over a socket) and `handshake` (the handshake connection) and the
session and handle layers (`_session`, `_daemon`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping
from multiprocessing import AuthenticationError as _MpAuthenticationError
from multiprocessing.connection import answer_challenge, deliver_challenge
from typing import Any

from . import _serialize
from ._addresses import Address, format_address, parse_address
from ._child import handshake, protocol, transports
from ._child.channel import Channel
from ._daemon import DaemonProxy, attach
from ._errors import AuthenticationError, ConnectError, SpawnProxyError
from ._keys import check_authkey
from ._options import check_timeout
from ._output import OutputLog
from ._proxy import ObjectProxy
from ._statefile import read_state_file

CONNECT_TIMEOUT = 5.0
KEEPALIVE = 10  # idle seconds; a lost peer is given up 25 s into its silence (see transports.lost_after)


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


class NetPeer:
    """A served daemon seen from one client: the `Peer` a `Session` talks to."""

    lanes = False  # a socket to another machine: no descriptor can be passed to the daemon

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
            tag = frame[:1]
            return (
                size == len(frame)
                and tag == protocol.TAG_PICKLE
                and _serialize.decode(tag, frame[1:]) == (protocol.STOPPING,)
            )
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
    Built by `_daemon.attach` (see `connect`).
    """

    _process: NetPeer

    @property
    def address(self) -> str:
        """The daemon's address, as this client reached it."""
        return self._process.address

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
        greeting, hello = message if isinstance(message, tuple) and len(message) == 2 else ("", {})
        if greeting != "hello":
            raise ConnectError(f"the daemon at {text} sent an unexpected greeting")
        peer = NetPeer(channel, hello, text)
        return attach(Connection, peer, call_timeout, f"the daemon at {text}").proxy
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
        channel: Channel = transports.open_channel(sock, keepalive)
    except BaseException:
        sock.close()
        raise
    return channel


def _tls_handshake(sock: ssl.SSLSocket, text: str) -> None:
    try:
        transports.no_sigpipe(sock.do_handshake)
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
    """The client's half of the daemon's handshake (`_child.handshake`), step by step: each failure has its own message."""
    conn: Any = handshake.HandshakeConnection(sock, deadline)
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
