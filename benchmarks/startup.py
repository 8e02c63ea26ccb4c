"""Start-up, warm and cold, against the ways a Python process can get a worker that answers.

Usage: ``python benchmarks/startup.py [--reps N] [--out DIR] [--plot PNG]``.

In one run, on one machine, the median time from the request to the first answer of:

- ``warm``: ``run_script(..., warm=True)`` then one call (the zygote is started before timing);
- ``cold``: the same, ``warm=False``;
- ``python -c pass``: ``subprocess.run`` of the parent's interpreter, to its exit;
- ``Pipe fork``: a ``multiprocessing`` fork-context ``Process`` answering one message on a ``Pipe``;
- ``spawny fork``: ``spawny.run_object`` (multiprocessing's fork, the parent's interpreter) and one
  call, when spawny is installed;

and the time until 32 warm (and 32 cold) children are ready: ``Pool(..., 32)`` built and each
child's root proxy answered.  Prints a table with ratios; writes ``startup.json`` and
``startup.md`` to ``--out`` and, with ``--plot``, a PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import spawnproxy

SCRIPT = "def ping():\n    return 1"
POOL_SIZE = 32
_QUIET = logging.getLogger("benchmarks.startup.spawny")
_QUIET.setLevel(logging.WARNING)


# A case starts a worker and has it answer once, then returns what ends it (not timed).
Case = Callable[[], Callable[[], Any]]


def _spawnproxy(warm: bool) -> Case:
    def once() -> Callable[[], Any]:
        mod = spawnproxy.run_script(SCRIPT, warm=warm)
        mod.ping()
        return mod.terminate_daemon

    return once


def _python_pass() -> Callable[[], Any]:
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return lambda: None


def _echo(conn: Any) -> None:
    conn.send(conn.recv())


def _pipe_fork() -> Callable[[], Any]:
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    process = context.Process(target=_echo, args=(theirs,))
    process.start()
    ours.send(1)
    ours.recv()
    return process.join


class _Pinger:
    def ping(self) -> int:
        return 1


def _spawny_fork() -> Case | None:
    try:
        import spawny
    except ImportError:
        return None

    def once() -> Callable[[], Any]:
        multiprocessing.set_start_method("fork", force=True)
        proxy = spawny.run_object(_Pinger(), logger=_QUIET)
        proxy.ping()
        return proxy.terminate_daemon

    return once


def _pool(warm: bool) -> Callable[[], Any]:
    pool = spawnproxy.Pool(spawnproxy.ScriptDefinition(SCRIPT), POOL_SIZE, warm=warm)
    for proxy in pool.proxies:
        proxy.ping()
    return pool.shutdown


def measure(case: Case, reps: int) -> dict[str, float]:
    """Median, 10th and 90th percentile of `reps` timed starts (ms), after one untimed one."""
    case()()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        end = case()
        samples.append((time.perf_counter() - start) * 1000)
        end()
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p10_ms": samples[len(samples) // 10],
        "p90_ms": samples[(len(samples) * 9) // 10 - 1 if len(samples) >= 10 else -1],
        "reps": reps,
    }


def run(reps: int) -> dict[str, Any]:
    cases: dict[str, Case | None] = {
        "warm": _spawnproxy(True),
        "cold": _spawnproxy(False),
        "python -c pass": _python_pass,
        "Pipe fork": _pipe_fork,
        "spawny fork": _spawny_fork(),
    }
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "cases": {}}
    for name, fn in cases.items():
        if fn is not None:
            results["cases"][name] = measure(fn, reps)
    results["cases"][f"{POOL_SIZE} warm"] = measure(lambda: _pool(True), max(3, reps // 6))
    results["cases"][f"{POOL_SIZE} cold"] = measure(lambda: _pool(False), 3)
    medians = {name: case["median_ms"] for name, case in results["cases"].items()}
    results["ratios"] = {
        f"warm / {name}": medians["warm"] / median
        for name, median in medians.items()
        if name != "warm" and not name.startswith(str(POOL_SIZE))
    }
    results["ratios"][f"{POOL_SIZE} warm / {POOL_SIZE} cold"] = (
        medians[f"{POOL_SIZE} warm"] / medians[f"{POOL_SIZE} cold"]
    )
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["| start | median (ms) | p10 | p90 | runs |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, case in results["cases"].items():
        lines.append(
            f"| {name} | {case['median_ms']:.2f} | {case['p10_ms']:.2f} | {case['p90_ms']:.2f} | {case['reps']} |"
        )
    lines += ["", "| ratio | value |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.2f} |" for name, value in results["ratios"].items()]
    load = ", ".join(f"{x:.2f}" for x in results["machine"]["load"])
    lines += ["", f"{results['machine']['cpus']} CPUs; load average at the end: {load}."]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = {k: v for k, v in results["cases"].items() if not k.startswith(str(POOL_SIZE))}
    pools = {k: v for k, v in results["cases"].items() if k.startswith(str(POOL_SIZE))}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [len(single), 2]})
    for axis, cases, title in (
        (left, single, "One worker: request to first answer (ms)"),
        (right, pools, f"{POOL_SIZE} children ready (ms)"),
    ):
        names = list(cases)
        medians = [cases[n]["median_ms"] for n in names]
        errors = [
            [m - cases[n]["p10_ms"] for n, m in zip(names, medians, strict=True)],
            [cases[n]["p90_ms"] - m for n, m in zip(names, medians, strict=True)],
        ]
        colors = ["tab:orange" if n.startswith(("warm", f"{POOL_SIZE} warm")) else "tab:blue" for n in names]
        bars = axis.bar(names, medians, yerr=errors, color=colors, capsize=3)
        axis.bar_label(bars, labels=[f"{m:.1f}" for m in medians], padding=2)
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=20)
    fig.suptitle("spawnproxy start-up: warm (forked from a zygote) and cold; median, p10-p90")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed runs per case (default 30)")
    parser.add_argument("--out", type=Path, help="directory for startup.json and startup.md")
    parser.add_argument("--plot", type=Path, help="write the PNG here")
    args = parser.parse_args()
    results = run(args.reps)
    text = table(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "startup.json").write_text(json.dumps(results, indent=2))
        (args.out / "startup.md").write_text(text + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
