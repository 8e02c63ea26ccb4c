"""The child side of serving over a network and of running on an SSH host.

Shipped to the child as source (see `_bootstrap`), but run there only in a
child told to listen or reached through ssh: standard library only, CPython
3.8 syntax.  The parent imports it too, for the transports and the
handshake, which both ends share.

- `TLSChannel` and `PipeChannel`: `Channel` over an `ssl` socket and
  over a pair of pipes (an `ssh` process's stdin and stdout).
- `_HandshakeConnection`: what the client's half of the
  `multiprocessing.connection` HMAC challenge reads and writes through,
  with a bounded length and a deadline; nothing is unpickled before it
  succeeds.
- `Listener`: a served daemon's listening socket; its handshakes run in one
  selector loop (`_accept`), and each authenticated client gets a thread and
  a `Child` of its own (its own object table, so its references are released
  when it disconnects) sharing the root object.
- `no_sigpipe`: a write to a pipe or a TLS socket whose reader has gone
  raises instead of killing the process.
- `main_stdio`: the entry point of a child started through `ssh`.
"""

import atexit
import errno
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

from . import protocol, serve
from .channel import Channel, ChannelClosed

_HEADER = struct.Struct("!i")
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
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
        Channel.__init__(self, sock, watch_fds)
        sock.setblocking(False)
        self._memfd = False
        self._spins = False  # decrypted input may wait in OpenSSL, unseen by poll
        self._lock = threading.Lock()
        self._recvmsg_into = self._tls_recvmsg_into
        self._send = self._tls_send
        self._sendmsg = self._tls_sendmsg
        self._readv = self._tls_readv

    def _io(self, call, arg, write=False):
        import ssl

        while True:
            with self._lock:
                if self.fd < 0:
                    raise ChannelClosed("the channel is closed")
                try:
                    # Only writes are guarded (a few system calls each): a read writes only to
                    # answer a renegotiation or a key update, which no client asks for (the
                    # handshakes, where an unauthenticated peer might, are guarded in `_accept`).
                    return no_sigpipe(call, arg) if write else call(arg)
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    if call == self.sock.send:
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
        self.sock = None
        self._setup(read_fd, write_fd, watch_fds)
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


# -- the handshake ----------------------------------------------------------------------


class _HandshakeConnection:
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


# -- serving clients ---------------------------------------------------------------------


class ClientChild(serve.Child):
    """Serve one network client: its own object table, the daemon's root shared."""

    def __init__(self, channel, root):
        serve.Child.__init__(self, channel)
        self.root = root


def op_root(child):
    """The first request of a network client: the root object, as `load` describes it."""
    return serve.op_load(child, ("object", child.root))


def op_listen(child, config):
    """Start accepting clients; answer with the address actually bound."""
    listener = Listener(child.table.get(config["root"]), config)  # its accept thread keeps it
    atexit.register(_say_stopping)  # its parent ends it on purpose: the daemon is being stopped
    return protocol.VALUE, listener.address


def op_stop(child):
    """End the daemon (asked by a client): answer first, then exit."""

    def stop():
        time.sleep(0.05)
        _say_stopping()
        _unlink_sockets()
        serve.flush_and_exit()

    threading.Thread(target=stop, name="spawnproxy-stop", daemon=True).start()
    return protocol.VALUE, os.getpid()


def _say_stopping():
    """Tell each client that the daemon stops on purpose (it did not crash); bounded, best effort."""
    for child in list(serve._LIVE):
        if not isinstance(child, ClientChild) or not child._send_lock.acquire(timeout=0.1):
            continue
        try:
            child.channel.send(*child.codec.dumps((protocol.STOPPING,)), deadline=time.monotonic() + 0.2)
        except Exception:
            pass  # that client is gone, or stuck: it learns of the end as of a crash
        finally:
            child._send_lock.release()


# The ops of network clients; "listen" itself is `_child`'s, which loads this module.
serve.OPS["root"] = op_root
serve.OPS["stop"] = op_stop

# (path, identity) of each Unix socket this process bound: it unlinks those and no other.
_socket_paths = []


def socket_identity(info):
    """Which file an `os.lstat` result is: the inode, and its change time, as inode numbers are reused at once."""
    return info.st_dev, info.st_ino, info.st_ctime_ns


def _unlink_sockets():
    for path, identity in _socket_paths:
        try:
            if socket_identity(os.lstat(path)) == identity:
                os.unlink(path)
        except OSError:
            pass


def _bind_unix(path):
    """A listening Unix socket at `path`: a stale socket there is replaced, a live one is an error."""
    import stat

    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise FileExistsError("%r exists and is not a socket" % (path,))
        if _answers(path):
            raise OSError(
                "%s is already in use: something answers there (stop it first, or choose another path)" % path
            )
        # Left by a daemon that was killed.  Unlinked only if it is still the socket probed:
        # a daemon that took the path meanwhile keeps it (its bind below then fails instead).
        try:
            if socket_identity(os.lstat(path)) == socket_identity(info):
                os.unlink(path)
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        _socket_paths.append((path, socket_identity(os.lstat(path))))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


# A burst of connections must not overflow the queue (the kernel caps it at somaxconn).
BACKLOG = 1024


def _answers(path):
    """Whether something accepts connections on the Unix socket at `path` (refused: a stale socket)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (socket.timeout, BlockingIOError):
        return True  # a listener with a full backlog: alive
    finally:
        probe.close()
    return True


def _bind_tcp(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_localhost(port):
    """Listen on every loopback address `localhost` may mean, on one port: 127.0.0.1 and ::1 at least.

    A client that resolves `localhost` to ::1 must reach this daemon, not a
    process squatting the same port on ::1.  Where this machine has no IPv6
    (nobody can listen on ::1), the IPv4 socket alone will do.
    """
    hosts = ["127.0.0.1", "::1"]
    try:
        for info in socket.getaddrinfo("localhost", None, 0, socket.SOCK_STREAM):
            ip = info[4][0]
            if ip not in hosts and (ip.startswith("127.") or ip == "::1"):
                hosts.append(ip)
    except OSError:
        pass
    for attempt in range(10):
        socks = []
        chosen = port
        try:
            for host in hosts:
                try:
                    sock = _bind_tcp(host, chosen)
                except OSError as exc:
                    if ":" in host and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                        continue
                    raise OSError(exc.errno, "%s on %s port %d" % (exc.strerror, host, chosen)) from None
                socks.append(sock)
                chosen = sock.getsockname()[1]
            return socks, ("localhost", chosen)
        except OSError as exc:
            for sock in socks:
                sock.close()
            # Port 0: the free port IPv4 gave may be taken on ::1; try another.
            if port or exc.errno != errno.EADDRINUSE or attempt == 9:
                raise


def bind(address):
    """The listening sockets for `address` (a Unix socket path or (host, port)) and the address to report."""
    if isinstance(address, str):
        return [_bind_unix(address)], address
    host, port = address
    if host.lower() == "localhost":
        return _bind_localhost(port)
    sock = _bind_tcp(host, port)
    return [sock], sock.getsockname()[:2]


class Listener:
    """Accept clients on one address, each in a thread of its own."""

    def __init__(self, root, config):
        self.root = root
        self.authkey = config["authkey"]
        self.timeout = config.get("handshake_timeout", 1.0)
        self.keepalive = config.get("keepalive", 10)
        self.context = None
        if config.get("certfile"):
            import ssl

            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            # Explicit: before Python 3.10 the floor is whatever OpenSSL's defaults say.
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(config["certfile"], config.get("keyfile") or None)
            if config.get("cafile"):
                # A CA for client certificates: clients must then present one it signed.
                context.load_verify_locations(config["cafile"])
                context.verify_mode = ssl.CERT_REQUIRED
            self.context = context
        # Several sockets for `localhost` (127.0.0.1 and ::1), one otherwise.
        self.socks, self.address = bind(config["address"])
        self.sock = self.socks[0]
        try:
            from . import listener
        except ImportError:  # in the child, a module is loaded when first needed
            listener = sys.modules[__package__].load("listener")
        listener.AcceptLoop(self.socks, self.authkey, self.timeout, self.context, self._start_client, _note)

    def _start_client(self, conn, peer):
        """A peer passed the handshake: serve it in a thread of its own."""
        threading.Thread(target=self._serve, args=(conn, peer), name="spawnproxy-client", daemon=True).start()

    def _serve(self, conn, peer):
        channel = open_channel(conn, self.keepalive)
        child = ClientChild(channel, self.root)
        try:
            channel.send(*child.codec.dumps(("hello", hello())))
            child.serve()
        except BaseException as exc:
            # However the client went (reset, killed, keepalive timeout), only it is affected.
            if not isinstance(exc, (SystemExit, OSError, EOFError)):
                _note("client %s ended with %s: %s" % (_describe(peer), type(exc).__name__, exc))
        finally:
            channel.close()
            # Its references go with it: the objects only it held are freed now.
            child.table = None
            child.codec = None


def hello():
    """What this process tells a peer about itself in its first message."""
    return {
        "pid": os.getpid(),
        "version": tuple(sys.version_info[:3]),
        "executable": sys.executable,
        "implementation": sys.implementation.name,
    }


def _describe(peer):
    if isinstance(peer, tuple):
        return "%s:%s" % peer[:2]
    return "a local socket"


def _note(text):
    try:
        sys.stderr.write("spawnproxy daemon %d: %s\n" % (os.getpid(), text))
    except Exception:
        pass


# -- a child started through ssh -----------------------------------------------------------

# What prefixes each line the child writes: the parent sorts them back into
# stdout and stderr (ssh carries only one stream besides the channel).
STDOUT_MARK = b"\x1eO"
STDERR_MARK = b"\x1eE"
_LINE_MAX = 64 * 1024


def _forward_lines(read_fd, mark, out_fd, lock):
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        while len(pending) > _LINE_MAX:
            lines.append(pending[:_LINE_MAX])
            pending = pending[_LINE_MAX:]
        if lines:
            data = b"".join(mark + line + b"\n" for line in lines)
            with lock:
                _write_all(out_fd, data)
    if pending:
        with lock:
            _write_all(out_fd, mark + pending + b"\n")


def _write_all(fd, data):
    try:
        while data:
            data = data[no_sigpipe(os.write, fd, data) :]
    except OSError:
        pass


def _watch_connection(read_fd, write_fd):
    """End the process when ssh's pipes close, even while a call runs: the connection dropped."""
    poller = select.poll()
    poller.register(read_fd, 0)  # only POLLHUP / POLLERR: the data stays for the serve loop
    poller.register(write_fd, 0)
    while True:
        events = poller.poll()
        if any(event & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, event in events):
            break
    serve.flush_and_exit()


def main_stdio():
    """Serve the parent over stdin/stdout (ssh's pipes); the child's output goes to stderr, marked."""
    read_fd, write_fd, err_fd = os.dup(0), os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    lock = threading.Lock()
    forwarders = []
    for target, mark in ((1, STDOUT_MARK), (2, STDERR_MARK)):
        pipe_read, pipe_write = os.pipe()
        os.dup2(pipe_write, target)
        os.close(pipe_write)
        thread = threading.Thread(
            target=_forward_lines, args=(pipe_read, mark, err_fd, lock), name="spawnproxy-output", daemon=True
        )
        thread.start()
        forwarders.append(thread)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    threading.Thread(
        target=_watch_connection, args=(read_fd, write_fd), name="spawnproxy-lifeline", daemon=True
    ).start()
    channel = PipeChannel(read_fd, write_fd)
    child = serve.Child(channel)
    try:
        channel.send(*child.codec.dumps(("hello", hello())))
        child.serve()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        for thread in forwarders:
            thread.join(1.0)
        channel.close()
