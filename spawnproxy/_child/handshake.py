"""The `multiprocessing.connection` challenge, both halves.

Shipped to the child as source (see `_bootstrap`) but run there only in a
child told to listen: standard library only, CPython 3.8 syntax.  Uses
`transports` (no_sigpipe).

- `HandshakeConnection`: what the client's half reads and writes through
  (the parent, connecting to a served daemon), with a bounded length and a
  deadline; nothing is unpickled before it succeeds.
- `replay`, `answer_is_right`: the daemon's half, for an accept loop that
  steps each peer as far as what it has sent allows (see `listener`).  The
  challenges themselves are the standard library's, run by `replay` up to
  the first message that has not arrived: whatever digest this
  interpreter's `multiprocessing` uses, clients of every version agree
  with it.

"""

import hmac
import socket
import struct
import sys
import time

from .transports import no_sigpipe

_HEADER = struct.Struct("!i")
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
MESSAGE_MAX = 256  # what multiprocessing's challenge functions accept (recv_bytes(256))
CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"


class HandshakeConnection:
    """What `multiprocessing.connection`'s challenge functions need, over a raw socket.

    Lengths are checked before anything is read into memory and every read
    is bounded by the handshake's deadline: a peer that sends a huge length,
    garbage or one byte a second is dropped within the deadline.
    """

    def __init__(self, sock, deadline):
        self._sock = sock
        self._deadline = deadline
        self.received = False  # whether the peer has sent anything yet

    def _timeout(self):
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("the handshake took too long")
        self._sock.settimeout(remaining)

    def send_bytes(self, data):
        self._timeout()
        frame = _HEADER.pack(len(data)) + data
        ssl = sys.modules.get("ssl")  # imported by whoever made a TLS socket
        if ssl is not None and isinstance(self._sock, ssl.SSLSocket):
            no_sigpipe(self._sock.sendall, frame)  # an SSL socket's sendall takes no flags
        else:
            self._sock.sendall(frame, _NOSIGNAL)

    def _read(self, n):
        data = b""
        while len(data) < n:
            self._timeout()
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the peer closed the connection during the handshake")
            self.received = True
            data += chunk
        return data

    def recv_bytes(self, maxlength=None):
        from multiprocessing import AuthenticationError

        (size,) = _HEADER.unpack(self._read(4))
        if size < 0 or (maxlength is not None and size > maxlength):
            raise AuthenticationError("handshake message of announced length %d refused" % size)
        return self._read(size)


# -- the daemon's half ---------------------------------------------------------------


class _Suspended(Exception):
    """The challenge function wants a message that has not arrived."""


class _Replay:
    """The connection `multiprocessing.connection`'s challenge functions need, fed with what has
    arrived: they run up to the first message still missing, and what they sent is kept."""

    def __init__(self, incoming):
        self.incoming = list(incoming)
        self.sent = []

    def send_bytes(self, data):
        self.sent.append(bytes(data))

    def recv_bytes(self, maxlength=None):
        if not self.incoming:
            raise _Suspended()
        return self.incoming.pop(0)


def replay(function, authkey, *incoming):
    """What `function` (deliver_challenge or answer_challenge) sends, given the messages in `incoming`."""
    conn = _Replay(incoming)
    try:
        function(conn, authkey)
    except _Suspended:
        pass
    return conn.sent


def answer_is_right(authkey, challenge, expected, answer):
    """Whether `answer` proves the key for `challenge`, as deliver_challenge would judge it."""
    if hmac.compare_digest(answer, expected):
        return True
    if len(answer) == 16:
        # A client older than 3.12 answers any challenge with a raw HMAC-MD5, which 3.12's
        # own deliver_challenge accepts too (where MD5 is available at all).
        try:
            legacy = hmac.new(authkey, challenge[len(CHALLENGE) :], "md5").digest()
        except ValueError:
            return False
        return hmac.compare_digest(answer, legacy)
    return False


def deliver_challenge():
    """The standard library's challenge of a peer (imported when first needed)."""
    from multiprocessing.connection import deliver_challenge

    return deliver_challenge


def answer_challenge():
    """The standard library's answer to a peer's challenge (imported when first needed)."""
    from multiprocessing.connection import answer_challenge

    return answer_challenge
