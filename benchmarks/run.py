"""Benchmark spawnproxy against its peers and the raw Pipe echo, in one run on one machine.

Usage: ``python benchmarks/run.py [--quick] [--out DIR] [--only PEER,...] [--cases CASE,...] [--pin one-cpu|none]``.

Each peer runs in a worker process of its own (``worker.py``), which starts the peer's servers
fresh. A case that hangs past its time limit is killed with its worker (and the worker's
children), reported as failed, and the peer goes on with its next case in a new worker. Writes
``results.md``, ``results.json`` and ``plot.png`` to the output directory.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START_LIMIT_S = 60.0


def case_limit(case: str, quick: bool) -> float:
    """How long one case may take, server start included, before it counts as hung."""
    big = "64MiB" in case
    if quick:
        return 60.0 if big else 30.0
    return 300.0 if big else 120.0


def _reader(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the worker and every process it started (they share its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: str, n: int = 6) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.rstrip() for line in f if line.strip()]
    return " | ".join(lines[-n:])


def _follow(
    proc: subprocess.Popen[str],
    peer: str,
    remaining: list[str],
    out: dict[str, Any],
    quick: bool,
    errpath: str,
    log: Any,
) -> tuple[str | None, str]:
    """Record a worker's results as they come; return the case it left unfinished, and why."""
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    current: str | None = None
    limit = START_LIMIT_S
    deadline = time.monotonic() + limit
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            if not remaining:  # every case reported; the worker hung while closing
                return None, ""
            return current or remaining[0], f"timed out after {limit:g} s (killed)"
        if line is None:
            if not remaining:
                return None, ""
            return current or remaining[0], f"worker exited with code {proc.wait()}: {_tail(errpath)}"
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        event = msg.pop("event")
        if event == "missing":
            out.update(status="missing", error=msg["error"])
            remaining.clear()
        elif event == "info":
            out.update(msg)
        elif event == "begin":
            current = msg["case"]
            limit = case_limit(current, quick)
            deadline = time.monotonic() + limit
        elif event == "result":
            case = msg.pop("case")
            out["cases"][case] = msg
            remaining.remove(case)
            current, limit = None, START_LIMIT_S
            deadline = time.monotonic() + limit
            print(f"  {peer:<11} {case:<17} {describe(msg)}", file=log, flush=True)
        if event in ("done", "missing"):
            for case in remaining:
                out["cases"][case] = {"status": "failed", "error": "the worker did not report it"}
            remaining.clear()
            return None, ""


def run_peer(peer: str, cases: list[str], quick: bool, pin: str, log: Any, worker: str = "worker.py") -> dict[str, Any]:
    """Run every case of one peer, restarting its worker after a hang or a crash.

    `worker` is the script that runs the cases: `worker.py`, or `pools.py` for a pool.
    """
    out: dict[str, Any] = {"status": "ok", "cases": {}}
    remaining = list(cases)
    while remaining:
        cmd = [sys.executable, str(HERE / worker), peer, "--cases", ",".join(remaining), "--pin", pin]
        with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as err:
            errpath = err.name
            proc = subprocess.Popen(
                cmd + (["--quick"] if quick else []),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        try:
            case, error = _follow(proc, peer, remaining, out, quick, errpath, log)
        finally:  # also on Ctrl-C: the worker runs in a session of its own
            _kill_group(proc)
            if proc.stdout is not None:
                proc.stdout.close()
            os.unlink(errpath)
        if case is not None and case in remaining:
            out["cases"][case] = {"status": "failed", "error": error}
            remaining.remove(case)
            print(f"  {peer:<11} {case:<17} failed: {error}", file=log, flush=True)
    return out


def describe(res: dict[str, Any]) -> str:
    """One line for the console."""
    if res["status"] != "ok":
        return f"{res['status']}: {res.get('error', '')[:120]}"
    extra = f" ({res['speedup']:.0f}x one round trip per item)" if "speedup" in res else ""
    return f"{res['value']:.4g} {res['unit']}{extra}"


def add_ratios(peers: dict[str, Any], baseline: str, floor: dict[str, Any]) -> None:
    """Each figure divided by the same case's figure for the baseline (the raw Pipe echo)."""
    base = peers.get(baseline, {}).get("cases", {})
    for data in peers.values():
        for case, res in data.get("cases", {}).items():
            ref = base.get(case, {})
            if res.get("status") == "ok" and ref.get("status") == "ok" and ref["value"]:
                res["ratio"] = res["value"] / ref["value"]
            if case == "startup" and res.get("status") == "ok":
                res["vs_python_floor"] = res["median_ms"] / floor["median_ms"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (about 2 minutes)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    parser.add_argument(
        "--only",
        help="comma-separated peers and pools (raw_pipe, the baseline, runs with any peer; "
        "pool_futures, the pools' baseline, with any pool)",
    )
    parser.add_argument(
        "--cases",
        help="comma-separated cases of the peer table (e.g. noop,echo_1KiB,echo_1MiB; default: all); "
        "with it, no pool runs unless --only names one",
    )
    parser.add_argument(
        "--pin",
        choices=["one-cpu", "none"],
        default="one-cpu",
        help="pin client and server to one CPU for the small round-trip cases (default), or never",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    from benchmarks import cases, machine, pinning, plot, pools, report
    from benchmarks.peers import BASELINE, PEERS

    names, pool_names = list(PEERS), list(pools.POOLS)
    wanted: set[str] = set()
    if args.only:
        wanted = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = wanted - set(PEERS) - set(pools.POOLS)
        if unknown:
            parser.error(f"unknown peers {sorted(unknown)}; choose from {', '.join([*PEERS, *pools.POOLS])}")
        names = [name for name in PEERS if name in wanted or (name == BASELINE and wanted & set(PEERS))]
        pool_names = [
            name
            for name in pools.POOLS
            if name in wanted or (name == pools.POOL_BASELINE and wanted & set(pools.POOLS))
        ]

    case_names = list(cases.CASES)
    if args.cases:
        case_names = [name.strip() for name in args.cases.split(",") if name.strip()]
        unknown = set(case_names) - set(cases.CASES)
        if unknown:
            parser.error(f"unknown cases {sorted(unknown)}; choose from {', '.join(cases.CASES)}")
        if not set(pool_names) & wanted:
            pool_names = []

    started = time.monotonic()
    info = machine.machine_info()
    print(f"machine: {info['cpu']}, {info['logical_cores']} cores, Python {info['python']}", flush=True)
    floor = machine.python_floor(cases.Settings.make(args.quick).startups * 2)
    print(f"  python -c pass    {floor['median_ms']:.4g} ms", flush=True)
    peers: dict[str, Any] = {}
    for name in names:
        print(f"{PEERS[name][1]}:", flush=True)
        result = run_peer(name, case_names, args.quick, args.pin, sys.stdout)
        peers[name] = {"label": PEERS[name][1], **result}
        if peers[name]["status"] == "missing":
            print(f"  missing: {peers[name]['error']}", flush=True)
    pool_results: dict[str, Any] = {}
    for name in pool_names:
        print(f"{pools.POOLS[name]}:", flush=True)
        result = run_peer(name, pools.CASES, args.quick, "none", sys.stdout, worker="pools.py")
        pool_results[name] = {"label": pools.POOLS[name], **result}
        if result["status"] == "missing":
            print(f"  missing: {result['error']}", flush=True)
    add_ratios(peers, BASELINE, floor)
    add_ratios(pool_results, pools.POOL_BASELINE, floor)
    results = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": info,
        "python_floor": floor,
        "baseline": BASELINE,
        "pinned_cases": sorted(pinning.PINNED_CASES) if args.pin == "one-cpu" and pinning.available() else [],
        "cases": case_names,
        "peers": peers,
        "pool_cases": pools.CASES,
        "pools": pool_results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (args.out / "results.md").write_text(report.markdown(results), encoding="utf-8")
    try:
        plot.plot(results, args.out / "plot.png")
    except ImportError as exc:
        print(f"no plot: {exc}", file=sys.stderr)
    print(f"wrote {args.out}/results.md, results.json, plot.png in {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
