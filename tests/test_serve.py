"""serve / connect (SPEC §5): SPEC §3 over the network, many clients, their references, lifetime."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import spawnproxy
from spawnproxy import ScriptDefinition
from tests.conftest import run_python
from tests.test_operators import OPERATIONS, SAMPLES, _outcome

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import os, sys, threading, time, weakref
from fractions import Fraction

data = []
live = weakref.WeakSet()

class Thing:
    '''Only the daemon knows this class: it comes back by reference.'''
    def __init__(self, n):
        self.n = n
    def double(self):
        return self.n * 2

def make(n):
    thing = Thing(n)
    live.add(thing)
    return thing

def add(a, b=0):
    '''Add two numbers.'''
    return a + b

def apply(func, *args):
    return func(*args)

def fail(message):
    raise KeyError(message)

def fail_custom():
    class Private(Exception):
        pass
    raise Private("only the daemon knows")

def identity(x):
    return x

def where():
    return os.getpid(), threading.current_thread().name

def numbers(n):
    return (i for i in range(n))

def nap(seconds):
    time.sleep(seconds)
    return seconds

lock = threading.Lock()
"""
SAMPLE_SCRIPT = "from fractions import Fraction\n" + "".join(
    f"s_{name} = {value!r}\n" for name, value in SAMPLES.items()
)

TRANSPORTS = ["tcp", "unix", "tls"]
KEY = b"a key of 16 bytes or more"


def _serve(transport: str, tmp_path: Any, tls_files: dict[str, str] | None, script: str = SCRIPT) -> spawnproxy.Server:
    if transport == "unix":
        return spawnproxy.serve(ScriptDefinition(script), str(tmp_path / "daemon.sock"))
    if transport == "tls":
        assert tls_files is not None
        return spawnproxy.serve(ScriptDefinition(script), certfile=tls_files["cert"], keyfile=tls_files["key"])
    return spawnproxy.serve(ScriptDefinition(script))


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(transport: str, tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[spawnproxy.Server]:
    tls = request.getfixturevalue("tls_files") if transport == "tls" else None
    served = _serve(transport, tmp_path, tls)
    yield served
    served.terminate()


@pytest.fixture
def remote(server: spawnproxy.Server) -> Any:
    return server.connect()


# -- SPEC §3 over a network connection --------------------------------------------------------


def test_attributes_calls_and_values(remote: Any) -> None:
    """First-level attributes are proxies, results are values, methods run in the daemon."""
    assert isinstance(remote.data, spawnproxy.ObjectProxy)
    remote.data.append(4)
    assert remote.data == [4]
    assert remote.add(2, b=3) == 5
    assert type(remote.add(1)) is int
    assert remote.where()[0] == spawnproxy.daemon_of(remote).pid
    remote.value = 12
    assert remote.value == 12
    del remote.value
    assert "value" not in dir(remote)
    assert "add" in dir(remote)
    assert remote.add.__doc__ == "Add two numbers."
    assert str(__import__("inspect").signature(remote.add)) == "(a, b=0)"


def test_arguments_by_pickle_and_dill(remote: Any) -> None:
    """Lambdas and closures travel through dill; a proxy comes back as the real object."""
    assert remote.apply(lambda x: x + 1, 41) == 42
    offset = 10
    assert remote.apply(lambda x: x + offset, 1) == 11
    assert remote.identity(remote.data) == []
    assert remote.apply(lambda lst: lst is not None, remote.data) is True


def test_results_by_reference_and_their_release(remote: Any, server: spawnproxy.Server) -> None:
    """A result only the daemon can hold is a proxy; collecting it releases it in the daemon."""
    thing = remote.make(21)
    assert isinstance(thing, spawnproxy.ObjectProxy)
    assert thing.double() == 42
    assert remote.live.__len__() == 1
    del thing
    gc.collect()
    remote.add(0)  # the release rides along the next request
    assert remote.live.__len__() == 0


def test_exceptions_keep_their_type(remote: Any) -> None:
    """A remote exception is raised with its type and remote frames; an unknown type is RemoteError."""
    with pytest.raises(KeyError, match="boom") as info:
        remote.fail("boom")
    assert "fail" in "".join(__import__("traceback").format_tb(info.value.__traceback__))
    with pytest.raises(spawnproxy.RemoteError, match="only the daemon knows"):
        remote.fail_custom()
    assert remote.add(1, 1) == 2  # still usable


def test_iterators_context_managers_and_timeouts(remote: Any) -> None:
    """Remote generators iterate, remote locks work with `with`, call timeouts apply."""
    assert list(remote.numbers(4)) == [0, 1, 2, 3]
    with remote.lock:
        assert remote.lock.locked()
    assert not remote.lock.locked()
    with spawnproxy.call_timeout(0.1), pytest.raises(spawnproxy.CallTimeoutError):
        remote.nap(0.4)
    assert remote.add(2, 2) == 4  # the late answer is dropped, the connection stays usable


def test_threads_share_a_connection(remote: Any) -> None:
    """Several threads call through one connection at once, each getting its own answer."""
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(100):
                assert remote.add(i, k) == i + k
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_large_payloads(remote: Any) -> None:
    """Large frames travel both ways (in pieces over TCP and TLS, out of band over a Unix socket)."""
    blob = os.urandom(3 << 20)
    assert remote.identity(blob) == blob
    # Out-of-band buffers: in a memfd over a Unix socket, inside the stream over TCP and TLS.
    view = remote.identity(memoryview(bytearray(blob)).cast("I"))
    assert (type(view), view.format, view.tobytes()) == (memoryview, "I", blob)
    assert type(remote.identity(bytearray(blob))) is bytearray


@pytest.fixture(scope="module")
def sample_daemons(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    servers = {"tcp": _serve("tcp", None, None, SAMPLE_SCRIPT)}
    try:
        tls = request.getfixturevalue("tls_files")
    except pytest.skip.Exception:
        tls = None
    if tls is not None:
        servers["tls"] = _serve("tls", None, tls, SAMPLE_SCRIPT)
    yield {name: s.connect() for name, s in servers.items()}
    for s in servers.values():
        s.terminate()


@pytest.mark.parametrize("kind", ["tcp", "tls"])
@pytest.mark.parametrize("sample", list(SAMPLES))
def test_operators_match_local(sample_daemons: dict[str, Any], kind: str, sample: str) -> None:
    """The operator table of test_operators, on proxies reached over TCP and TLS."""
    if kind not in sample_daemons:
        pytest.skip("no certificates for TLS")
    remote = getattr(sample_daemons[kind], f"s_{sample}")
    for name, func in OPERATIONS.items():
        local = _outcome(func, SAMPLES[sample])
        got = _outcome(func, remote)
        if name == "hash" and local[0] == "value":
            assert got[0] == "value"
            continue
        assert got[0] == local[0], f"{name} on {sample}: local {local}, remote {got}"
        if local[0] == "value":
            assert got[1] == local[1], f"{name} on {sample}"


# -- many clients, each with its own references -----------------------------------------------------


def test_clients_share_the_root_and_keep_their_own_references(server: spawnproxy.Server) -> None:
    """Two clients see the same objects; a reference one holds survives the other leaving."""
    first, second = server.connect(), server.connect()
    first.data.append("x")
    assert second.data == ["x"]
    kept = first.make(1)
    dropped = second.make(2)
    assert first.live.__len__() == 2
    second.terminate_daemon()  # closes the second client's connection only
    del dropped
    deadline = time.monotonic() + 2
    while first.live.__len__() != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.live.__len__() == 1
    assert kept.double() == 2
    with pytest.raises(spawnproxy.DaemonTerminatedError):
        second.add(1)


def test_references_released_when_a_client_is_killed(server: spawnproxy.Server, transport: str) -> None:
    """A client killed with SIGKILL loses its references in the daemon, which goes on serving."""
    watcher = server.connect()
    code = (
        "import spawnproxy, sys, time, ssl\n"
        f"address = {server.address!r}\n"
        f"ctx = None if {server.certfile!r} is None else spawnproxy._client.client_context({server.certfile!r}, pinned=True)\n"
        f"root = spawnproxy.connect(address, {server.authkey!r}, ssl_context=ctx)\n"
        "things = [root.make(i) for i in range(5)]\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        assert watcher.live.__len__() == 5
        client.send_signal(signal.SIGKILL)
        client.wait()
        deadline = time.monotonic() + 2
        while watcher.live.__len__() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watcher.live.__len__() == 0
        assert watcher.add(1, 1) == 2
    finally:
        client.kill()
        client.wait()
        if client.stdout:
            client.stdout.close()


def test_terminate_ends_the_daemon_for_every_client(server: spawnproxy.Server) -> None:
    """The handle's terminate() ends the daemon; its clients then raise DaemonDiedError at once."""
    client = server.connect()
    pid = server.pid
    server.terminate()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    started = time.monotonic()
    with pytest.raises(spawnproxy.DaemonDiedError):
        client.add(1)
    assert time.monotonic() - started < 1.5


def test_client_can_stop_the_daemon(server: spawnproxy.Server) -> None:
    """stop_daemon() from a client ends the daemon itself (what `spawnproxy stop` does without a pid)."""
    client = server.connect()
    spawnproxy.daemon_of(client).stop_daemon()  # type: ignore[attr-defined]
    assert server.wait(5)


# -- connecting ----------------------------------------------------------------------------------------


def test_connect_waits_for_the_daemon_with_max_attempts_none(tmp_path: Any) -> None:
    """max_attempts=None retries until the daemon listens."""
    path = str(tmp_path / "later.sock")
    key = b"a key known in advance"
    result: dict[str, Any] = {}

    def client() -> None:
        try:
            root = spawnproxy.connect(path, key, max_attempts=None)
            result["value"] = root.add(20, 22)
            root.terminate_daemon()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.5)
    with spawnproxy.serve(ScriptDefinition(SCRIPT), path, key):
        thread.join(10)
    assert result == {"value": 42}


def test_nothing_listening_is_a_clear_error_at_once(tmp_path: Any) -> None:
    """Without retries, a missing daemon is a ConnectError at once."""
    started = time.monotonic()
    with pytest.raises(spawnproxy.ConnectError, match="nothing listens"):
        spawnproxy.connect(str(tmp_path / "none.sock"), KEY)
    with pytest.raises(spawnproxy.ConnectError, match="nothing listens"):
        spawnproxy.connect(("127.0.0.1", 1), KEY, max_attempts=2, retry_interval=0.05)
    assert time.monotonic() - started < 1


def test_bad_retry_options_are_refused_before_connecting() -> None:
    """max_attempts and retry_interval that make no sense are a ValueError naming them."""
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_attempts"):
            spawnproxy.connect(("127.0.0.1", 1), KEY, max_attempts=bad)
    for bad in (0, -0.1, "1", True):
        with pytest.raises(ValueError, match="retry_interval"):
            spawnproxy.connect(("127.0.0.1", 1), KEY, retry_interval=bad)


def test_only_a_listening_child_runs_the_network_side() -> None:
    """The network side (`_child.network`) is shipped to every child but run only in one told to listen (start-up work saved)."""
    probe = "import sys\ndef loaded():\n    return '_spawnproxy_child.network' in sys.modules\n"
    local = spawnproxy.run_script(probe)
    try:
        assert local.loaded() is False
    finally:
        local.terminate_daemon()
    with spawnproxy.serve(ScriptDefinition(probe)) as server:
        assert server.proxy.loaded() is True
        assert server.connect().loaded() is True


def test_bad_arguments_are_refused() -> None:
    """No key is no connection; a busy port is a DaemonStartError that names it."""
    with pytest.raises(TypeError, match="authkey"):
        spawnproxy.connect(("127.0.0.1", 1))
    with pytest.raises(ValueError, match="unauthenticated"):
        spawnproxy.serve(ScriptDefinition("x = 1"), authkey=b"")
    with pytest.raises(TypeError, match="address"):
        spawnproxy.serve(ScriptDefinition("x = 1"), 1234)
    with (
        spawnproxy.serve(ScriptDefinition("x = 1")) as first,
        pytest.raises(spawnproxy.DaemonStartError, match="could not listen"),
    ):
        spawnproxy.serve(ScriptDefinition("x = 1"), first.address)


def test_random_key_and_private_state_file(tmp_path: Any) -> None:
    """With no key a random one is made; the state file is readable by its owner only."""
    state = tmp_path / "state.json"
    with spawnproxy.serve(ScriptDefinition("x = 1"), state_file=state) as server:
        assert len(server.authkey) >= 32
        assert (state.stat().st_mode & 0o777) == 0o600
        root = spawnproxy.connect(state_file=state)
        assert root.x == 1
    assert not state.exists()


# -- detached daemons ---------------------------------------------------------------------------------


def test_detached_daemon_outlives_its_starter(tmp_path: Any) -> None:
    """A daemon started with detach=True keeps serving after its script exits; a later one connects."""
    state = tmp_path / "daemon.json"
    started = run_python(
        "import spawnproxy\n"
        f"server = spawnproxy.serve(spawnproxy.ScriptDefinition('counter = []'), detach=True, state_file={str(state)!r})\n"
        "print(server.pid, server.supervisor)\n"
    )
    assert started.returncode == 0, started.stderr
    pid, supervisor = map(int, started.stdout.split())
    try:
        assert (state.stat().st_mode & 0o777) == 0o600
        assert psutil.pid_exists(pid)
        root = spawnproxy.connect(state_file=state)
        root.counter.append(1)
        again = spawnproxy.connect(state_file=state)
        assert again.counter == [1]
        assert pid not in {p.pid for p in psutil.Process().children(recursive=True)}
    finally:
        spawnproxy._detach.stop_pid(supervisor)
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the daemon outlived its supervisor"
        time.sleep(0.05)
    assert not state.exists()
    with pytest.raises(spawnproxy.DaemonDiedError):
        root.counter.append(2)


def test_detached_handle_terminates(tmp_path: Any) -> None:
    """The handle of a detached daemon ends it; a failing definition is a DaemonStartError."""
    state = tmp_path / "d.json"
    server = spawnproxy.serve(ScriptDefinition("x = 2"), detach=True, state_file=state)
    try:
        assert server.connect().x == 2
        assert server.detached and server.is_alive()
    finally:
        server.terminate()
    assert not server.is_alive()
    with pytest.raises(spawnproxy.DaemonStartError, match="ZeroDivisionError"):
        spawnproxy.serve(ScriptDefinition("1 / 0"), detach=True, state_file=state)
