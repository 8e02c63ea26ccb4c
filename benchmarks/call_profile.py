"""Where a small call's time goes: spawnproxy beside multiprocessing.managers, on one CPU.

    python benchmarks/call_profile.py             # timings, system calls and instructions
    python benchmarks/call_profile.py --no-valgrind

For each of spawnproxy, managers with a forked server (its default on Linux before Python 3.14)
and managers with a spawned one, with the client, the server and all their threads pinned to one
CPU, it prints:

- the median of ``p.add(i, 1)`` over several processes (figures vary more from one process to
  the next than within one);
- the context switches and the CPU time of each side per call (from /proc);
- with valgrind installed, the instructions each side runs per call (callgrind, both processes,
  a run of 3,000 calls less a run of 1,000, so start-up cancels out).

It backs docs/guides/performance.md: the work per call, in instructions and system calls, is
close to the managers', yet the managers' forked server, which shares the client's pages, runs
it faster than any spawned child on a machine where a context switch costs the caches.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.managers import BaseManager
from typing import Any

KINDS = ("spawnproxy", "managers-fork", "managers-spawn")


class Target:
    def add(self, a: int, b: int) -> int:
        return a + b


class Manager(BaseManager):
    pass


Manager.register("Target", Target)


def _start(kind: str) -> tuple[Any, int, Any]:
    """(the bound method to call, the server's pid, what ends the server)."""
    if kind == "spawnproxy":
        import spawnproxy

        mod = spawnproxy.run_script("def add(a, b):\n    return a + b\n")
        return mod.add, spawnproxy.daemon_of(mod).pid, mod.terminate_daemon
    import multiprocessing

    manager = Manager(ctx=multiprocessing.get_context(kind.split("-")[1]))
    manager.start()
    return manager.Target().add, manager._process.pid, manager.shutdown  # type: ignore[attr-defined]


def _pin(pids: list[int]) -> None:
    cpu = min(os.sched_getaffinity(0))
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), {cpu})
            except ProcessLookupError:
                pass  # a thread that ended since the listing (the forked manager's start-up threads)


def _counters(pid: int) -> tuple[int, int]:
    """(context switches of all the process's threads, user + system clock ticks)."""
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as status:
            for line in status:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return switches, int(fields[11]) + int(fields[12])


def measure(kind: str, calls: int) -> dict[str, float]:
    """Run `calls` pinned calls in this process; the figures per call."""
    add, pid, end = _start(kind)
    try:
        _pin([os.getpid(), pid])
        for i in range(2000):
            add(i, 1)
        mine, theirs = _counters(os.getpid()), _counters(pid)
        clock, samples = time.perf_counter_ns, []
        for i in range(calls):
            started = clock()
            add(i, 1)
            samples.append(clock() - started)
        mine2, theirs2 = _counters(os.getpid()), _counters(pid)
        tick = 1e6 / os.sysconf("SC_CLK_TCK")
        return {
            "median_us": statistics.median(samples) / 1000,
            "client_switches": (mine2[0] - mine[0]) / calls,
            "server_switches": (theirs2[0] - theirs[0]) / calls,
            "client_cpu_us": (mine2[1] - mine[1]) * tick / calls,
            "server_cpu_us": (theirs2[1] - theirs[1]) * tick / calls,
        }
    finally:
        end()


def instructions(kind: str) -> list[float] | None:
    """Instructions per call of each process (client first), from two callgrind runs."""
    if not shutil.which("valgrind"):
        return None
    totals = []
    with tempfile.TemporaryDirectory() as out:
        for calls in (1000, 3000):
            prefix = os.path.join(out, f"{calls}")
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={prefix}.%p"]
                + [sys.executable, __file__, "--valgrind-run", kind, str(calls)],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise RuntimeError(f"valgrind run of {kind} failed:\n{done.stderr[-2000:]}")
            client = int(done.stdout.split()[-1])  # the run prints its pid (a forked server has its command)
            counts = []
            for name in glob.glob(prefix + ".*"):
                pid = int(name.rsplit(".", 1)[1])
                with open(name) as data:
                    lines = list(data)
                cmd = next((line for line in lines if line.startswith("cmd:")), "")
                counts.append((pid != client, cmd, pid, _summary(lines)))
            # The client first, then by command: the same order in both runs (pids may wrap).
            totals.append([count for *_, count in sorted(counts)])
    # The client is the first process; its server, the other one that works per call.
    per_call = [(after - before) / 2000 for before, after in zip(totals[0], totals[1], strict=True)]
    return [per_call[0], max(per_call[1:])]


def _summary(lines: list[str]) -> int:
    return next(int(line.split()[1]) for line in lines if line.startswith("summary:"))


def _valgrind_run(kind: str, calls: int) -> None:
    # On one CPU, as the timings: no wait spins, and the server inherits the pinning.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    add, _, end = _start(kind)
    for i in range(calls):
        add(i, 1)
    end()
    print(os.getpid())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5, help="processes per kind (default 5)")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per process")
    parser.add_argument("--no-valgrind", action="store_true", help="skip the instruction counts")
    parser.add_argument("--valgrind-run", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.valgrind_run:
        _valgrind_run(args.valgrind_run[0], int(args.valgrind_run[1]))
        return 0
    if args.one:
        print(json.dumps(measure(args.one, args.calls)))
        return 0
    for kind in KINDS:
        runs = []
        for _ in range(args.processes):  # a process each: the figures follow its memory layout
            done = subprocess.run(
                [sys.executable, __file__, "--one", kind, "--calls", str(args.calls)], capture_output=True, text=True
            )
            if done.returncode:
                raise RuntimeError(f"the {kind} run failed:\n{done.stderr[-2000:]}")
            runs.append(json.loads(done.stdout))
        medians = sorted(run["median_us"] for run in runs)
        line = f"{kind:15} median {statistics.median(medians):5.1f} us (per process: {', '.join(f'{m:.1f}' for m in medians)})"
        for key in ("client_switches", "server_switches", "client_cpu_us", "server_cpu_us"):
            line += f"; {key} {statistics.median(run[key] for run in runs):.2f}"
        counted = None if args.no_valgrind else instructions(kind)
        if counted:
            line += "; instructions per call: client {:,.0f}, server {:,.0f}".format(*counted)
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
