"""Addresses of served daemons: parsing what a user gives, showing it, and which ones are loopback.

An address is `(host, port)` or the path of a Unix socket; `parse_address`
turns every accepted form into one of these, with a one-line error for
anything else.  A Unix socket is also known by its identity (device, inode,
ctime), so that a daemon unlinks only the socket it made.

Uses the standard library and the child package's `addresses` (the socket identity
the listening child records).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from ._child import addresses

Address = tuple[str, int] | str | os.PathLike[str]
DEFAULT_HOST = "127.0.0.1"
# The names `spawnproxy stop` takes for this machine (with Unix sockets) when it asks whether a state file's
# address is local; `is_loopback` answers the wider question for any host.
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


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


def socket_id(address: tuple[str, int] | str) -> tuple[int, int, int] | None:
    """Which socket file is at `address` (not just its path), or None."""
    if not isinstance(address, str):
        return None
    try:
        identity: tuple[int, int, int] = addresses.socket_identity(os.lstat(address))
    except OSError:
        return None
    return identity
