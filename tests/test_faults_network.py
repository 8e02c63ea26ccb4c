"""Network loss between a served daemon and its clients: who learns of it, how, and within how long.

Two ways to lose the network, both with real processes and real sockets:

- a cut: the daemon and its clients sit in network namespaces this test makes
  (one for the daemon, one for the clients, joined by veth pairs through a
  bridge in a third), and the bridge is switched off.  Packets then vanish
  in the middle, as when a cable is pulled between two machines: neither end
  is told.  Needs root and `ip`; skips and says why elsewhere.
- a stall: a relay on loopback that stops forwarding but keeps its
  connections open (a hung middlebox).  The ends' TCP stacks still answer,
  so TCP keepalive cannot see it; only `call_timeout` bounds a call.

Traffic goes only to loopback or into the namespaces made here (addresses
from 198.18.0.0/15, the range set aside for such tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

import spawnproxy
from spawnproxy import ScriptDefinition
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

SCRIPT = """
import time, weakref

live = weakref.WeakSet()

class Thing:
    pass

def make():
    thing = Thing()
    live.add(thing)
    return thing

def nap(seconds):
    time.sleep(seconds)
    return seconds

def identity(x):
    return x

def late(seconds, size):
    time.sleep(seconds)
    return b"x" * size
"""

# A short keepalive (lost after 5 s), so that a test waits seconds, not the default's 25.
KEEPALIVE = 2


def lost_after(keepalive: int) -> int:
    """Seconds of silence after which an end gives its peer up: the idle time, then 3 probes."""
    return keepalive + 3 * max(1, keepalive // 2)


# -- a network the test makes: namespaces, veth pairs and a bridge -----------------------------

_CLONE_NEWNET = 0x40000000
DAEMON_IP = "198.18.0.1"
CLIENT_IP = "198.18.0.2"


class Network:
    """Three namespaces: the daemon's, the clients', and between them a bridge that `cut()` switches off."""

    def __init__(self) -> None:
        tag = f"spx{os.getpid()}"
        self.daemon, self.clients, self.switch = tag + "d", tag + "c", tag + "m"
        self.made: list[str] = []

    def ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if result.returncode:
            raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def build(self) -> None:
        for name in (self.daemon, self.clients, self.switch):
            self.ip("netns", "add", name)
            self.made.append(name)
        self.ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        for name, end in ((self.daemon, "vdaemon"), (self.clients, "vclients")):
            self.ip("link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", end, "netns", self.switch)
            self.ip("-n", self.switch, "link", "set", end, "master", "br0")
            self.ip("-n", self.switch, "link", "set", end, "up")
            self.ip("-n", name, "link", "set", "lo", "up")
            self.ip("-n", name, "link", "set", "eth0", "up")
        self.ip("-n", self.switch, "link", "set", "br0", "up")
        self.ip("-n", self.daemon, "addr", "add", DAEMON_IP + "/24", "dev", "eth0")
        self.ip("-n", self.clients, "addr", "add", CLIENT_IP + "/24", "dev", "eth0")

    def cut(self) -> None:
        """Drop every frame between the two ends; neither end's interface notices."""
        self.ip("-n", self.switch, "link", "set", "br0", "down")

    def remove(self) -> None:
        for name in reversed(self.made):
            with contextlib.suppress(OSError):
                self.ip("netns", "delete", name)  # its veth ends go with it
        self.made.clear()

    def run_in(self, namespace: str, func: Callable[[], T]) -> T:
        """`func()` in a thread moved into `namespace`: the sockets it makes, and the processes it starts, live there."""
        libc = ctypes.CDLL(None, use_errno=True)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        error = ctypes.get_errno()
                        raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
                finally:
                    os.close(fd)
                outcome["value"] = func()
            except BaseException as exc:  # handed to the caller
                outcome["error"] = exc

        thread = threading.Thread(target=run)  # ends with its namespace: no other thread is moved
        thread.start()
        thread.join(30)
        if thread.is_alive():
            raise TimeoutError(f"{func} did not return within 30 s in {namespace}")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]  # type: ignore[no-any-return]


@pytest.fixture
def network() -> Iterator[Network]:
    """The namespaces; skips with the reason where they cannot be made; removed even when the test fails."""
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed: no network namespaces")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    made = Network()
    try:
        made.build()
        made.run_in(made.daemon, lambda: None)  # entering one needs CAP_SYS_ADMIN too
    except OSError as exc:
        made.remove()
        pytest.skip(f"cannot make network namespaces here: {exc}")
    try:
        yield made
    finally:
        made.remove()


def _plaintext_allowed() -> dict[str, Any]:
    # Serving plain TCP beyond loopback may need an explicit opt-in.
    return {"allow_plaintext": True} if "allow_plaintext" in inspect.signature(spawnproxy.serve).parameters else {}


class Outcome:
    """What a call in a thread ended with, and when (seconds on the monotonic clock)."""

    def __init__(self, call: Callable[[], object], delay: float = 0.0) -> None:
        self.error: BaseException | None = None
        self.started = self.ended = 0.0
        self._call, self._delay = call, delay
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        time.sleep(self._delay)
        self.started = time.monotonic()
        try:
            self._call()
        except BaseException as exc:  # what the test looks at
            self.error = exc
        self.ended = time.monotonic()

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def took(self) -> float:
        return self.ended - self.started


def _with_timeout(call: Callable[[], object], seconds: float) -> Callable[[], object]:
    def run() -> object:
        with spawnproxy.call_timeout(seconds):
            return call()

    return run


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("transport", "keepalive"), [("tcp", None), ("tls", KEEPALIVE)], ids=["tcp-default", "tls"])
def test_a_network_cut_is_noticed_within_the_keepalive_bound(
    network: Network, transport: str, keepalive: int | None, request: Any
) -> None:
    """After a cut, waiting calls fail within the keepalive bound, timed calls at their timeout, and the daemon frees the clients' objects."""
    options = {} if keepalive is None else {"keepalive": keepalive}
    bound = lost_after(keepalive or 10)  # 25 s with the default keepalive
    files = request.getfixturevalue("tls_files") if transport == "tls" else None
    tls = {"certfile": files["cert"], "keyfile": files["key"]} if files else _plaintext_allowed()
    server = network.run_in(
        network.daemon, lambda: spawnproxy.serve(ScriptDefinition(SCRIPT), (DAEMON_IP, 0), **options, **tls)
    )
    try:
        clients = network.run_in(network.clients, lambda: [server.connect(**options) for _ in range(6)])
        waiting, answered, bounded, late, late_bounded, idle = clients
        things = [client.make() for client in clients]
        assert server.proxy.live.__len__() == 6
        # Calls the daemon is running at the cut: one it finishes after it gave its client up,
        # one whose answer it writes into the void.
        in_call = Outcome(lambda: waiting.nap(bound + 2))
        answering = Outcome(lambda: answered.nap(1))
        in_call_bounded = Outcome(_with_timeout(lambda: bounded.nap(bound + 2), 1.0))
        time.sleep(0.3)
        network.cut()
        cut = time.monotonic()
        # Calls made after the cut: their requests are never acknowledged.
        after = Outcome(lambda: late.nap(0), delay=0.5)
        after_bounded = Outcome(_with_timeout(lambda: late_bounded.nap(0), 1.0), delay=0.5)

        assert in_call_bounded.join(2) and isinstance(in_call_bounded.error, spawnproxy.CallTimeoutError)
        assert 0.9 <= in_call_bounded.took() <= 1.5
        assert after_bounded.join(3) and isinstance(after_bounded.error, spawnproxy.CallTimeoutError)
        assert 0.9 <= after_bounded.took() <= 1.5
        for outcome, end in ((in_call, cut), (answering, cut), (after, after.started or cut + 0.5)):
            assert outcome.join(end + bound + 1.5 - time.monotonic()), (
                f"a call still waits {time.monotonic() - end:.1f} s into the silence"
            )
            assert isinstance(outcome.error, spawnproxy.DaemonDiedError), outcome.error
        # The daemon gives every client up: those idle at the cut at the keepalive bound, the one
        # it answered when the answer is not acknowledged within it, the busy one when its call
        # ends (its answer cannot be written).
        freed = wait_until(lambda: server.proxy.live.__len__() == 0, timeout=cut + bound + 4 - time.monotonic())
        assert freed, f"the daemon still holds {server.proxy.live.__len__()} of the lost clients' objects"
        # A client idle through it all learns at its next call, at once.
        at_once = Outcome(lambda: idle.nap(0))
        assert at_once.join(1.0), "a call on a connection already given up does not end"
        assert isinstance(at_once.error, spawnproxy.DaemonDiedError), at_once.error
        assert "connection to the daemon" in str(at_once.error)
        del things
    finally:
        server.terminate()


def test_keepalive_settings_on_both_ends() -> None:
    """Both ends probe after 10 idle seconds, 3 times 5 s apart; keepalive=0 turns the probes off."""
    server = spawnproxy.serve(ScriptDefinition(SCRIPT + PROBE))
    try:
        client = server.connect()
        quiet = server.connect(keepalive=0)
        assert client.nap(0) == 0 and quiet.nap(0) == 0
        options = [_tcp_options(spawnproxy.daemon_of(c)._process.channel.sock) for c in (client, quiet)]
        assert options[0] == (1, 10, 5, 3)
        assert options[1][0] == 0
        # The daemon's ends follow the daemon's own setting.
        assert [tuple(o) for o in server.proxy.tcp_options()] == [(1, 10, 5, 3)] * 2
    finally:
        server.terminate()


@pytest.mark.slow
def test_the_watch_on_unacknowledged_data_ends_with_the_last_connection() -> None:
    """The thread that watches connections for unacknowledged data runs only while one is open."""
    server = spawnproxy.serve(ScriptDefinition(SCRIPT))
    try:
        client = server.connect()
        assert client.nap(0) == 0
        assert any(t.name == "spawnproxy-netwatch" for t in threading.enumerate())
        spawnproxy.daemon_of(client).terminate()
        del client
        assert wait_until(lambda: all(t.name != "spawnproxy-netwatch" for t in threading.enumerate()), timeout=3.0)
    finally:
        server.terminate()


PROBE = """
import gc, socket

def tcp_options():
    return [_tcp_options(o) for o in gc.get_objects()
            if isinstance(o, socket.socket) and o.fileno() >= 0 and o.family == socket.AF_INET and _connected(o)]

def _connected(sock):
    try:
        return bool(sock.getpeername())
    except OSError:
        return False

def _tcp_options(sock):
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )
"""


def _tcp_options(sock: socket.socket) -> tuple[int, int, int, int]:
    return (
        int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


# -- a stall: a relay on loopback that stops forwarding but keeps its connections -----------------


class Relay:
    """Forwards connections on loopback to `target`; `stall()` stops it reading and writing, `close()` ends them."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.sockets: list[socket.socket] = []
        self.stalled = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return
            outer = socket.create_connection(self.target, timeout=5)
            self.sockets += [inner, outer]
            threading.Thread(target=self._pump, args=(inner, outer), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self.closed.is_set():
            if self.stalled.is_set():
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
            except OSError:
                return

    def stall(self) -> None:
        self.stalled.set()

    def close(self) -> None:
        self.closed.set()
        for sock in [self.listener, *self.sockets]:
            sock.close()


@pytest.mark.slow
def test_a_stalled_relay_is_bounded_by_call_timeout_and_its_close_noticed_at_once() -> None:
    """Through a stalled relay only call_timeout ends a call; when the relay closes, clients and daemon learn at once."""
    keepalive = 1
    server = spawnproxy.serve(ScriptDefinition(SCRIPT), keepalive=keepalive)
    relay = Relay(server.address)  # type: ignore[arg-type]
    try:
        waiting, bounded, idle = (
            spawnproxy.connect(relay.address, server.authkey, keepalive=keepalive) for _ in range(3)
        )
        things = [client.make() for client in (waiting, bounded, idle)]
        assert server.proxy.live.__len__() == 3
        in_call = Outcome(lambda: waiting.nap(0.5))
        time.sleep(0.2)
        relay.stall()
        with spawnproxy.call_timeout(1.0):
            started = time.monotonic()
            with pytest.raises(spawnproxy.CallTimeoutError):
                bounded.nap(0)
        assert 0.9 <= time.monotonic() - started <= 1.5
        # Both ends' TCP stacks still answer the relay: keepalive finds nothing wrong.
        time.sleep(lost_after(keepalive) + 1)
        assert not in_call.join(0) and server.proxy.live.__len__() == 3
        relay.close()
        closed = time.monotonic()
        assert in_call.join(2) and isinstance(in_call.error, spawnproxy.DaemonDiedError), in_call.error
        assert in_call.ended - closed < 1.0
        assert wait_until(lambda: server.proxy.live.__len__() == 0, timeout=1.0)
        with pytest.raises(spawnproxy.DaemonDiedError):
            idle.nap(0)
        del things
    finally:
        relay.close()
        server.terminate()


@pytest.mark.slow
def test_a_busy_daemon_keeps_a_client_whose_writes_wait_longer_than_the_bound() -> None:
    """A daemon busy past the keepalive bound while its client writes a large argument: the connection survives."""
    keepalive = 1
    server = spawnproxy.serve(ScriptDefinition(SCRIPT), keepalive=keepalive)
    try:
        client = server.connect(keepalive=keepalive)
        busy = Outcome(lambda: client.nap(lost_after(keepalive) + 2))
        time.sleep(0.2)
        payload = b"x" * (64 << 20)  # more than both ends' buffers: the writer waits on a closed window
        assert client.identity(payload) == payload
        assert busy.join(5) and busy.error is None
    finally:
        server.terminate()


@pytest.mark.slow
def test_a_client_that_leaves_a_large_late_answer_unread_keeps_its_connection() -> None:
    """A large answer to a call that timed out, unread for longer than the keepalive bound: the connection survives."""
    keepalive = 1
    server = spawnproxy.serve(ScriptDefinition(SCRIPT), keepalive=keepalive)
    try:
        client = server.connect(keepalive=keepalive)
        with spawnproxy.call_timeout(0.3), pytest.raises(spawnproxy.CallTimeoutError):
            client.late(0.5, 64 << 20)  # more than both ends' buffers: the daemon waits on a closed window
        time.sleep(lost_after(keepalive) + 2)
        assert client.nap(0) == 0
        assert client.identity("after") == "after"
    finally:
        server.terminate()
