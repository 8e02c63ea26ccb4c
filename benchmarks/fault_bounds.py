"""Measure the bounds of docs/reliability.md that are times: how fast failures become errors or cleanup.

    python benchmarks/fault_bounds.py

- a child SIGKILLed during a call: time until that call raises DaemonDiedError;
- the parent SIGKILLed: time until its children (one stuck in C holding the GIL, one sleeping and
  deaf to SIGTERM) are gone;
- the parent exiting normally with four children, some hung: time its exit handler takes;
- a proxy dropped while no call follows: time until the child lets go of its object, over a
  local child (the caller's lane, and another thread's), TCP and a Unix socket.

The tests check these bounds (tests/test_faults_*.py); this prints the figures behind them.
"""

from __future__ import annotations

import gc
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil

import spawnproxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARENTS = [sys.executable, os.path.join(ROOT, "tests", "targets", "parents.py")]
ENV = dict(os.environ, PYTHONPATH=ROOT)


def death_notice(runs: int = 10) -> list[float]:
    """Seconds from SIGKILL of a busy child to DaemonDiedError in the call."""
    times = []
    for _ in range(runs):
        mod = spawnproxy.run_script("import time\ndef nap(s):\n    time.sleep(s)\n")
        pid = spawnproxy.daemon_of(mod).pid
        killed = [0.0]

        def kill(pid: int = pid, killed: list[float] = killed) -> None:
            time.sleep(0.2)
            killed[0] = time.monotonic()
            os.kill(pid, signal.SIGKILL)

        threading.Thread(target=kill).start()
        try:
            mod.nap(30)
        except spawnproxy.DaemonDiedError:
            times.append(time.monotonic() - killed[0])
    return times


def parent_death(what: str, runs: int = 3) -> list[float]:
    """Seconds from SIGKILL of a parent to the end of all its children."""
    times = []
    for _ in range(runs):
        parent = subprocess.Popen(
            [*PARENTS, "killed_while", what], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV
        )
        assert parent.stdout is not None
        pids = [int(word) for word in parent.stdout.readline().split()[1:]]
        time.sleep(0.3)  # the call is running in the child
        started = time.monotonic()
        parent.kill()
        parent.wait()
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            time.sleep(0.001)
        times.append(time.monotonic() - started)
    return times


def normal_exit() -> float:
    """Seconds the exit of a parent with four children (idle, sleeping, deaf, stuck in C) takes."""
    out = subprocess.run(
        [*PARENTS, "exit_with_children"], capture_output=True, text=True, env=ENV, timeout=60, check=True
    ).stdout
    said = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    return float(said["EXIT_DONE"]) - float(said["EXIT_START"])


TRACKED = """
import threading
class Tracked:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()  # travels by reference
    def __del__(self):
        open(self.path, "w").close()
def make(path):
    return Tracked(path)
"""


def idle_release(transport: str, runs: int = 10) -> list[float]:
    """Seconds from dropping a proxy, with no call after it, to the child letting go of its object."""
    times = []
    with tempfile.TemporaryDirectory() as directory:
        server = None
        if transport == "local" or transport == "thread":
            root = spawnproxy.run_script(TRACKED)
        else:
            address = os.path.join(directory, "daemon.sock") if transport == "unix" else None
            server = spawnproxy.serve(spawnproxy.ScriptDefinition(TRACKED), address)
            root = server.connect()
        try:
            for i in range(runs):
                path = os.path.join(directory, f"released-{i}")
                held: list[Any] = []
                if transport == "thread":
                    worker = threading.Thread(target=lambda path=path, held=held: held.append(root.make(path)))
                    worker.start()
                    worker.join()
                else:
                    held.append(root.make(path))
                time.sleep(0.1 * (i % 4))  # drops at various points of the flush period
                dropped = time.monotonic()
                held.clear()
                gc.collect()
                while not os.path.exists(path) and time.monotonic() - dropped < 5:
                    time.sleep(0.002)
                times.append(time.monotonic() - dropped)
        finally:
            if server is not None:
                server.terminate()
            else:
                root.terminate_daemon()
    return times


def main() -> None:
    notice = death_notice()
    print(
        f"SIGKILL during a call -> DaemonDiedError: median {statistics.median(notice) * 1000:.1f} ms, "
        f"max {max(notice) * 1000:.1f} ms (n={len(notice)})"
    )
    for what in ("hold_gil", "sleep"):
        gone = parent_death(what)
        print(f"parent SIGKILLed, children gone (child in {what}): max {max(gone) * 1000:.1f} ms (n={len(gone)})")
    print(f"normal exit with four children, two hung: {normal_exit():.2f} s")
    for transport in ("local", "thread", "tcp", "unix"):
        waits = idle_release(transport)
        print(
            f"proxy dropped, no call after it ({transport}) -> released in the child: "
            f"median {statistics.median(waits) * 1000:.0f} ms, max {max(waits) * 1000:.0f} ms (n={len(waits)})"
        )


if __name__ == "__main__":
    main()
