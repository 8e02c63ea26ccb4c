"""python_exe="ssh://...": children on an SSH host, here a private sshd on 127.0.0.1 with generated keys."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import spawnproxy
from tests.conftest import child_interpreters

pytestmark = pytest.mark.timeout(60)

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    """A private OpenSSH server: its URL prefix and the client options that reach it."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(directory / "host_key")], check=True, timeout=30)
        subprocess.run([*keygen, "-f", str(directory / "user_key")], check=True, timeout=30)
        shutil.copy(directory / "user_key.pub", directory / "authorized_keys")
        config = directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host_key'}\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            f"PidFile {directory / 'sshd.pid'}\nLogLevel ERROR\n"
        )
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
        self.log = open(directory / "sshd.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=self.log)
        self.user = os.environ.get("USER") or __import__("getpass").getuser()
        self.options = [
            "-i", str(directory / "user_key"),
            "-o", f"UserKnownHostsFile={directory / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(directory / 'sshd.log').read_text()}") from None
                time.sleep(0.05)

    def url(self, python: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{python}"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not os.path.exists(SSHD) or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH (openssh-server and openssh-client) is not installed; .ci/run installs it with apt")
    if os.geteuid() != 0:
        pytest.skip("a private sshd that accepts logins needs root here (privilege separation)")
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.close()


@pytest.fixture
def remote(sshd: Sshd) -> Iterator[Any]:
    mod = spawnproxy.run_script(
        SCRIPT, python_exe=sshd.url(os.path.realpath(os.sys.executable)), ssh_options=sshd.options
    )
    yield mod
    mod.terminate_daemon()


SCRIPT = """
import os, sys, time
print("loaded on the host")
def add(a, b):
    return a + b
def shout(text):
    print(text)
    print("err: " + text, file=sys.stderr)
def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass
def fail():
    raise ValueError("remote trouble")
"""


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_calls_values_and_exceptions(remote: Any) -> None:
    """SPEC §3 through ssh: values, proxies, lambdas, remote exceptions with their type."""
    assert remote.add(2, 3) == 5
    assert remote.os.getpid() == spawnproxy.daemon_of(remote)._process.hello["pid"]
    with pytest.raises(ValueError, match="remote trouble"):
        remote.fail()
    assert remote.add([1], [2]) == [1, 2]
    blob = os.urandom(2 << 20)
    assert remote.add(blob, b"") == blob


def test_output_reaches_stdout_and_stderr_separately(remote: Any, capfd: pytest.CaptureFixture[str]) -> None:
    """The remote child's stdout and stderr arrive on the parent's, line by line, and in .logs."""
    remote.shout("hello")
    deadline = time.monotonic() + 5
    out = err = ""
    while time.monotonic() < deadline:
        captured = capfd.readouterr()
        out, err = out + captured.out, err + captured.err
        if "hello" in out and "err: hello" in err:
            break
        time.sleep(0.05)
    assert "hello" in out and "err: hello" not in out
    assert "err: hello" in err
    assert "loaded on the host" in spawnproxy.daemon_of(remote).logs


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_another_python_version_on_the_host(sshd: Sshd, version: str) -> None:
    """The host's interpreter may be another CPython: sources travel, nothing is installed there."""
    exe = child_interpreters().get(version)
    if exe is None:
        pytest.skip(f"CPython {version} is not installed here")
    mod = spawnproxy.run_script(SCRIPT, python_exe=sshd.url(exe), ssh_options=sshd.options)
    try:
        assert tuple(spawnproxy.daemon_of(mod).python_version[:2]) == tuple(map(int, version.split(".")))
        assert mod.add(1, 2) == 3
    finally:
        mod.terminate_daemon()


def test_remote_child_ends_when_the_connection_drops_even_while_busy(remote: Any) -> None:
    """Killing the local ssh process ends the busy remote child, and the call fails at once."""
    handle = spawnproxy.daemon_of(remote)
    remote_pid = handle._process.hello["pid"]
    import threading

    errors: list[BaseException] = []

    def busy() -> None:
        try:
            remote.spin(30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=busy)
    thread.start()
    time.sleep(0.3)
    os.kill(handle.pid, signal.SIGKILL)  # the local ssh: the connection is gone
    thread.join(5)
    assert errors and isinstance(errors[0], spawnproxy.DaemonDiedError)
    assert _gone(remote_pid, 3), "the remote child outlived its connection"


def test_terminate_ends_both_sides(remote: Any) -> None:
    """terminate() ends the remote child and reaps the local ssh process."""
    handle = spawnproxy.daemon_of(remote)
    remote_pid = handle._process.hello["pid"]
    assert handle.terminate() == 0
    assert _gone(remote_pid, 3) and _gone(handle.pid, 1)
    with pytest.raises(spawnproxy.DaemonTerminatedError):
        remote.add(1, 1)


def test_start_errors_are_clear(sshd: Sshd) -> None:
    """A missing interpreter, an unreachable host and a malformed URL raise DaemonStartError."""
    with pytest.raises(spawnproxy.DaemonStartError, match=r"(?s)not a usable Python.*No such file"):
        spawnproxy.run_script("x = 1", python_exe=sshd.url("/no/such/python"), ssh_options=sshd.options)
    port = _free_port()
    with pytest.raises(spawnproxy.DaemonStartError, match="could not reach"):
        spawnproxy.run_script("x = 1", python_exe=f"ssh://127.0.0.1:{port}/usr/bin/python3", ssh_options=sshd.options)
    with pytest.raises(spawnproxy.DaemonStartError, match="not an ssh URL"):
        spawnproxy.run_script("x = 1", python_exe="ssh://host-without-path")
    with pytest.raises(TypeError, match="ssh_options"):
        spawnproxy.run_script("x = 1", ssh_options="-v")


def test_options_from_the_environment(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPAWNPROXY_SSH_OPTIONS carries ssh options for every ssh child."""
    import shlex

    monkeypatch.setenv("SPAWNPROXY_SSH_OPTIONS", shlex.join(sshd.options))
    mod = spawnproxy.run_module("json", python_exe=sshd.url(os.path.realpath(os.sys.executable)))
    try:
        assert mod.dumps([1]) == "[1]"
    finally:
        mod.terminate_daemon()


def test_a_dropped_proxy_is_released_on_the_host_while_idle(sshd: Sshd, tmp_path: Path) -> None:
    """Over ssh (pipes, no lanes), a proxy dropped with no call after it is released within 1 s."""
    from tests.test_releases import BOUND, released_within
    from tests.test_releases import SCRIPT as RELEASES

    mod = spawnproxy.run_script(
        RELEASES, python_exe=sshd.url(os.path.realpath(os.sys.executable)), ssh_options=sshd.options
    )
    try:
        proxies = [mod.make(str(tmp_path / "released"))]
        assert released_within(tmp_path / "released", proxies.clear) < BOUND
    finally:
        mod.terminate_daemon()
