"""Errors of the command line (issue 15, item 11): one line on stderr, status 1 (2 for usage), in its own words."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import spawnproxy
from tests.test_cli_state import ROOT, SCRIPT, cli, one_line_error

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("private_state_home")]


@pytest.fixture
def calc(tmp_path: Path) -> Path:
    (tmp_path / "calc.py").write_text(SCRIPT + "import time\ndef nap(seconds):\n    time.sleep(seconds)\n")
    return tmp_path


def test_call_of_a_missing_name_is_one_line(calc: Path) -> None:
    """`call no_such_name` says the daemon has no such attribute, without a traceback."""
    assert cli("serve", "calc.py", "--detach", cwd=calc).returncode == 0
    try:
        missing = one_line_error(cli("call", "no_such_name", cwd=calc))
        assert "no_such_name" in missing and "Traceback" not in missing, missing
        failed = one_line_error(cli("call", "add", "1", "'a'", cwd=calc))
        assert failed.startswith("spawnproxy: error: add(1, 'a') raised TypeError: "), failed
    finally:
        cli("stop", cwd=calc)


def test_failed_start_is_one_line_and_leaves_no_log(tmp_path: Path, private_state_home: str) -> None:
    """A detached start whose script fails says why once, in one line, and leaves no log file behind."""
    (tmp_path / "boom.py").write_text("x = 1\n1 / 0\n")
    failed = one_line_error(cli("serve", "boom.py", "--detach", cwd=tmp_path))
    assert "DaemonStartError" not in failed and "ZeroDivisionError: division by zero" in failed, failed
    assert re.search(r"boom\.py, line 2", failed), failed
    assert not list(tmp_path.glob("*.log")) and not list(Path(private_state_home).glob("spawnproxy/*"))


def test_syntax_error_names_the_served_file(tmp_path: Path) -> None:
    """A syntax error in a served file names that file and line, not an internal script name."""
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\ndef f(:\n    pass\n")
    failed = one_line_error(cli("serve", "bad.py", cwd=tmp_path))
    assert "<spawnproxy-script" not in failed and f"{bad}, line 2" in failed and "SyntaxError" in failed, failed


def test_hints_name_the_flags(tmp_path: Path) -> None:
    """A daemon that is not up yet gets the hint --wait, not the Python option max_attempts=None."""
    key = tmp_path / "key"
    key.write_text("correct horse battery staple")
    key.chmod(0o600)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = one_line_error(cli("connect", "--address", f"127.0.0.1:{port}", "--authkey-file", str(key), cwd=tmp_path))
    assert "--wait" in refused and "max_attempts" not in refused, refused


@pytest.mark.parametrize(
    "args",
    [["bogus"], ["serve", "calc.py", "extra"], ["serve", "json", "extra"], ["call", "--wait", "soon", "add"],
     ["connect", "--address", "127.0.0.1:1"]],
)  # fmt: skip
def test_usage_errors_are_one_line_with_status_2_as_documented(calc: Path, args: list[str]) -> None:
    """A command line that is wrong in itself exits with status 2 and one line, as docs/cli.md says."""
    refused = one_line_error(cli(*args, cwd=calc), status=2)
    assert refused.startswith("spawnproxy") and ": error: " in refused, refused
    assert "status 2" in (ROOT / "docs" / "cli.md").read_text()


@pytest.mark.slow
def test_client_of_a_stopped_daemon_is_told_it_was_stopped(calc: Path) -> None:
    """A call running while `spawnproxy stop` ends its daemon fails saying the daemon was stopped."""
    assert cli("serve", "calc.py", "--detach", cwd=calc).returncode == 0
    env_call = subprocess.Popen(
        [sys.executable, "-m", "spawnproxy", "call", "nap", "30"], cwd=calc, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    try:
        time.sleep(1.0)  # the call is under way
        assert cli("stop", cwd=calc).returncode == 0
        _, err = env_call.communicate(timeout=20)
    finally:
        env_call.kill()
        env_call.wait()
        cli("stop", cwd=calc)
    assert env_call.returncode == 1
    assert "stopped" in err and "ended by itself" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_idle_client_of_a_stopped_daemon_is_told_it_was_stopped(tmp_path: Path, transport: str) -> None:
    """An idle client's next call after its daemon was stopped says so; after a crash, that it ended by itself."""
    address = str(tmp_path / "d.sock") if transport == "unix" else None
    stopped = spawnproxy.serve(spawnproxy.ScriptDefinition("def f():\n    return 1\n"), address)
    crashed = spawnproxy.serve(spawnproxy.ScriptDefinition("def f():\n    return 1\n"))
    try:
        calm, doomed = stopped.connect(), crashed.connect()
        assert calm.f() == 1 and doomed.f() == 1
        stopped.terminate()
        os.kill(crashed.pid, signal.SIGKILL)
        with pytest.raises(spawnproxy.DaemonDiedError, match="was stopped on purpose"):
            calm.f()
        with pytest.raises(spawnproxy.DaemonDiedError, match="ended by itself"):
            doomed.f()
    finally:
        stopped.terminate()
        crashed.terminate()
