"""The cases and how each is timed (`time.perf_counter_ns`, warm-up first, medians and p99).

Every case returns a dict with ``value`` (the headline figure), ``unit``, ``better`` (``"lower"``
or ``"higher"``) and, where there are samples, ``median_us``/``p99_us`` (or ``_ms``) and ``n``.
Bandwidth counts the bytes that travel there and back: ``2 * size / median time``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.peers.base import Handle, Unsupported

KIB = 1024
MIB = 1024 * KIB

# The small round trips run pinned to one CPU (see pinning), and again as "<case>_unpinned",
# left where the scheduler puts them: that is what a caller sees without pinning.
UNPINNED = "_unpinned"
SMALL_CASES = ["noop", "add", "get_value", "set_value", "echo_1KiB"]
CASES = [
    "startup",
    *(case + suffix for case in SMALL_CASES for suffix in ("", UNPINNED)),
    "echo_1MiB",
    "echo_64MiB",
    "echo_numpy_64MiB",
    "threads_2",
    "threads_8",
    "refs",
    "stream_1M",
    "async_1000",
]
ECHO_SIZES = {"echo_1KiB": KIB, "echo_1MiB": MIB, "echo_64MiB": 64 * MIB, "echo_numpy_64MiB": 64 * MIB}


@dataclass(frozen=True)
class Settings:
    """How many samples each kind of case takes."""

    startups: int
    latency: int
    warmup: int
    echo_reps: dict[str, int]
    thread_seconds: float
    refs: int
    hang_s: float
    stream_items: int = 1_000_000
    step_items: int = 20_000
    async_rounds: int = 10

    @classmethod
    def make(cls, quick: bool) -> Settings:
        """Few iterations for ``--quick``, enough for stable medians otherwise."""
        if quick:
            reps = {"echo_1KiB": 200, "echo_1MiB": 20, "echo_64MiB": 3, "echo_numpy_64MiB": 3}
            return cls(
                startups=3,
                latency=200,
                warmup=50,
                echo_reps=reps,
                thread_seconds=0.2,
                refs=1000,
                hang_s=10.0,
                step_items=5000,
                async_rounds=3,
            )
        reps = {"echo_1KiB": 2000, "echo_1MiB": 100, "echo_64MiB": 5, "echo_numpy_64MiB": 5}
        return cls(startups=20, latency=2000, warmup=200, echo_reps=reps, thread_seconds=1.0, refs=10_000, hang_s=60.0)


def percentile(sorted_ns: list[int], q: float) -> int:
    """The nearest-rank percentile of sorted samples."""
    return sorted_ns[max(0, math.ceil(q * len(sorted_ns)) - 1)]


def summarize(samples_ns: list[int], scale: float = 1e3, suffix: str = "us") -> dict[str, Any]:
    """Median and p99 of samples in ns, expressed in µs (or ms with ``scale=1e6``)."""
    ordered = sorted(samples_ns)
    return {
        f"median_{suffix}": statistics.median(ordered) / scale,
        f"p99_{suffix}": percentile(ordered, 0.99) / scale,
        "n": len(ordered),
    }


def sample(fn: Callable[[], Any], n: int, warmup: int) -> list[int]:
    """Time ``n`` calls of ``fn`` one by one, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"wrong answer: {what}")


def startup(start: Callable[[], Handle], s: Settings) -> dict[str, Any]:
    """From the call that starts the server to the first answer; one untimed start first."""
    samples = []
    for i in range(s.startups + 1):
        t0 = time.perf_counter_ns()
        handle = start()
        try:
            handle.noop()
            t1 = time.perf_counter_ns()
        finally:
            handle.close()
        if i:
            samples.append(t1 - t0)
    res = summarize(samples, 1e6, "ms")
    return {**res, "value": res["median_ms"], "unit": "ms", "better": "lower"}


def _read_checked(h: Handle, expected: int) -> None:
    _check(h.get_value() == expected, "value")


def latency(h: Handle, case: str, s: Settings) -> dict[str, Any]:
    """One call at a time: noop, add, attribute read (compared with its value), attribute write."""
    expected = 0  # Target's initial value, where the peer cannot write it
    if case == "get_value":
        with contextlib.suppress(Unsupported):
            h.set_value(3)
            expected = 3
    _check(h.add(1, 2) == 3, "add(1, 2)")
    fns: dict[str, Callable[[], Any]] = {
        "noop": h.noop,
        "add": functools.partial(h.add, 1, 2),
        "get_value": functools.partial(_read_checked, h, expected),
        "set_value": functools.partial(h.set_value, 3),
    }
    res = summarize(sample(fns[case], s.latency, s.warmup))
    return {**res, "value": res["median_us"], "unit": "us", "better": "lower"}


def payload(case: str) -> Any:
    """The data a bandwidth case sends."""
    size = ECHO_SIZES[case]
    if "numpy" in case:
        import numpy

        return numpy.arange(size // 8, dtype=numpy.float64)
    return bytes(range(256)) * (size // 256)


def _nbytes(x: Any) -> int:
    return int(x.nbytes) if hasattr(x, "nbytes") else len(x)


def bandwidth(h: Handle, case: str, s: Settings) -> dict[str, Any]:
    """``p.echo(data)`` there and back; MB/s (10^6 bytes) from the median round trip."""
    data = payload(case)
    size = _nbytes(data)
    back = h.echo(data)
    _check(_nbytes(back) == size, f"echo returned {_nbytes(back)} bytes of {size}")
    del back
    reps = s.echo_reps[case]
    res = summarize(sample(functools.partial(h.echo, data), reps, 1 if reps < 10 else s.warmup))
    mb_s = 2 * size / (res["median_us"] * 1e-6) / 1e6
    return {**res, "value": mb_s, "unit": "MB/s", "better": "higher", "bytes": size}


def threads(h: Handle, nthreads: int, s: Settings) -> dict[str, Any]:
    """``nthreads`` threads call ``p.add(i, k)`` at once for ``thread_seconds``; calls/s over the wall time.

    A fixed time rather than a fixed count: long enough for a steady state with a fast peer,
    bounded with a slow one.
    """
    clock = time.perf_counter_ns
    stop = [0]  # when the threads stop starting calls (perf_counter_ns)

    def start_clock() -> None:  # once every warm-up is done, before any thread goes on
        stop[0] = clock() + int(s.thread_seconds * 1e9)

    barrier = threading.Barrier(nthreads + 1, action=start_clock)
    samples: list[list[int]] = [[] for _ in range(nthreads)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        mine = None
        try:
            mine = h.for_thread()
            for k in range(10):
                _check(mine.add(i, k) == i + k, "warm-up add")
        except BaseException as exc:  # reported after the join
            errors.append(exc)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(s.hang_s)
        if mine is None:
            return
        mine_samples, end, k = samples[i], stop[0], 0
        try:
            while clock() < end:
                t0 = clock()
                r = mine.add(i, k)
                mine_samples.append(clock() - t0)
                _check(r == i + k, f"thread {i}: add({i}, {k}) returned {r!r}")
                k += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            if mine is not h:
                mine.close()

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(nthreads)]
    for w in workers:
        w.start()
    try:
        barrier.wait(s.hang_s)
    except threading.BrokenBarrierError:
        raise TimeoutError(f"threads' warm-up calls did not finish within {s.hang_s:g} s") from None
    t0 = clock()
    deadline = time.monotonic() + s.thread_seconds + s.hang_s
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    wall = clock() - t0
    hung = sum(w.is_alive() for w in workers)
    if hung:
        raise TimeoutError(f"{hung} of {nthreads} threads still waiting for an answer after {s.hang_s:g} s")
    if errors:
        raise errors[0]
    calls = sum(len(per) for per in samples)
    res = summarize([x for per in samples for x in per])
    return {**res, "value": calls / (wall * 1e-9), "unit": "calls/s", "better": "higher"}


def refs(h: Handle, s: Settings) -> dict[str, Any]:
    """Create and drop remote references one after the other; references per second.

    The rate also counts one ``p.noop()`` after the last reference, so that releases a peer
    sends or handles in the background are paid for before the clock stops.
    """
    samples = sample(h.make_ref, s.refs, warmup=min(100, s.refs // 10))
    t0 = time.perf_counter_ns()
    h.noop()
    flush = time.perf_counter_ns() - t0
    res = summarize(samples)
    return {**res, "value": s.refs / ((sum(samples) + flush) * 1e-9), "unit": "refs/s", "better": "higher"}


def streaming(h: Handle, s: Settings) -> dict[str, Any]:
    """Iterate ``p.numbers(10**6)`` (small ints) to the end; items/s.

    Also times one round trip per item (``p.next_of(g)``, which calls ``next(g)`` in the server,
    on fewer items) and reports ``speedup``: how many times faster streaming is than that.
    """
    n = s.stream_items
    t0 = time.perf_counter_ns()
    total = h.stream_sum(n)
    streamed = time.perf_counter_ns() - t0
    _check(total == n * (n - 1) // 2, f"sum of {n} streamed items")
    k = s.step_items
    t0 = time.perf_counter_ns()
    total = h.step_sum(k)
    stepped = time.perf_counter_ns() - t0
    _check(total == k * (k - 1) // 2, f"sum of {k} items one by one")
    rate, step_rate = n / (streamed * 1e-9), k / (stepped * 1e-9)
    return {
        "value": rate,
        "unit": "items/s",
        "better": "higher",
        "n": n,
        "per_item_round_trip": step_rate,
        "speedup": rate / step_rate,
    }


def async_calls(h: Handle, s: Settings) -> dict[str, Any]:
    """1,000 concurrent awaits of ``p.add(i, 1)`` gathered on one child; calls/s (median of rounds)."""
    samples = []
    for _ in range(s.async_rounds):
        t0 = time.perf_counter_ns()
        h.gather_adds(1000)
        samples.append(time.perf_counter_ns() - t0)
    res = summarize(samples, 1e6, "ms")
    return {**res, "value": 1000 / (res["median_ms"] * 1e-3), "unit": "calls/s", "better": "higher"}


def run(h: Handle, case: str, s: Settings) -> dict[str, Any]:
    """Run one steady-state case on an open handle (an unpinned case runs as its base case)."""
    case = case.removesuffix(UNPINNED)
    if case == "stream_1M":
        return streaming(h, s)
    if case == "async_1000":
        return async_calls(h, s)
    if case in ECHO_SIZES:
        return bandwidth(h, case, s)
    if case.startswith("threads_"):
        return threads(h, int(case.split("_")[1]), s)
    if case == "refs":
        return refs(h, s)
    return latency(h, case, s)
