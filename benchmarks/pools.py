"""The pool rows: spawnproxy.Pool beside ProcessPoolExecutor, multiprocessing.Pool and loky.

Usage (as `run.py` runs it, one process per pool): ``python benchmarks/pools.py POOL --cases a,b
[--quick]``; it reports each case as a JSON line, as `worker.py` does.  Every pool runs the same
module-level functions (`tiny`, `nap`), sent by reference, on fresh interpreters (the
multiprocessing pools with the ``spawn`` context: ``fork`` would copy this process instead of
starting an interpreter, which spawnproxy never does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# name on the command line -> label in the reports
POOLS: dict[str, str] = {
    "pool_spawnproxy": "spawnproxy.Pool",
    "pool_futures": "ProcessPoolExecutor",
    "pool_mp": "multiprocessing.Pool",
    "pool_loky": "loky",
}
POOL_BASELINE = "pool_futures"
CASES = ["pool_tiny_100k", "pool_sleep_64x50ms", "pool_first_result_4"]
LABELS = {
    "pool_tiny_100k": ("10⁵ tiny tasks, `map` with chunksize 1,000", "tasks/s"),
    "pool_sleep_64x50ms": ("64 tasks of 50 ms, one `submit` each", "s"),
    "pool_first_result_4": ("constructor to first result, 4 workers", "ms"),
}
NOTES = {
    "pool_spawnproxy": ["`spawnproxy.Pool(max_workers=n)`: children of the parent's interpreter, builtins as root"],
    "pool_futures": ["`concurrent.futures.ProcessPoolExecutor(n, mp_context=spawn)`"],
    "pool_mp": ["`multiprocessing.get_context('spawn').Pool(n)`; `pool.map` and `apply_async`"],
    "pool_loky": ["`loky.ProcessPoolExecutor(n)` (a fresh executor, not the reusable one)"],
}
TINY = 100_000
CHUNK = 1000


def tiny(x: int) -> int:
    """A task that costs next to nothing: the pool's own overhead is all there is."""
    return x + 1


def nap(seconds: float) -> float:
    """A task that waits (I/O, a remote service): what the pool adds to it is dispatch."""
    time.sleep(seconds)
    return seconds


def cpus() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Pool:
    """One kind of pool, behind the three operations the cases need."""

    def __init__(self, name: str, workers: int) -> None:
        self.name = name
        if name == "pool_spawnproxy":
            import spawnproxy

            self.ex: Any = spawnproxy.Pool(max_workers=workers)
        elif name == "pool_futures":
            import concurrent.futures
            import multiprocessing

            self.ex = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        elif name == "pool_mp":
            import multiprocessing

            self.ex = multiprocessing.get_context("spawn").Pool(workers)
        elif name == "pool_loky":
            import loky

            self.ex = loky.ProcessPoolExecutor(workers)
        else:
            raise ValueError(f"unknown pool {name!r}")

    def map(self, fn: Callable[[Any], Any], items: Any, chunksize: int) -> list[Any]:
        if self.name == "pool_mp":
            return self.ex.map(fn, items, chunksize)  # type: ignore[no-any-return]
        return list(self.ex.map(fn, items, chunksize=chunksize))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """Start `fn(*args)`; return what waits for its result."""
        if self.name == "pool_mp":
            return self.ex.apply_async(fn, args).get  # type: ignore[no-any-return]
        return self.ex.submit(fn, *args).result  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.name == "pool_mp":
            self.ex.terminate()
            self.ex.join()
        else:
            self.ex.shutdown(wait=True)


def tiny_tasks(name: str, rounds: int) -> dict[str, Any]:
    """10^5 tiny tasks through `map` (chunksize 1,000) on a started, warm pool; tasks/s (median round)."""
    from benchmarks.pools import tiny  # named by module, not __main__, in every pool's pickles

    pool = Pool(name, cpus())
    try:
        pool.map(tiny, range(4 * CHUNK), CHUNK)  # every worker up and warm
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            results = pool.map(tiny, range(TINY), CHUNK)
            samples.append(time.perf_counter() - t0)
            if results[-1] != TINY or len(results) != TINY:
                raise AssertionError("wrong answer: tiny tasks")
    finally:
        pool.close()
    median = statistics.median(samples)
    return {"value": TINY / median, "unit": "tasks/s", "better": "higher", "median_ms": median * 1e3, "n": rounds}


def sleepy_tasks(name: str, rounds: int) -> dict[str, Any]:
    """64 tasks of 50 ms, one submit each, on one worker per CPU; seconds (the floor: 64 x 50 ms / CPUs)."""
    from benchmarks.pools import nap, tiny  # named by module, not __main__, in every pool's pickles

    workers = cpus()
    pool = Pool(name, workers)
    try:
        pool.map(tiny, range(4 * workers), 1)
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            waits = [pool.submit(nap, 0.05) for _ in range(64)]
            for wait in waits:
                wait()
            samples.append(time.perf_counter() - t0)
    finally:
        pool.close()
    median = statistics.median(samples)
    floor = 64 * 0.05 / workers
    return {"value": median, "unit": "s", "better": "lower", "median_ms": median * 1e3, "n": rounds, "floor": floor}


def first_result(name: str, rounds: int) -> dict[str, Any]:
    """From the constructor of a 4-worker pool to the first result of a tiny task; ms (median)."""
    from benchmarks.pools import tiny  # named by module, not __main__, in every pool's pickles

    samples = []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        pool = Pool(name, 4)
        try:
            if pool.submit(tiny, 1)() != 2:
                raise AssertionError("wrong answer: first result")
            samples.append(time.perf_counter() - t0)
        finally:
            pool.close()
    samples = samples[1:]  # the first one warms the file cache
    median = statistics.median(samples)
    return {"value": median * 1e3, "unit": "ms", "better": "lower", "median_ms": median * 1e3, "n": rounds}


def run(name: str, case: str, quick: bool) -> dict[str, Any]:
    """One case for one pool."""
    if case == "pool_tiny_100k":
        return tiny_tasks(name, 3 if quick else 7)
    if case == "pool_sleep_64x50ms":
        return sleepy_tasks(name, 1 if quick else 3)
    if case == "pool_first_result_4":
        return first_result(name, 2 if quick else 5)
    raise ValueError(f"unknown case {case!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool", choices=sorted(POOLS))
    parser.add_argument("--cases", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pin", default="none", help="ignored: pools run unpinned")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.worker import _emitter, _error

    out = _emitter()

    def emit(**msg: Any) -> None:
        out.write(json.dumps(msg) + "\n")

    dist = {"pool_spawnproxy": "spawnproxy", "pool_loky": "loky"}.get(args.pool)
    try:
        if dist == "loky":
            import loky  # noqa: F401
    except ImportError as exc:
        emit(event="missing", error=_error(exc))
        return 0
    version = sys.version.split()[0]
    if dist is not None:
        from importlib import metadata

        version = metadata.version(dist)
    emit(event="info", version=version, dist=dist, notes=NOTES[args.pool])
    for case in args.cases.split(","):
        emit(event="begin", case=case)
        try:
            emit(event="result", case=case, status="ok", **run(args.pool, case, args.quick))
        except Exception as exc:
            emit(event="result", case=case, status="failed", error=_error(exc))
    emit(event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
