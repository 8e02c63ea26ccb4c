"""Faults: a child that floods its stdout and stderr keeps answering, and the parent's memory stays bounded."""

from __future__ import annotations

import logging
import threading
import time

import psutil
import pytest

import spawnproxy
from tests.targets.parents import TARGET

pytestmark = pytest.mark.timeout(90)

# A line without a newline is forwarded in pieces of at most this many characters (spawnproxy._output).
PIECE = 64 * 1024
MB = 1 << 20


class Counting(logging.Handler):
    """Count the characters forwarded, keep none of them."""

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.chars += len(record.getMessage())


def _discarding_logger(name: str) -> logging.Logger:
    """A logger that only counts what it gets, and does not propagate to pytest's capture."""
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(Counting())
    return logger


@pytest.mark.slow
def test_flood_without_newlines_keeps_answering_with_bounded_memory() -> None:
    """100 MiB on stdout and 100 MiB on stderr, no newline: calls are answered, logs and RSS stay bounded."""
    process = psutil.Process()
    logger = _discarding_logger("tests.faults.flood")
    mod = spawnproxy.run_module(TARGET, logger=logger)
    try:
        daemon = spawnproxy.daemon_of(mod)
        baseline = process.memory_info().rss
        peak = [baseline]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            mod.start_flood(100)
            calls, slowest = 0, 0.0
            deadline = time.monotonic() + 60
            while not mod.flood_done():
                started = time.monotonic()
                assert mod.ping(calls) == calls
                slowest = max(slowest, time.monotonic() - started)
                calls += 1
                assert time.monotonic() < deadline, "the flood did not end within 60 s"
            time.sleep(0.2)  # let the output threads drain the last pieces
            assert mod.ping("after") == "after"
        finally:
            sampling.set()
            sampler.join(5)
        assert calls > 0
        assert slowest < 1.0, f"a call took {slowest:.3f} s during the flood"
        logs = daemon.logs
        assert 0 < len(logs) <= 1000  # the default logs_maxlen
        assert sum(map(len, logs)) <= 1000 * PIECE
        growth = (max(peak[0], process.memory_info().rss) - baseline) / MB
        assert growth < 200, f"the parent grew by {growth:.0f} MiB"
    finally:
        mod.terminate_daemon()
    # Every byte was forwarded (the last piece of a line without newline, once the child has ended).
    assert logger.handlers[0].chars == 2 * 100 * MB


def test_logs_keep_the_last_lines() -> None:
    """DaemonProxy.logs holds at most logs_maxlen lines, the most recent last, however many were written."""
    script = "for i in range(100000):\n    print('line', i)\n"
    mod = spawnproxy.run_script(script, logger=_discarding_logger("tests.faults.lines"), logs_maxlen=50)
    try:
        daemon = spawnproxy.daemon_of(mod)
        deadline = time.monotonic() + 10
        while "line 99999" not in daemon.logs and time.monotonic() < deadline:
            time.sleep(0.02)
        logs = daemon.logs
        assert len(logs) == 50
        assert logs == [f"line {i}" for i in range(100000 - 50, 100000)]
        assert mod.i == 99999
    finally:
        mod.terminate_daemon()


def test_flood_into_a_pipe_nobody_reads_never_blocks_the_child() -> None:
    """A child writing 20 MiB of short lines while the parent makes calls is never blocked by its output."""
    mod = spawnproxy.run_script(
        "import sys\ndef spill(n):\n    for i in range(n):\n        sys.stdout.write('%099d\\n' % i)\n    return n\n",
        logger=_discarding_logger("tests.faults.spill"),
    )
    try:
        started = time.monotonic()
        assert mod.spill(200_000) == 200_000  # 20 MB in 100-byte lines
        assert time.monotonic() - started < 20
    finally:
        mod.terminate_daemon()


def test_death_message_stays_readable_after_a_flood() -> None:
    """After a flood without newlines on stderr, DaemonDiedError's message stays short and still says why."""
    mod = spawnproxy.run_module(TARGET, logger=_discarding_logger("tests.faults.died"))
    with pytest.raises(spawnproxy.DaemonDiedError, match="exit code 3") as info:
        mod.flood_stderr_then_die(2 * MB, 3)
    assert len(str(info.value)) < 8 * 1024
