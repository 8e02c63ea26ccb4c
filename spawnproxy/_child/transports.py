"""The transports beside the local socket pair: TLS, a pair of pipes, tuned TCP.

Shipped to the child as source (see `_bootstrap`) but run there only in a
child told to listen or reached through ssh: standard library only, CPython
3.8 syntax.  The parent imports it too, since both ends share it.  Uses
`channel` only.

- `TLSChannel` and `PipeChannel`: `Channel` over an `ssl` socket and over a
  pair of pipes (an `ssh` process's stdin and stdout).
- `open_channel`: the channel over a socket that passed the handshake.
- `tune_tcp`, `lost_after`, `watch_unacknowledged`: how a peer lost with
  the network is noticed (keepalive, and a watch on unacknowledged data).
- `no_sigpipe`: a write to a pipe or a TLS socket whose reader has gone
  raises instead of killing the process.
"""

import os
import select
import signal
import socket
import struct
import sys
import threading
import time

from .channel import Channel, ChannelClosed

_SIGPIPE = {signal.SIGPIPE} if hasattr(signal, "SIGPIPE") and hasattr(signal, "pthread_sigmask") else None


def no_sigpipe(call, *args):
    """`call(*args)`, which writes, with SIGPIPE blocked in this thread.

    A reader that has gone then makes the write fail with EPIPE instead of
    killing the process, even where a served script restored SIGPIPE's
    default action.  For what takes no MSG_NOSIGNAL: pipes, and TLS sockets
    (OpenSSL writes with write(2)); Linux has no SO_NOSIGPIPE.  The SIGPIPE
    the write raised waits for this very thread, blocked: it is taken before
    the old mask comes back, so nobody ever receives it.
    """
    if _SIGPIPE is None:
        return call(*args)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)
    try:
        return call(*args)
    finally:
        if signal.SIGPIPE not in old:
            if signal.SIGPIPE in signal.sigpending():
                signal.sigtimedwait(_SIGPIPE, 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- transports -----------------------------------------------------------------------


class TLSChannel(Channel):
    """A channel over an `ssl.SSLSocket`.

    The socket is non-blocking and every TLS call is made under one lock:
    OpenSSL does not allow one connection to be read and written by two
    threads at once.  Waiting for the socket happens outside the lock, so a
    writer blocked on a full socket never stops a reader, and the other way
    round.
    """

    def __init__(self, sock, watch_fds=()):
        import ssl  # here, not at the top: children reached through a launcher use this module too

        Channel.__init__(self, sock, watch_fds)
        self._ssl = ssl  # bound once: every read and write looks at its errors
        sock.setblocking(False)
        self._memfd = False
        self._spins = False  # decrypted input may wait in OpenSSL, unseen by poll
        self._lock = threading.Lock()
        self._recvmsg_into = self._tls_recvmsg_into
        self._send = self._tls_send
        self._sendmsg = self._tls_sendmsg
        self._readv = self._tls_readv

    def _io(self, call, arg, write=False):
        ssl = self._ssl
        while True:
            with self._lock:
                if self.fd < 0:
                    raise ChannelClosed("the channel is closed")
                try:
                    # Only writes are guarded (a few system calls each): a read writes only to
                    # answer a renegotiation or a key update, which no client asks for (the
                    # handshakes, where an unauthenticated peer might, are guarded in `listener`).
                    return no_sigpipe(call, arg) if write else call(arg)
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    if write:
                        # Not 0 written, which the writer would retry for ever: the connection is gone.
                        raise BrokenPipeError("the TLS connection is closed (or was lost)") from None
                    return 0
                except BlockingIOError:
                    events = select.POLLIN | select.POLLOUT
            poller = select.poll()
            poller.register(self.sock.fileno(), events)
            poller.poll(1000)

    def _tls_recvmsg_into(self, buffers, ancsize):
        return self._io(self.sock.recv_into, buffers[0]), [], 0, None

    def _tls_readv(self, fd, buffers):
        return self._io(self.sock.recv_into, buffers[0])

    def _tls_send(self, data, flags):
        return self._io(self.sock.send, data, True)

    def _tls_sendmsg(self, parts, ancillary, flags):
        # One part at a time: the caller resumes after what was written.
        return self._io(self.sock.send, parts[0], True)

    def wait(self, timeout=None):
        # Decrypted bytes may wait inside OpenSSL while the socket itself is quiet.
        if self.sock.pending():
            return [self.fd]
        return Channel.wait(self, timeout)

    def close(self):
        with self._lock:
            Channel.close(self)


class PipeChannel(Channel):
    """A channel over two pipes: frames are read from one fd and written to the other."""

    def __init__(self, read_fd, write_fd, watch_fds=()):
        Channel.__init__(self, None, watch_fds, (read_fd, write_fd))
        self._recvmsg_into = self._pipe_recvmsg_into
        self._send = self._pipe_send
        self._sendmsg = self._pipe_sendmsg

    def _pipe_recvmsg_into(self, buffers, ancsize):
        return os.readv(self.fd, buffers), [], 0, None

    def _pipe_send(self, data, flags):
        return no_sigpipe(os.write, self._wfd, data)

    def _pipe_sendmsg(self, parts, ancillary, flags):
        return no_sigpipe(os.writev, self._wfd, parts)

    def close(self):
        for fd in {self.fd, self._wfd}:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self._wfd = -1


def open_channel(sock, keepalive):
    """The channel over a socket that passed the handshake (TLS or not): blocking again, tuned."""
    sock.settimeout(None)
    tune_tcp(sock, keepalive)
    if keepalive and sock.family in (socket.AF_INET, socket.AF_INET6):
        watch_unacknowledged(sock, lost_after(keepalive))
    ssl = sys.modules.get("ssl")  # imported by whoever made a TLS socket
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        return TLSChannel(sock)
    return Channel(sock)


def tune_tcp(sock, keepalive):
    """No Nagle delay for small frames; keepalive probes notice a peer lost with the network.

    After `keepalive` idle seconds, 3 probes `keepalive // 2` seconds apart:
    a peer that answers none is given up (25 s with the default of 10).
    Probes run only while nothing sent awaits its acknowledgement: see
    `watch_unacknowledged` for the other case.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", keepalive), ("TCP_KEEPINTVL", max(1, keepalive // 2)), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), int(value))


def lost_after(keepalive):
    """Seconds of silence after which an end with this `keepalive` gives its peer up: 25 with 10."""
    return keepalive + 3 * max(1, keepalive // 2)


# tcpi_unacked and tcpi_last_ack_recv (ms ago) of Linux's struct tcp_info.
_TCP_INFO = struct.Struct("=24xI28xI")
_watched = None  # a WeakKeyDictionary, socket -> [limit (s), since when data awaits its acknowledgement]
_watch_lock = threading.Lock()


def watch_unacknowledged(sock, limit):
    """Shut `sock` down once data it sent has waited `limit` s for an acknowledgement that does not come.

    Keepalive probes do not run while sent data awaits its acknowledgement,
    so a request or an answer written into a cut network would otherwise be
    retransmitted for ~15 minutes (Linux's tcp_retries2) before anyone
    learns of it.  Not TCP_USER_TIMEOUT: since Linux 5.11 it also ends a
    connection whose peer keeps its window closed that long, and healthy
    peers do (a daemon busy with one call reads nothing more of that client;
    a client reads no late answer until it calls again) while they still
    acknowledge.  One thread looks at every watched socket once a second
    (Linux only) and ends when none is left.
    """
    global _watched
    if not hasattr(socket, "TCP_INFO"):
        return
    with _watch_lock:
        start = _watched is None
        if start:
            import weakref

            _watched = weakref.WeakKeyDictionary()
        _watched[sock] = [limit, None]
    if start:
        threading.Thread(target=_watch, name="spawnproxy-netwatch", daemon=True).start()


def _watch():
    global _watched
    while True:
        time.sleep(1.0)
        with _watch_lock:
            watched = list(_watched.items())
            if not watched:
                _watched = None
                return
        _sweep(watched, time.monotonic())
        del watched  # not kept through the sleep: a socket dropped meanwhile goes at once


def _sweep(watched, now):
    for sock, state in watched:
        try:
            unacked, ack_recv = _TCP_INFO.unpack_from(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104))
        except (OSError, struct.error):
            done = True  # closed
        else:
            if not unacked:
                state[1] = None
            elif state[1] is None:
                state[1] = now  # (the last acknowledgement may be old: the connection was idle)
            # Silent since the later of the last acknowledgement and the first sweep that saw
            # data waiting (the time since data was last *sent* does not do: retransmissions reset it).
            done = state[1] is not None and min(ack_recv / 1000.0, now - state[1]) >= state[0]
            if done:
                try:
                    # The plain socket's shutdown: SSLSocket's drops its TLS state under a reader.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass
        if done:
            with _watch_lock:
                _watched.pop(sock, None)
