"""python_exe="ssh://...": children on an SSH host, here a private sshd on 127.0.0.1 with generated keys."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spawnproxy
from tests.conftest import child_interpreters, gone

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
    remote.shout("done")
    daemon = spawnproxy.daemon_of(remote)
    # One thread forwards both streams in order: once "err: done" is in the logs, the lines before
    # it have been written out.  capfd is read once, after: a readouterr while another thread
    # writes can lose what lands between its read and its reset.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "err: done" not in daemon.logs:
        time.sleep(0.02)
    captured = capfd.readouterr()
    out, err = captured.out, captured.err
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


def test_log_records_keep_their_level_through_ssh(sshd: Sshd) -> None:
    """A remote child's logging records arrive as records, with their level, name and exception text."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tests.ssh.records")
    logger.propagate = False
    logger.addHandler(handler)
    script = "import logging\ndef fail():\n    try:\n        1 / 0\n    except ZeroDivisionError:\n"
    script += "        logging.getLogger('remote').exception('remote failure')\n"
    mod = spawnproxy.run_script(
        script, python_exe=sshd.url(os.path.realpath(os.sys.executable)), ssh_options=sshd.options, logger=logger
    )
    try:
        mod.fail()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("remote failure" in r.getMessage() for r in records):
            time.sleep(0.02)
        found = [r for r in records if "remote failure" in r.getMessage()]  # ssh may warn of its own
        assert [(r.name, r.levelno, r.getMessage()) for r in found] == [
            ("tests.ssh.records.remote", logging.ERROR, "remote failure")
        ]
        assert "ZeroDivisionError" in (found[0].exc_text or "")
    finally:
        mod.terminate_daemon()
        logger.removeHandler(handler)


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
    assert gone(remote_pid, 3), "the remote child outlived its connection"


def test_terminate_ends_both_sides(remote: Any) -> None:
    """terminate() ends the remote child and reaps the local ssh process."""
    handle = spawnproxy.daemon_of(remote)
    remote_pid = handle._process.hello["pid"]
    assert handle.terminate() == 0
    assert gone(remote_pid, 3) and gone(handle.pid, 1)
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


# -- what the remote host is given: env names, quoted values, its own paths, no import from its cwd ---------------


@pytest.mark.parametrize("key", ["--split-string", "-S", "1ABC", "A-B", "A B", "A=B"])
def test_env_names_are_checked_before_ssh_starts(sshd: Sshd, tmp_path: Path, key: str) -> None:
    """An env key that is not a variable name (the remote `env` would take it as an option): ValueError, no ssh run."""
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match=f"env key {re.escape(repr(key))}") as caught:
        spawnproxy.run_script(
            "x = 1",
            python_exe=sshd.url(os.path.realpath(os.sys.executable)),
            ssh_options=sshd.options,
            env={key: f"sh -c 'touch {marker}' #"},
        )
    assert "\n" not in str(caught.value)
    assert not marker.exists(), "the remote host ran a command hidden in an env key"


def test_env_values_reach_the_remote_child_verbatim(sshd: Sshd) -> None:
    """env values with quotes, $(...), backquotes, ;, # and newlines arrive as given: quoted, never run."""
    values = {
        "SP_QUOTES": 'it\'s "quoted"',
        "SP_SUBST": "$(echo no) `echo no` ${HOME}",
        "SP_SHELL": "a; b && c | d # e",
        "SP_LINES": "one\ntwo\n",
        "SP_DASH": "--split-string=sh -c 'echo no'",
        "SP_EMPTY": "",
        "SP_TEXT": "été ☃",
    }
    mod = spawnproxy.run_script(
        "import os", python_exe=sshd.url(os.path.realpath(os.sys.executable)), ssh_options=sshd.options, env=values
    )
    try:
        assert {name: mod.os.environ.get(name) for name in values} == values
    finally:
        mod.terminate_daemon()


def _can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


REMOTE_PATHS_PARENT = """
import json, os, sys
import spawnproxy
folder, url, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
seen_here = os.path.exists(os.path.join(folder, "remote_only.py"))
with open(os.path.join(folder, "local_only.py"), "w") as f:
    f.write("WHERE = 'here'\\n")
mod = spawnproxy.run_module(
    "remote_only", module_path=os.path.join(folder, "remote_only.py"), python_exe=url, ssh_options=options, cwd=folder
)
report = {"seen_here": seen_here, "where": mod.WHERE + "", "listing": sorted(mod.os.listdir("."))}
mod.terminate_daemon()
try:
    spawnproxy.run_module("local_only", module_path=os.path.join(folder, "local_only.py"), python_exe=url,
                          ssh_options=options)
except spawnproxy.DaemonStartError as exc:
    report["local_only"] = str(exc)
local_dir = os.path.join(folder, "local_dir")
os.mkdir(local_dir)
try:
    spawnproxy.run_script("x = 1", python_exe=url, ssh_options=options, cwd=local_dir)
except spawnproxy.DaemonStartError as exc:
    report["local_cwd"] = str(exc)
print(json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_module_path_and_cwd_are_paths_of_the_host(sshd: Sshd, tmp_path: Path) -> None:
    """A module_path and cwd that exist only on the ssh host work; one that exists only here is the host's error.

    The host is this machine, so the parent runs in a mount namespace of its own where a tmpfs
    hides the folder that the host (sshd, outside that namespace) sees, and shows a file there
    that the host cannot see.
    """
    if not _can_unshare_mounts():
        pytest.skip("needs `unshare -m` (root, or CAP_SYS_ADMIN) to give the parent a view of its own")
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "remote_only.py").write_text("import os\nWHERE = 'on the host'\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    import json

    done = subprocess.run(
        [
            "unshare", "-m", "sh", "-c", 'mount -t tmpfs spawnproxy-test "$1" && exec "$2" -c "$3" "$1" "$4" "$5"',
            "sh", str(folder), os.sys.executable, REMOTE_PATHS_PARENT,
            sshd.url(os.path.realpath(os.sys.executable)), json.dumps(sshd.options),
        ],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["seen_here"] is False  # the parent cannot see the host's file...
    assert report["where"] == "on the host"  # ...and the host loaded it, in that folder
    assert "remote_only.py" in report["listing"] and "local_only.py" not in report["listing"]  # cwd: the host's
    assert "local_only.py' does not exist in the child" in report["local_only"]
    assert report["local_cwd"].startswith(f"cwd '{folder / 'local_dir'}' cannot be the working directory")


def test_ssh_child_imports_nothing_from_its_working_directory(sshd: Sshd, tmp_path: Path) -> None:
    """A remote interpreter started in a directory of planted stdlib modules (and given it as cwd) imports none."""
    from tests.test_child_paths import plant

    folder = tmp_path / "hostile"
    folder.mkdir()
    marker = tmp_path / "imported.txt"
    plant(folder, marker)
    # The "interpreter" the host runs starts Python in that directory, as a login shell starts it in $HOME.
    wrapper = tmp_path / "python-in-hostile-dir"
    wrapper.write_text(f'#!/bin/sh\ncd {shlex.quote(str(folder))} && exec {shlex.quote(os.sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    mod = spawnproxy.run_script(
        "import colorsys\nfound = colorsys.__file__", python_exe=sshd.url(str(wrapper)), ssh_options=sshd.options,
        cwd=folder,
    )  # fmt: skip
    try:
        assert str(folder) not in str(mod.found)
    finally:
        mod.terminate_daemon()
    assert not marker.exists(), marker.read_text()


def test_unloadable_argument_fails_that_call_alone(
    remote: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An argument the ssh child cannot load raises SerializationError; the child goes on serving."""
    (tmp_path / "sp_parent_only_ssh.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import sp_parent_only_ssh  # type: ignore[import-not-found]

    try:
        with pytest.raises(spawnproxy.SerializationError, match="No module named 'sp_parent_only_ssh'"):
            remote.add(sp_parent_only_ssh.Thing(), 1)
        assert remote.add(2, 3) == 5
    finally:
        monkeypatch.delitem(os.sys.modules, "sp_parent_only_ssh", raising=False)


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
