"""Hostile peers of a served daemon, run as `python -m tests.targets.hostile HOST PORT IDLE CHURN SECONDS`.

IDLE peers connect and say nothing (reconnecting whenever the daemon drops
one); CHURN peers send 16 bytes of junk as soon as they connect and
reconnect the moment they are dropped.  Loopback only, bounded in time and
in connections made.  Prints `READY` once every peer has connected once,
then, at the end, `STATS {json}`.
"""

from __future__ import annotations

import ipaddress
import json
import selectors
import socket
import sys
import time

JUNK = b"\x00\x00\x00\x0c" + b"j" * 12  # a 12-byte frame: no answer to any challenge
MAX_CONNECTIONS = 500_000


def attack(host: str, port: int, idle: int, churn: int, seconds: float) -> dict[str, int]:
    """Keep `idle` silent and `churn` junk-sending peers connected to (host, port) for `seconds`."""
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing to attack {host}: loopback only")
    selector = selectors.DefaultSelector()
    stats = {"connections": 0, "dropped": 0, "refused": 0}

    def open_peer(kind: str) -> None:
        stats["connections"] += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex((host, port)) not in (0, 115):  # 115: EINPROGRESS
            stats["refused"] += 1
        selector.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if kind == "churn" else 0), kind)

    for _ in range(idle):
        open_peer("idle")
    for _ in range(churn):
        open_peer("churn")
    print("READY", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end and stats["connections"] < MAX_CONNECTIONS:
        for key, events in selector.select(0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if events & selectors.EVENT_WRITE:
                try:
                    sock.send(JUNK)
                except OSError:
                    pass
                selector.modify(sock, selectors.EVENT_READ, key.data)
                continue
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue  # the challenge: an idle peer does not answer it
            stats["dropped"] += 1
            selector.unregister(sock)
            sock.close()
            open_peer(key.data)
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    return stats


if __name__ == "__main__":
    host, port, idle, churn, seconds = sys.argv[1:6]
    result = attack(host, int(port), int(idle), int(churn), float(seconds))
    print("STATS " + json.dumps(result), flush=True)
