"""The command line: serve (foreground and --detach), connect, call, stop; docs/cli.md quotes its --help."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from spawnproxy import _cli

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("private_state_home")]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "import os\ndef add(a, b):\n    return a + b\nprint('calc ready')\n"


def spawnproxy_cli(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "spawnproxy", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def calc(tmp_path: Path) -> Path:
    (tmp_path / "calc.py").write_text(SCRIPT)
    return tmp_path


def test_detach_connect_call_stop(calc: Path, private_state_home: str) -> None:
    """serve --detach returns at once with a private state file; connect, call and stop use it."""
    started = spawnproxy_cli("serve", "calc.py", "--detach", cwd=calc)
    assert started.returncode == 0, started.stderr
    state = Path(private_state_home) / "spawnproxy" / "default.json"
    try:
        assert (state.stat().st_mode & 0o777) == 0o600
        checked = spawnproxy_cli("connect", cwd=calc)
        assert checked.returncode == 0 and "connected to daemon" in checked.stdout, checked.stderr
        called = spawnproxy_cli("call", "add", "2", "40", cwd=calc)
        assert called.stdout.strip() == "42", called.stderr
        called = spawnproxy_cli("call", "add", "'spawn'", "b='proxy'", cwd=calc)
        assert called.stdout.strip() == "'spawnproxy'", called.stderr
        again = spawnproxy_cli("serve", "calc.py", "--detach", cwd=calc)
        assert again.returncode == 1 and "already runs" in again.stderr
    finally:
        stopped = spawnproxy_cli("stop", cwd=calc)
    assert stopped.returncode == 0, stopped.stderr
    assert not state.exists()
    assert "calc ready" in (state.parent / "default.log").read_text()
    gone = spawnproxy_cli("connect", cwd=calc)
    assert gone.returncode == 1 and "no state file" in gone.stderr


def test_module_class_with_arguments_and_a_key_file(tmp_path: Path) -> None:
    """module:Class ARG NAME=VALUE, a key file and a Unix socket; stop over the connection."""
    key = tmp_path / "key"
    key.write_text("correct horse battery staple\n")
    key.chmod(0o600)
    sock = str(tmp_path / "d.sock")
    started = spawnproxy_cli(
        "serve", "collections:OrderedDict", "a=1", "b=[2, 3]", "--address", sock, "--authkey-file", str(key),
        "--detach", "--state-file", str(tmp_path / "s.json"), cwd=tmp_path,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        got = spawnproxy_cli("call", "get", "b", "--address", sock, "--authkey-file", str(key), cwd=tmp_path)
        assert got.stdout.strip() == "[2, 3]", got.stderr
        (tmp_path / "wrong").write_text("not it, though long enough")
        (tmp_path / "wrong").chmod(0o600)
        refused = spawnproxy_cli("connect", "--address", sock, "--authkey-file", str(tmp_path / "wrong"), cwd=tmp_path)
        assert refused.returncode == 1 and "refused the key" in refused.stderr
    finally:
        stopped = spawnproxy_cli("stop", "--address", sock, "--authkey-file", str(key), cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 5
    while os.path.exists(tmp_path / "s.json") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(tmp_path / "s.json")


def test_foreground_serve_ends_on_sigterm(calc: Path, private_state_home: str) -> None:
    """Without --detach the daemon serves until SIGTERM, then removes its state file."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "spawnproxy", "serve", "calc.py", "--address", "127.0.0.1:0"],
        cwd=calc,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]  # the script's own line, then two of ours
        assert "calc ready\n" in lines
        assert any(re.search(r"serves calc.py on 127\.0\.0\.1:\d+", line) for line in lines), lines
        called = spawnproxy_cli("call", "add", "1", "2", "--wait", "5", cwd=calc)
        assert called.stdout.strip() == "3", called.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert not (Path(private_state_home) / "spawnproxy" / "default.json").exists()


def test_stop_removes_a_stale_state_file(tmp_path: Path, private_state_home: str) -> None:
    """A state file whose process has ended and whose address answers nothing is removed, with a message."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = Path(private_state_home) / "spawnproxy" / "default.json"
    state.parent.mkdir(mode=0o700)
    state.write_text(json.dumps({"address": ["127.0.0.1", port], "authkey": "00ff" * 8, "pid": int(ended.stdout)}))
    state.chmod(0o600)
    stopped = spawnproxy_cli("stop", cwd=tmp_path)
    assert stopped.returncode == 0 and "stale" in stopped.stdout, stopped.stderr
    assert not state.exists()


def test_bad_targets_fail_clearly(tmp_path: Path) -> None:
    """A missing module or script fails with a message and status 1, and leaves nothing running."""
    result = spawnproxy_cli("serve", "no_such_module_anywhere", "--detach", cwd=tmp_path)
    assert result.returncode == 1 and "no_such_module_anywhere" in result.stderr
    result = spawnproxy_cli("serve", "missing.py", cwd=tmp_path)
    assert result.returncode != 0 and "cannot read the script" in result.stderr


def _help_blocks() -> dict[str, str]:
    text = (ROOT / "docs" / "cli.md").read_text()
    blocks = re.findall(r"^## `(spawnproxy(?: \w+)?)`\n.*?```text\n(.*?)```", text, re.S | re.M)
    return {name: body for name, body in blocks}


def _help_of(words: list[str]) -> str:
    parser = _cli.build_parser()
    if len(words) > 1:
        actions = [a for a in parser._actions if a.dest == "command"]
        parser = actions[0].choices[words[1]]  # type: ignore[index]
    return parser.format_help()


@pytest.mark.parametrize(
    "command", ["spawnproxy", "spawnproxy serve", "spawnproxy connect", "spawnproxy call", "spawnproxy stop"]
)
def test_docs_quote_the_help_of_each_command(command: str) -> None:
    """docs/cli.md shows exactly what --help prints (up to line wrapping)."""
    blocks = _help_blocks()
    assert command in blocks, f"docs/cli.md has no section for {command}"
    squash: Any = lambda text: " ".join(text.replace("optional arguments:", "options:").split())  # noqa: E731
    assert squash(blocks[command]) == squash(_help_of(command.split()))
