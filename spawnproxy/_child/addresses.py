"""The listening sockets of a served daemon, and the Unix socket files it bound.

Shipped to the child as source (see `_bootstrap`) but run there only in a
child told to listen: standard library only, CPython 3.8 syntax.  The parent
uses `socket_identity` to recognise a socket file.  Uses the standard library
only.

- `bind`: the listening sockets for an address (a Unix socket path, a host
  and port, or every loopback address `localhost` may mean).
- `unlink_sockets`: remove the socket files this process bound, and no
  other (a daemon that took the path since keeps it).
"""

import errno
import os
import socket

# A burst of connections must not overflow the queue (the kernel caps it at somaxconn).
BACKLOG = 1024

# (path, identity) of each Unix socket this process bound: it unlinks those and no other.
_socket_paths = []


def socket_identity(info):
    """Which file an `os.lstat` result is: the inode, and its change time, as inode numbers are reused at once."""
    return info.st_dev, info.st_ino, info.st_ctime_ns


def unlink_sockets():
    """Remove each Unix socket file this process bound, if it is still the one bound."""
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
        for _, _, _, _, sockaddr in socket.getaddrinfo("localhost", None, 0, socket.SOCK_STREAM):
            ip = sockaddr[0]
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
