"""Output (SPEC §3.8): child stdout/stderr reach the parent line by line, a logger, bounded logs."""

from __future__ import annotations

import logging
import os
import time

import pytest

import spawnproxy
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def _env_without_unbuffered() -> dict[str, str]:
    # These machines set PYTHONUNBUFFERED=1: without removing it the test proves nothing.
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def test_lines_arrive_as_written_without_pythonunbuffered(capfd: pytest.CaptureFixture[str], warm: bool) -> None:
    """A line printed by the child reaches the parent's stdout while the child keeps running."""
    mod = spawnproxy.run_script(
        "import sys\ndef say(x):\n    print(x)\ndef warn(x):\n    sys.stderr.write(x + '\\n')",
        env=_env_without_unbuffered(),
        warm=warm,
    )
    try:
        mod.say("first line")
        mod.warn("a warning")
        mod.say("last line")
        mod.warn("last warning")
        daemon = spawnproxy.daemon_of(mod)
        # Each stream's thread writes its lines in order: once the last of each is in the logs,
        # the first have been written out.  capfd is read once, after: a readouterr while another
        # thread writes can lose what lands between its read and its reset.
        assert wait_until(lambda: "last line" in daemon.logs and "last warning" in daemon.logs, 2)
        captured = capfd.readouterr()
        out, err = captured.out, captured.err
        assert "first line" in out
        assert "a warning" in err and "a warning" not in out
    finally:
        mod.terminate_daemon()


def test_logger_gets_stdout_at_info_and_stderr_at_warning(caplog: pytest.LogCaptureFixture, warm: bool) -> None:
    """With a logger, stdout lines are INFO records and stderr lines WARNING records."""
    logger = logging.getLogger("test-child-output")
    caplog.set_level(logging.INFO, logger="test-child-output")
    mod = spawnproxy.run_script(
        "import sys\nprint('to out')\nsys.stderr.write('to err\\n')",
        logger=logger,
        env=_env_without_unbuffered(),
        warm=warm,
    )
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(caplog.records) < 2:
            time.sleep(0.02)
        levels = {r.getMessage(): r.levelno for r in caplog.records}
        assert levels.get("to out") == logging.INFO
        assert levels.get("to err") == logging.WARNING
    finally:
        mod.terminate_daemon()


def test_logs_keep_the_last_lines_bounded(warm: bool) -> None:
    """DaemonProxy.logs keeps the most recent lines, no more than logs_maxlen."""
    logger = logging.getLogger("test-quiet")
    logger.propagate = False
    with spawnproxy.DaemonProxy(
        spawnproxy.ScriptDefinition("def spam(n):\n    for i in range(n):\n        print('line', i)"),
        logger=logger,
        logs_maxlen=50,
        warm=warm,
    ) as daemon:
        daemon.proxy.spam(500)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (not daemon.logs or daemon.logs[-1] != "line 499"):
            time.sleep(0.02)
        assert daemon.logs[-1] == "line 499"
        assert len(daemon.logs) == 50


def test_a_child_writing_a_lot_never_blocks(warm: bool) -> None:
    """A child writing megabytes without newlines keeps answering."""
    logger = logging.getLogger("test-flood")
    logger.propagate = False
    mod = spawnproxy.run_script(
        "import sys\ndef flood(n):\n    sys.stdout.write('x' * n)\n    sys.stdout.flush()\n    return n",
        logger=logger,
        warm=warm,
    )
    try:
        for _ in range(5):
            assert mod.flood(4 * 1024 * 1024) == 4 * 1024 * 1024
        logs = spawnproxy.daemon_of(mod).logs
        assert max(len(line) for line in logs) <= 64 * 1024
    finally:
        mod.terminate_daemon()
