"""The accept loop of a served daemon: every pending handshake in one selector loop.

Shipped to the child as source and loaded with `network`, only in a child
told to listen: standard library only, CPython 3.8 syntax.  Uses
`handshake` (the daemon's half of the challenge) and `transports`
(no_sigpipe).

A peer costs the daemon a socket and a few hundred bytes, never a thread,
until it has proven that it holds the key: one thread accepts on every
listening socket and steps each pending peer through TLS (non-blocking
`do_handshake`) and the `multiprocessing.connection` challenge both ways,
as far as what the peer has sent allows; each peer is dropped at its
deadline.  At most `MAX_PENDING` peers are pending: past that, the one that
has waited longest goes (a real client answers within a round trip, so it
is the newcomer that deserves the place).  Only an authenticated socket is
handed on (`on_ready`), to a thread of its own.

The challenges themselves are the standard library's (see `handshake`).

Refused peers are summarised (`Refusals`): a flood adds a line per second
per reason to the daemon's log, not a line per peer.
"""

import collections
import errno
import selectors
import socket
import struct
import threading
import time

from .handshake import FAILURE, MESSAGE_MAX, WELCOME, answer_challenge, answer_is_right, deliver_challenge, replay
from .transports import no_sigpipe

_HEADER = struct.Struct("!i")
# Peers in their handshake at once; past this, the one that has waited longest is dropped.
MAX_PENDING = 1024
# The descriptors the daemon asks for (its soft RLIMIT_NOFILE, up to the hard limit):
# the pending peers, as many clients, and the rest of the process.
WANTED_FDS = 4 * MAX_PENDING
_ACCEPTS_PER_WAKE = 64  # then pending peers get their turn
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_PAUSE = 0.1  # out of descriptors with nobody to drop: stop accepting this long

# What a pending peer is waiting for.
_TLS, _ANSWER, _THEIR_CHALLENGE, _WELCOMED = range(4)


def raise_fd_limit(wanted=WANTED_FDS):
    """Raise this process's soft limit on open files toward `wanted` (never past the hard limit)."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass


class Refusals:
    """Refused peers, summarised for the log.

    The first refusal of a kind after a quiet second is noted in full; the
    ones that follow within the second are counted, and `flush` notes them
    as one line ("refused N more clients (kind) since ...") once the second
    is over, so that each kind costs at most one line a second.
    """

    INTERVAL = 1.0
    MAX_KINDS = 32  # kinds counted apart; the rest share one line

    def __init__(self, note):
        self.note = note
        self._kinds = {}  # kind -> [end of its second, count, wall time of the first counted, last peer]

    def add(self, kind, peer, detail=None, now=None):
        now = time.monotonic() if now is None else now
        entry = self._kinds.get(kind)
        if entry is None and len(self._kinds) >= self.MAX_KINDS:
            kind, entry = "other reasons", self._kinds.get("other reasons")
        if entry is None or (not entry[1] and now >= entry[0]):
            if peer is None:  # not even accepted
                self.note("refused a client: %s" % (detail or kind))
            else:
                self.note("refused a client from %s: %s" % (peer, detail or kind))
            self._kinds[kind] = [now + self.INTERVAL, 0, None, None]
            return
        if not entry[1]:
            entry[2] = time.time()
        entry[1] += 1
        entry[3] = peer

    def due(self):
        """When `flush` next has something to note (a time.monotonic() value), or None."""
        counted = [entry[0] for entry in self._kinds.values() if entry[1]]
        return min(counted) if counted else None

    def flush(self, now=None):
        now = time.monotonic() if now is None else now
        for kind, entry in list(self._kinds.items()):
            if now < entry[0]:
                continue
            if not entry[1]:
                del self._kinds[kind]  # a quiet second: the next refusal is noted in full
                continue
            self.note(
                "refused %d more clients (%s) since %s%s"
                % (
                    entry[1],
                    kind,
                    time.strftime("%H:%M:%S", time.localtime(entry[2])),
                    "" if entry[3] is None else ", the last from %s" % entry[3],
                )
            )
            self._kinds[kind] = [now + self.INTERVAL, 0, None, None]


class _Pending:
    """A peer in its handshake: its socket, deadline, state and unsent and unread bytes."""

    __slots__ = ("challenge", "deadline", "expected", "fd", "inbuf", "outbuf", "peer", "sock", "state", "wants_write")

    def __init__(self, sock, peer, deadline):
        self.sock = sock
        self.fd = sock.fileno()  # its key among the pending, whatever becomes of the socket object
        self.peer = peer
        self.deadline = deadline
        self.state = _ANSWER
        self.inbuf = b""
        self.outbuf = b""
        self.challenge = self.expected = None
        self.wants_write = False


class _Refused(Exception):
    """A pending peer is refused: `kind` for the summary, the message for the first line of its kind."""

    def __init__(self, kind, detail=None):
        Exception.__init__(self, detail or kind)
        self.kind = kind


class AcceptLoop:
    """Accept on `socks`, authenticate each peer (see the module docstring), pass it to `on_ready`.

    `on_ready(sock, peer)` gets a socket that passed the handshake, still
    non-blocking, and the peer's address; `note(text)` writes a line to the
    daemon's log.
    """

    def __init__(self, socks, authkey, timeout, context, on_ready, note):
        self.authkey = authkey
        self.timeout = timeout
        self.context = context
        self.on_ready = on_ready
        self.refusals = Refusals(note)
        self.pending = collections.OrderedDict()  # fd -> _Pending, oldest first
        self.listeners = list(socks)
        self._paused_until = None
        self.selector = selectors.DefaultSelector()
        for sock in self.listeners:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, None)
        raise_fd_limit()
        self.thread = threading.Thread(target=self._run, name="spawnproxy-listener", daemon=True)
        self.thread.start()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self):
        while True:
            try:
                self._turn()
            except Exception as exc:  # never let the loop end: the daemon would stop accepting
                self.refusals.note("accept loop: %s: %s" % (type(exc).__name__, exc))
                time.sleep(0.1)  # a fault that repeats must not flood the log

    def _turn(self):
        now = time.monotonic()
        wake = [self.refusals.due(), self._paused_until]
        if self.pending:
            wake.append(next(iter(self.pending.values())).deadline)
        wake = [when for when in wake if when is not None]
        timeout = max(0.0, min(wake) - now) if wake else None
        for key, _events in self.selector.select(timeout):
            if key.data is None:
                self._accept(key.fileobj)
            elif self.pending.get(key.data.fd) is key.data:  # (not dropped earlier in this turn)
                self._step(key.data)
        now = time.monotonic()
        while self.pending:
            oldest = next(iter(self.pending.values()))
            if oldest.deadline > now:
                break
            self._refuse(oldest, _Refused("the handshake took too long"))
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            for sock in self.listeners:
                self.selector.register(sock, selectors.EVENT_READ, None)
        self.refusals.flush(now)

    def _accept(self, listener):
        for _ in range(_ACCEPTS_PER_WAKE):
            if self._paused_until is not None:
                return
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:
                    continue  # the peer gave up before we accepted it (ECONNABORTED...)
                self.refusals.add("out of file descriptors", None)
                if self.pending:
                    self._drop_oldest("out of file descriptors: dropped the peer pending longest")
                    continue
                self._pause()
                return
            if len(self.pending) >= MAX_PENDING:
                self._drop_oldest("%d handshakes pending: dropped the one pending longest" % MAX_PENDING)
            self._start(sock, peer)

    def _pause(self):
        self._paused_until = time.monotonic() + _PAUSE
        for sock in self.listeners:
            self.selector.unregister(sock)

    def _drop_oldest(self, kind):
        self._refuse(next(iter(self.pending.values())), _Refused(kind))

    # -- one peer ------------------------------------------------------------------------------

    def _start(self, sock, peer):
        sock.setblocking(False)
        pending = _Pending(sock, peer, time.monotonic() + self.timeout)
        self.pending[pending.fd] = pending
        try:
            if self.context is not None:
                pending.sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                pending.state = _TLS
            self.selector.register(pending.sock, selectors.EVENT_READ, pending)
            self._advance(pending)
        except Exception as exc:
            self._refuse(pending, exc)

    def _step(self, pending):
        try:
            self._advance(pending)
        except Exception as exc:
            self._refuse(pending, exc)

    def _advance(self, pending):
        """Take the peer as far as what it has sent allows; raises on anything that refuses it."""
        if pending.state == _TLS:
            import ssl

            try:
                no_sigpipe(pending.sock.do_handshake)
            except ssl.SSLWantReadError:
                self._want(pending, False)
                return
            except ssl.SSLWantWriteError:
                self._want(pending, True)
                return
            pending.state = _ANSWER
        if pending.challenge is None:
            pending.challenge = replay(deliver_challenge(), self.authkey)[0]
            pending.expected = replay(answer_challenge(), self.authkey, pending.challenge)[0]
            pending.outbuf += _frame(pending.challenge)
        if self._flush(pending):
            self._want(pending, True)  # the rest when the socket has room
            return
        while self._read(pending):
            message = self._message(pending)
            while message is not None:
                self._on_message(pending, message)
                if self.pending.get(pending.fd) is not pending:
                    return  # handed on
                message = self._message(pending)
        self._want(pending, bool(pending.outbuf) or pending.wants_write)

    def _on_message(self, pending, message):
        if pending.state == _ANSWER:
            if not answer_is_right(self.authkey, pending.challenge, pending.expected, message):
                pending.outbuf += _frame(FAILURE)
                self._flush(pending)
                raise _Refused("wrong key", "AuthenticationError: digest received was wrong")
            pending.outbuf += _frame(WELCOME)
            pending.state = _THEIR_CHALLENGE
        elif pending.state == _THEIR_CHALLENGE:
            try:
                answer = replay(answer_challenge(), self.authkey, message)[0]
            except Exception as exc:  # (before 3.12, an AssertionError)
                raise _Refused("no challenge of its own", "%s: %s" % (type(exc).__name__, exc)) from None
            pending.outbuf += _frame(answer)
            pending.state = _WELCOMED
        elif pending.state == _WELCOMED:
            if message != WELCOME:
                raise _Refused("it refused our proof of the key")
            self._flush(pending)
            if pending.outbuf or pending.inbuf:
                raise _Refused("it sent more than the handshake")
            self._hand_on(pending)
            return
        self._flush(pending)

    def _message(self, pending):
        """The next whole handshake message in the peer's input, or None."""
        data = pending.inbuf
        if len(data) < 4:
            return None
        (size,) = _HEADER.unpack_from(data)
        if size < 0 or size > MESSAGE_MAX:
            raise _Refused(
                "a handshake message of a refused length", "handshake message of announced length %d refused" % size
            )
        if len(data) < 4 + size:
            return None
        pending.inbuf = data[4 + size :]
        return data[4 : 4 + size]

    def _read(self, pending):
        """Read what has come; whether anything did.  The peer closing refuses it."""
        import ssl

        try:
            data = no_sigpipe(pending.sock.recv, 4096)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except ssl.SSLWantWriteError:
            pending.wants_write = True
            return False
        pending.wants_write = False
        if not data:
            raise _Refused("it closed the connection during the handshake")
        pending.inbuf += data
        if len(pending.inbuf) > 2 * (4 + MESSAGE_MAX):
            raise _Refused("it sent more than the handshake")
        return True

    def _flush(self, pending):
        """Send what is waiting; whether some of it still waits for room."""
        while pending.outbuf:
            sock = pending.sock
            try:
                if self.context is None:
                    sent = sock.send(pending.outbuf, socket.MSG_NOSIGNAL)
                else:
                    sent = no_sigpipe(sock.send, pending.outbuf)
            except BlockingIOError:
                return True
            except OSError as exc:
                import ssl

                if isinstance(exc, ssl.SSLWantWriteError):
                    return True
                if isinstance(exc, ssl.SSLWantReadError):
                    return False
                raise
            pending.outbuf = pending.outbuf[sent:]
        return False

    def _want(self, pending, write):
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        if self.selector.get_key(pending.sock).events != events:
            self.selector.modify(pending.sock, events, pending)

    def _hand_on(self, pending):
        del self.pending[pending.fd]
        self.selector.unregister(pending.sock)
        self.on_ready(pending.sock, pending.peer)

    def _refuse(self, pending, exc):
        if self.pending.get(pending.fd) is pending:
            del self.pending[pending.fd]
        try:
            self.selector.unregister(pending.sock)
        except (KeyError, ValueError):
            pass
        try:
            pending.sock.close()
        except OSError:
            pass
        peer = describe_peer(pending.peer)
        if isinstance(exc, _Refused):
            self.refusals.add(exc.kind, peer, str(exc))
        else:
            kind = "%s: %s" % (type(exc).__name__, exc)
            self.refusals.add(kind[:200], peer)


def describe_peer(peer):
    """A peer's address as the daemon's log names it."""
    if isinstance(peer, tuple):
        return "%s:%s" % peer[:2]
    return "a local socket"


def _frame(message):
    return _HEADER.pack(len(message)) + message
