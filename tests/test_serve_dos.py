"""A served daemon against denial of service: idle and reconnecting peers, peers that vanish
(SIGPIPE, on both sides), and floods of refused peers in the daemon's log.  Hostile peers only
ever connect to loopback addresses, and every loop is bounded in count and time."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import spawnproxy
from spawnproxy import ScriptDefinition

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = "import time\n\ndef add(a, b):\n    return a + b\n\ndef nap(seconds):\n    time.sleep(seconds)\n"
SIG_DFL_SCRIPT = "import signal\nsignal.signal(signal.SIGPIPE, signal.SIG_DFL)\n" + SCRIPT
PENDING_BOUND = 1024  # handshakes that may be pending at once (spawnproxy._child.listener.MAX_PENDING)
SERVED_WITHIN = 1.0  # seconds a real client may take to be served (connect and one call) under attack


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _frame(payload: bytes) -> bytes:
    return struct.pack("!i", len(payload)) + payload


@contextlib.contextmanager
def _sigpipe_client(*args: str) -> Iterator[subprocess.Popen[str]]:
    """tests.targets.sigpipe_client run with `args`, talked to over its stdin and stdout; ended after."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.targets.sigpipe_client", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        yield process
    finally:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream:
                stream.close()


@pytest.fixture
def attacker() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _attack(
    attacker: list[subprocess.Popen[str]], address: Any, idle: int, churn: int, seconds: float
) -> subprocess.Popen[str]:
    args = [address[0], str(address[1]), str(idle), str(churn), str(seconds)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.targets.hostile", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
    )
    attacker.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


# -- 1. pending handshakes ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_idle_and_reconnecting_peers_do_not_lock_clients_out(
    attacker: list[subprocess.Popen[str]], capsys: pytest.CaptureFixture[str], transport: str, request: Any
) -> None:
    """256 idle peers and 48 that reconnect as fast as they are dropped: real clients are still
    served within a second each, with no thread per pending peer and bounded memory."""
    tls = {}
    if transport == "tls":
        files = request.getfixturevalue("tls_files")
        tls = {"certfile": files["cert"], "keyfile": files["key"]}
    with spawnproxy.serve(ScriptDefinition(SCRIPT), **tls) as server:
        daemon = psutil.Process(server.pid)
        assert server.connect().add(0, 0) == 0
        threads_before = daemon.num_threads()
        cpu_before = sum(daemon.cpu_times()[:2])
        rss_before = rss_peak = daemon.memory_info().rss
        threads_peak = threads_before
        proc = _attack(attacker, server.address, 256, 48, 6.0)
        started = time.monotonic()
        time.sleep(1.0)  # the attack in full swing
        took: list[float] = []
        failures: list[str] = []
        for i in range(5):
            begin = time.monotonic()
            try:
                client = server.connect(max_attempts=None, timeout=3)
                assert client.add(i, 1) == i + 1
                spawnproxy.daemon_of(client).terminate()
            except spawnproxy.ConnectError as exc:
                failures.append(str(exc))
            took.append(time.monotonic() - begin)
            rss_peak = max(rss_peak, daemon.memory_info().rss)
            threads_peak = max(threads_peak, daemon.num_threads())
            time.sleep(0.3)
        cpu = sum(daemon.cpu_times()[:2]) - cpu_before
        window = time.monotonic() - started
        assert proc.stdout is not None
        out, _ = proc.communicate(timeout=20)
        stats = json.loads(out.split("STATS ", 1)[1])
        with capsys.disabled():
            print(
                f"\n{transport} under attack ({stats['connections']} hostile connections in 6 s): "
                f"{len(took) - len(failures)}/{len(took)} clients served, slowest {max(took):.3f} s, "
                f"daemon CPU {cpu / window:.0%} of a core, RSS {rss_before / 2**20:.1f} -> {rss_peak / 2**20:.1f} MiB, "
                f"threads {threads_before} -> {threads_peak}"
            )
        assert not failures, failures[0]
        assert max(took) < SERVED_WITHIN, f"served after {max(took):.2f} s"
        assert stats["connections"] > 304 + 100, stats  # the peers really were dropped and came back
        assert threads_peak <= threads_before + 2, "a thread per pending handshake"
        assert rss_peak - rss_before < 32 << 20


@pytest.mark.slow
def test_a_thousand_handshakes_may_be_pending(capsys: pytest.CaptureFixture[str]) -> None:
    """1,024 silent peers all stay connected until their deadline; a client still gets in meanwhile."""
    with spawnproxy.serve(ScriptDefinition(SCRIPT), handshake_timeout=10.0) as server:
        socks = []
        try:
            for _ in range(1024):
                socks.append(socket.create_connection(server.address, timeout=5))
            time.sleep(0.5)
            dropped = 0
            for sock in socks:
                sock.settimeout(0.0)
                try:
                    while True:
                        data = sock.recv(4096)
                        if not data:
                            dropped += 1
                            break
                except BlockingIOError:
                    pass
                except OSError:
                    dropped += 1
            begin = time.monotonic()
            client = spawnproxy.connect(server.address, server.authkey, timeout=3)
            assert client.add(1, 1) == 2
            took = time.monotonic() - begin
        finally:
            for sock in socks:
                sock.close()
        with capsys.disabled():
            print(f"\n1024 pending handshakes: {dropped} dropped early; a client served in {took:.3f} s")
        assert dropped == 0, f"{dropped} of 1024 pending handshakes were dropped before their deadline"


def test_beyond_the_bound_the_oldest_pending_peer_is_dropped() -> None:
    """Past the bound on pending handshakes, the peer waiting longest goes, and a client gets in at once."""
    with spawnproxy.serve(ScriptDefinition(SCRIPT), handshake_timeout=10.0) as server:
        socks = []
        try:
            for _ in range(PENDING_BOUND + 20):
                socks.append(socket.create_connection(server.address, timeout=5))
            time.sleep(0.3)
            first, last = socks[0], socks[-1]
            first.settimeout(2)
            while first.recv(4096):
                pass  # the challenge, then the end: the oldest was dropped
            last.settimeout(0.2)
            assert last.recv(4096).startswith(b"\x00\x00\x00")  # the newest got its challenge
            client = spawnproxy.connect(server.address, server.authkey, timeout=3)
            assert client.add(2, 2) == 4
        finally:
            for sock in socks:
                sock.close()


def test_a_stalled_tls_handshake_holds_up_nobody(tls_files: dict[str, str]) -> None:
    """Peers stalled in the middle of a TLS handshake do not delay a TLS client: the loop never blocks on one."""
    with spawnproxy.serve(
        ScriptDefinition(SCRIPT), certfile=tls_files["cert"], keyfile=tls_files["key"], handshake_timeout=5.0
    ) as server:
        stalled = []
        try:
            for _ in range(20):
                sock = socket.create_connection(server.address, timeout=5)
                sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03")  # the start of a ClientHello, no more
                stalled.append(sock)
            time.sleep(0.2)
            begin = time.monotonic()
            assert server.connect(timeout=3).add(1, 2) == 3
            took = time.monotonic() - begin
        finally:
            for sock in stalled:
                sock.close()
    assert took < SERVED_WITHIN, f"a TLS client waited {took:.2f} s behind stalled handshakes"


def test_daemons_of_every_interpreter_agree_on_the_handshake(child_python: str) -> None:
    """A daemon of each CPython 3.8-3.13 authenticates this client (its digest, or legacy HMAC-MD5) and
    refuses a wrong key."""
    with spawnproxy.serve(ScriptDefinition(SCRIPT), python_exe=child_python) as server:
        assert server.connect().add(2, 3) == 5
        with pytest.raises(spawnproxy.AuthenticationError, match="refused the key"):
            spawnproxy.connect(server.address, b"not the key, but long enough")


# -- 2. SIGPIPE ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix", "tls"])
def test_a_daemon_with_default_sigpipe_survives_vanishing_peers(transport: str, tmp_path: Path, request: Any) -> None:
    """A served script that restores SIGPIPE's default action outlives 200 peers that send 16 bytes and vanish
    (over TLS, OpenSSL's alert about them goes nowhere)."""
    address: Any = str(tmp_path / "d.sock") if transport == "unix" else None
    tls = {}
    if transport == "tls":
        files = request.getfixturevalue("tls_files")
        tls = {"certfile": files["cert"], "keyfile": files["key"]}
    with spawnproxy.serve(ScriptDefinition(SIG_DFL_SCRIPT), address, **tls) as server:
        family = socket.AF_UNIX if transport == "unix" else socket.AF_INET
        deadline = time.monotonic() + 30
        for _ in range(200):
            assert time.monotonic() < deadline
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.connect(server.address)
                sock.sendall(_frame(b"v" * 12))
        time.sleep(0.3)
        assert server.is_alive(), "the daemon died (SIGPIPE)"
        assert server.connect().add(1, 2) == 3


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_client_with_default_sigpipe_gets_daemon_died(transport: str, tmp_path: Path) -> None:
    """A client that restores SIGPIPE's default action raises DaemonDiedError, mid-call and idle, when
    its daemon is killed; it is not killed by the signal."""
    address: Any = str(tmp_path / "d.sock") if transport == "unix" else None
    with spawnproxy.serve(ScriptDefinition(SCRIPT), address) as server:
        where = server.address if isinstance(server.address, str) else "%s:%d" % server.address
        with _sigpipe_client(where, server.authkey.hex()) as client:
            assert client.stdin is not None and client.stdout is not None
            assert client.stdout.readline().strip() == "READY"
            os.kill(server.pid, signal.SIGKILL)
            lines = [client.stdout.readline().strip()]
            client.stdin.write("go\n")
            client.stdin.flush()
            lines += [client.stdout.readline().strip(), client.stdout.readline().strip()]
            code = client.wait(20)
    assert code == 0, f"the client exited with {code} after {lines}"
    assert lines == ["MIDCALL DaemonDiedError", "IDLE DaemonDiedError", "AGAIN DaemonDiedError"]


def test_a_parent_with_default_sigpipe_survives_its_ssh_child(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A parent that restores SIGPIPE's default action gets DaemonDiedError, not death by the signal, when it
    writes to the pipe of an ssh process that has gone."""
    from tests.test_ssh import SSHD, Sshd

    if not os.path.exists(SSHD) or os.geteuid() != 0:
        pytest.skip("needs OpenSSH's sshd and root (see tests/test_ssh.py)")
    sshd = Sshd(tmp_path_factory.mktemp("sshd"))
    try:
        url = sshd.url(os.path.realpath(sys.executable))
        with _sigpipe_client("ssh", url, json.dumps(sshd.options)) as parent:
            assert parent.stdin is not None and parent.stdout is not None
            ready = parent.stdout.readline().split()
            assert ready[:1] == ["READY"], ready
            os.kill(int(ready[1]), signal.SIGKILL)  # the local ssh process: its stdin pipe has no reader now
            time.sleep(0.3)
            parent.stdin.write("go\n")
            parent.stdin.flush()
            lines = [parent.stdout.readline().strip(), parent.stdout.readline().strip()]
            code = parent.wait(20)
    finally:
        sshd.close()
    assert code == 0, f"the parent exited with {code} after {lines}"
    assert lines == ["IDLE DaemonDiedError", "AGAIN DaemonDiedError"]


def test_a_daemon_out_of_file_descriptors_refuses_gracefully() -> None:
    """A daemon whose hard limit is 128 open files, under 300 idle peers: it stays up, notes that it ran out,
    drops the peers pending longest and still serves a client."""
    code = (
        "import resource, sys, spawnproxy\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))\n"
        f"server = spawnproxy.serve(spawnproxy.ScriptDefinition({SCRIPT!r}), handshake_timeout=10.0)\n"
        "print(server.address[1], server.authkey.hex(), server.pid, flush=True)\n"
        "sys.stdin.readline()\n"
        "server.terminate()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
    )
    socks: list[socket.socket] = []
    try:
        assert parent.stdin is not None and parent.stdout is not None and parent.stderr is not None
        port, key, pid = parent.stdout.readline().split()
        address = ("127.0.0.1", int(port))
        for _ in range(300):
            socks.append(socket.create_connection(address, timeout=5))
        time.sleep(0.5)
        daemon = psutil.Process(int(pid))
        assert daemon.num_fds() <= 128
        begin = time.monotonic()
        client = spawnproxy.connect(address, bytes.fromhex(key), max_attempts=None, timeout=3)
        assert client.add(1, 2) == 3
        took = time.monotonic() - begin
        spawnproxy.daemon_of(client).terminate()
        assert daemon.is_running() and daemon.status() != psutil.STATUS_ZOMBIE
        parent.stdin.write("stop\n")
        parent.stdin.flush()
        _, err = parent.communicate(timeout=20)
    finally:
        for sock in socks:
            sock.close()
        parent.kill()
        parent.wait()
    assert "out of file descriptors" in err
    assert took < SERVED_WITHIN, f"served after {took:.2f} s"


# -- 3. refused peers in the log -------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.slow
def test_refused_peers_are_summarised_in_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    """3,000 refused peers add less than 64 KiB to the daemon's log, and the summaries count every one."""
    logger = logging.getLogger("tests.dos.daemon")
    logger.propagate = False
    handler = _Collect()
    logger.addHandler(handler)
    try:
        with spawnproxy.serve(ScriptDefinition(SCRIPT), logger=logger) as server:
            assert server.connect().add(1, 1) == 2

            def refused(count: int) -> None:
                deadline = time.monotonic() + 60
                for i in range(count):
                    if time.monotonic() > deadline:
                        return
                    with socket.create_connection(server.address, timeout=5) as sock:
                        if i % 3:
                            sock.recv(4096)  # the challenge
                            sock.sendall(_frame(b"\x00" * 16))  # a wrong answer
                        else:
                            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                        try:
                            while sock.recv(4096):
                                pass
                        except OSError:
                            pass

            workers = [threading.Thread(target=refused, args=(375,)) for _ in range(8)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(70)
            time.sleep(1.5)  # the last summary
            assert server.connect().add(2, 2) == 4
        logged = [line for line in handler.lines if "refused" in line]
        size = sum(len(line) + 1 for line in handler.lines)
        counted = 0
        for line in logged:
            more = re.search(r"refused (\d+) more", line)
            counted += int(more.group(1)) if more else 1
        with capsys.disabled():
            print(f"\n3000 refused peers: {len(handler.lines)} log lines, {size} bytes; counted {counted}")
        assert size < 64 * 1024, f"{size} bytes of log for 3,000 refused peers"
        assert counted == 3000, logged[-5:]
    finally:
        logger.removeHandler(handler)


def test_refusal_summaries_count_every_peer_at_a_line_a_second_per_kind() -> None:
    """The first refusal of a kind is noted in full, the rest of its second as one counted line, then
    the kind rests until a quiet second has passed."""
    from spawnproxy._child.listener import Refusals

    lines: list[str] = []
    refusals = Refusals(lines.append)
    for i in range(1000):  # 1,000 refusals of two kinds over 2.5 s
        now = 100.0 + i * 0.0025
        refusals.add("wrong key" if i % 2 else "timeout", f"127.0.0.1:{i}", None, now)
        refusals.flush(now)
    refusals.flush(103.0)
    refusals.flush(104.5)
    assert len(lines) <= 2 * 4, lines
    counted = sum(int(m.group(1)) if (m := re.search(r"refused (\d+) more", line)) else 1 for line in lines)
    assert counted == 1000
    assert lines[0] == "refused a client from 127.0.0.1:0: timeout"
    assert re.fullmatch(
        r"refused \d+ more clients \(wrong key\) since \d\d:\d\d:\d\d, the last from 127\.0\.0\.1:\d+", lines[-1]
    )
    refusals.add("timeout", "127.0.0.1:1", "the handshake took too long", 110.0)
    assert lines[-1] == "refused a client from 127.0.0.1:1: the handshake took too long"
    assert refusals.due() is None
