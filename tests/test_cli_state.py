"""State files and logs of daemons (issue 15, items 3, 4, 6): private, per name, never trusted if planted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spawnproxy
from tests.conftest import run_python, wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("private_state_home")]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "def add(a, b):\n    return a + b\nprint('calc ready')\n"
NEIGHBOUR = 65534  # nobody: the uid a planted file belongs to
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's file needs root")


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "spawnproxy", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], status: int = 1) -> str:
    """The single line a failed command wrote to stderr (asserting there is exactly one)."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def calc(tmp_path: Path) -> Path:
    (tmp_path / "calc.py").write_text(SCRIPT)
    return tmp_path


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[socket.socket]:
    """A TCP socket on loopback that the test owns: a planted state file may point here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of this user, unrelated to any daemon, whose command line says "spawnproxy"."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "spawnproxy", "serve"])
    yield proc
    proc.kill()
    proc.wait()


def nothing_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def plant(path: Path, state: dict[str, object], mode: int = 0o600, uid: int | None = None) -> None:
    path.write_text(json.dumps(state))
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, uid)


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


# -- where state lives -------------------------------------------------------------------------------


def test_default_state_is_private_and_found_from_any_directory(calc: Path, private_state_home: str) -> None:
    """With no flags the state and log go to $XDG_RUNTIME_DIR/spawnproxy (0700), and any directory finds them."""
    started = cli("serve", "calc.py", "--detach", cwd=calc)
    assert started.returncode == 0, started.stderr
    directory = Path(private_state_home) / "spawnproxy"
    state, log = directory / "default.json", directory / "default.log"
    elsewhere = calc / "elsewhere"
    elsewhere.mkdir()
    try:
        assert not (calc / "spawnproxy.json").exists() and not (calc / "spawnproxy.json.log").exists()
        assert (directory.stat().st_mode & 0o777) == 0o700
        assert (state.stat().st_mode & 0o777) == 0o600 and (log.stat().st_mode & 0o777) == 0o600
        assert str(state) in started.stdout and str(log) in started.stdout
        called = cli("call", "add", "2", "40", cwd=elsewhere)
        assert called.stdout.strip() == "42", called.stderr
    finally:
        stopped = cli("stop", cwd=elsewhere)
    assert stopped.returncode == 0, stopped.stderr
    assert not state.exists()
    assert "calc ready" in log.read_text()


@pytest.mark.slow
def test_two_names_side_by_side(tmp_path: Path) -> None:
    """--name gives each daemon its own state: two run side by side, and each is reached and stopped alone."""
    for name in ("one", "two"):
        (tmp_path / f"{name}.py").write_text(f"def who():\n    return {name!r}\n")
        started = cli("serve", f"{name}.py", "--detach", "--name", name, cwd=tmp_path)
        assert started.returncode == 0, started.stderr
    try:
        for name in ("one", "two"):
            called = cli("call", "who", "--name", name, cwd=tmp_path)
            assert called.stdout.strip() == repr(name), called.stderr
        assert cli("stop", "--name", "one", cwd=tmp_path).returncode == 0
        assert cli("call", "who", "--name", "two", cwd=tmp_path).stdout.strip() == "'two'"
        assert "no state file" in one_line_error(cli("call", "who", "--name", "one", cwd=tmp_path))
    finally:
        cli("stop", "--name", "one", cwd=tmp_path)
        stopped = cli("stop", "--name", "two", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr


def test_state_falls_back_to_a_private_state_home(calc: Path, tmp_path: Path) -> None:
    """Without a private runtime directory the state goes to ~/.local/state/spawnproxy (0700); a shared one is refused."""
    home = tmp_path / "home"
    home.mkdir()
    runtime = tmp_path / "shared-runtime"
    runtime.mkdir(mode=0o755)
    runtime.chmod(0o755)  # not private: not used
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_STATE_HOME",)}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    started = cli("serve", "calc.py", "--detach", cwd=calc, env=env)
    assert started.returncode == 0, started.stderr
    directory = home / ".local" / "state" / "spawnproxy"
    try:
        assert (directory / "default.json").exists() and not list(runtime.iterdir())
        assert (directory.stat().st_mode & 0o777) == 0o700
        assert cli("call", "add", "1", "2", cwd=tmp_path, env=env).stdout.strip() == "3"
    finally:
        stopped = cli("stop", cwd=calc, env=env)
    assert stopped.returncode == 0, stopped.stderr
    directory.chmod(0o755)
    refused = one_line_error(cli("connect", cwd=calc, env=env))
    assert str(directory) in refused and "chmod 700" in refused


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "-", "x" * 200])
def test_daemon_names_are_checked(tmp_path: Path, name: str) -> None:
    """A --name that is not a plain file name is a one-line usage error."""
    refused = one_line_error(cli("connect", f"--name={name}", cwd=tmp_path), status=2)
    assert "daemon name" in refused and "unrecognized" not in refused


# -- planted state files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how", ["readable by others", pytest.param("a neighbour's", marks=as_root)]
)  # fmt: skip
def test_planted_state_file_is_refused_before_connecting(
    tmp_path: Path, listening: socket.socket, bystander: subprocess.Popen[bytes], how: str
) -> None:
    """connect, call and stop refuse a state file others can write or read, before connecting or signalling."""
    state = tmp_path / "planted.json"
    planted = {"address": ["127.0.0.1", listening.getsockname()[1]], "authkey": "00" * 32, "pid": bystander.pid}
    if how == "readable by others":
        plant(state, planted, mode=0o644)
    else:
        plant(state, {**planted, "pid_start": start_time(bystander.pid)}, uid=NEIGHBOUR)
    for command in (["connect"], ["call", "add", "1", "2"], ["stop"]):
        refused = one_line_error(cli(*command, "--state-file", str(state), cwd=tmp_path))
        assert "state file" in refused and str(state) in refused, refused
        assert nothing_connected(listening), f"{command[0]} connected to the planted address"
    assert bystander.poll() is None, "stop signalled the pid of a planted state file"
    with pytest.raises(spawnproxy.ConnectError, match="state file"):
        spawnproxy.connect(state_file=state)
    assert nothing_connected(listening)


@pytest.mark.parametrize("recorded", ["no start time", "another start time"])
def test_stop_never_signals_an_unrelated_process(
    tmp_path: Path, bystander: subprocess.Popen[bytes], recorded: str
) -> None:
    """A state file whose pid is some live process named like spawnproxy, and where nothing answers: no signal."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    state = tmp_path / "stale.json"
    content: dict[str, object] = {"address": ["127.0.0.1", port], "authkey": "00" * 32, "pid": bystander.pid}
    if recorded == "another start time":
        content["pid_start"] = start_time(bystander.pid) - 1
    plant(state, content)
    refused = one_line_error(cli("stop", "--state-file", str(state), cwd=tmp_path))
    assert str(bystander.pid) in refused, refused
    time.sleep(0.2)
    assert bystander.poll() is None, "stop signalled a process it had not proven to be the daemon"


def test_stop_signals_the_recorded_process_when_nothing_answers(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    """A daemon that does not answer is stopped by its pid when its start time matches the state file."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tmp_path / "hung.json"
    plant(
        state,
        {"address": ["127.0.0.1", port], "authkey": "00" * 32, "pid": bystander.pid,
         "pid_start": start_time(bystander.pid)},
    )  # fmt: skip
    stopped = cli("stop", "--state-file", str(state), cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert bystander.wait(5) is not None
    assert not state.exists()


# -- logs ---------------------------------------------------------------------------------------------------


def _serve_with_log(calc: Path, log: Path) -> subprocess.CompletedProcess[str]:
    state = calc / "s.json"
    started = cli("serve", "calc.py", "--detach", "--state-file", str(state), "--log-file", str(log), cwd=calc)
    if started.returncode == 0:  # (on a library that follows the planted file: stop what it started)
        cli("stop", "--state-file", str(state), cwd=calc)
    return started


def test_log_file_does_not_follow_a_planted_symlink(calc: Path) -> None:
    """A symbolic link planted where the log goes is refused, and what it points to is left alone."""
    target = calc / "neighbour-reads-this"
    target.write_text("")
    target.chmod(0o600)
    log = calc / "planted.log"
    log.symlink_to(target)
    refused = one_line_error(_serve_with_log(calc, log))
    assert "log file" in refused and "symbolic link" in refused, refused
    assert target.read_text() == ""


@pytest.mark.parametrize(
    "how", ["readable by others", pytest.param("a neighbour's", marks=as_root)]
)  # fmt: skip
def test_log_file_planted_or_shared_is_refused(calc: Path, how: str) -> None:
    """An existing log file that is not the user's, or that others can read, is refused; a new one is 0600."""
    log = calc / "planted.log"
    log.write_text("")
    if how == "readable by others":
        log.chmod(0o644)
    else:
        log.chmod(0o600)
        os.chown(log, NEIGHBOUR, NEIGHBOUR)
    refused = one_line_error(_serve_with_log(calc, log))
    assert "log file" in refused and str(log) in refused, refused
    assert log.read_text() == ""


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:  # (for a moment while it is rotated)
        return ""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_detached_log_is_bounded(tmp_path: Path) -> None:
    """A daemon that writes 8x its log's cap leaves at most the log and one rotated log, the latest lines kept."""
    cap = 256 * 1024
    state, log = tmp_path / "flood.json", tmp_path / "flood.log"
    script = "def flood(n):\n    for i in range(n):\n        print('%08d' % i + 'x' * 92)\n    print('the end')\n"
    started = run_python(
        "import spawnproxy, spawnproxy._detach\n"
        f"spawnproxy._detach.LOG_MAX_BYTES = {cap}\n"
        f"server = spawnproxy.serve(spawnproxy.ScriptDefinition({script!r}), detach=True, state_file={str(state)!r}, "
        f"log_file={str(log)!r})\n"
    )
    assert started.returncode == 0, started.stderr
    try:
        root = spawnproxy.connect(state_file=state)
        root.flood(8 * cap // 100)
        root.terminate_daemon()
        assert wait_until(lambda: "the end" in _text(log), timeout=30), "the last line never reached the log"
        rotated = Path(str(log) + ".1")
        assert rotated.exists() and (rotated.stat().st_mode & 0o777) == 0o600
        assert log.stat().st_size <= cap and rotated.stat().st_size <= cap + 200
    finally:
        stopped = subprocess.run(
            [sys.executable, "-m", "spawnproxy", "stop", "--state-file", str(state)],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr


def test_a_running_daemon_keeps_its_name(calc: Path) -> None:
    """A second serve under a name whose daemon runs, detached or not, is refused; the first one carries on."""
    assert cli("serve", "calc.py", "--detach", cwd=calc).returncode == 0
    try:
        for extra in (["--detach"], []):
            refused = one_line_error(cli("serve", "calc.py", *extra, cwd=calc))
            assert "already runs" in refused, refused
        assert cli("call", "add", "1", "2", cwd=calc).stdout.strip() == "3"
    finally:
        stopped = cli("stop", cwd=calc)
    assert stopped.returncode == 0, stopped.stderr
