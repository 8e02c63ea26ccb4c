"""What running children as Slurm job steps costs: the srun rows, beside the same figures for local children.

Usage: ``python benchmarks/slurm_cost.py [--quick] [--json FILE]`` (as root, with Debian's
slurm-wlm and munge installed: it starts the one-node cluster of the tests, on 127.0.0.1, in a
temp dir, and stops it at the end).  Prints a markdown table; ``--json`` also writes every
sample.  Exits with status 2 and one line saying why where the cluster cannot start.

Rows, each for local children and for children through ``spawnproxy.slurm()``:

- start-up: from ``run_script`` to the child's first answer (median of fresh children);
- one call: ``p.square(i)`` round trip (median);
- per task, ``Pool(max_workers=4).map`` with chunksize 64 over 20,000 tiny tasks;
- per task, ``Pool(max_workers=4).submit`` one at a time for 2,000 tiny tasks (all in flight);
- a Pool of 4: constructor to first result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import spawnproxy  # noqa: E402
from tests.slurm_cluster import ClusterUnavailable, SlurmCluster  # noqa: E402

SCRIPT = "def square(x):\n    return x * x\n"
WORKERS = 4


def start_up(options: dict[str, Any], runs: int) -> list[float]:
    """Seconds from run_script to the first answer, one fresh child per run."""
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        mod = spawnproxy.run_script(SCRIPT, python_exe=sys.executable, **options)
        mod.square(2)
        samples.append(time.perf_counter() - began)
        mod.terminate_daemon()
    return samples


def calls(options: dict[str, Any], count: int) -> list[float]:
    """Seconds per round trip of one small call, after a warm-up."""
    mod = spawnproxy.run_script(SCRIPT, python_exe=sys.executable, **options)
    try:
        for i in range(50):
            mod.square(i)
        samples = []
        for i in range(count):
            began = time.perf_counter()
            mod.square(i)
            samples.append(time.perf_counter() - began)
        return samples
    finally:
        mod.terminate_daemon()


def pool_figures(options: dict[str, Any], tasks: int) -> dict[str, float]:
    """A Pool of WORKERS children: constructor to first result, then seconds per task by map and by submit."""
    began = time.perf_counter()
    pool = spawnproxy.Pool(  # type: ignore[attr-defined]
        spawnproxy.ScriptDefinition(SCRIPT), max_workers=WORKERS, python_exe=sys.executable, **options
    )
    with pool:
        pool.submit("square", 3).result()
        first = time.perf_counter() - began
        pool.proxies  # every child started, before the clocks below run  # noqa: B018
        list(pool.map("square", range(1000), chunksize=64))
        began = time.perf_counter()
        assert list(pool.map("square", range(tasks), chunksize=64))[-1] == (tasks - 1) ** 2
        mapped = (time.perf_counter() - began) / tasks
        count = tasks // 10
        began = time.perf_counter()
        futures = [pool.submit("square", i) for i in range(count)]
        assert [f.result() for f in futures][-1] == (count - 1) ** 2
        submitted = (time.perf_counter() - began) / count
    return {"first_result_s": first, "map_per_task_s": mapped, "submit_per_task_s": submitted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (about 20 s)")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args(argv)
    if not hasattr(spawnproxy, "Pool"):
        print("slurm_cost: needs spawnproxy.Pool and launcher= (issue 17)", file=sys.stderr)
        return 2
    runs, count, tasks = (3, 300, 4000) if args.quick else (9, 2000, 20000)
    try:
        cluster = SlurmCluster.start(Path(tempfile.mkdtemp(prefix="spawnproxy-slurm-bench-")))
    except ClusterUnavailable as error:
        print(f"slurm_cost: no Slurm cluster: {error}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    try:
        kinds = {"local": {}, "srun": {"launcher": ["env", f"SLURM_CONF={cluster.conf}", *spawnproxy.slurm()]}}
        for name, options in kinds.items():
            results[name] = {
                "start_up_s": start_up(options, runs),
                "call_s": calls(options, count),
                **pool_figures(options, tasks),
            }
    finally:
        cluster.stop()
    rows = [
        ("start-up to first answer (median)", lambda r: statistics.median(r["start_up_s"]) * 1e3, "ms"),
        ("one call (median)", lambda r: statistics.median(r["call_s"]) * 1e6, "µs"),
        (f"Pool({WORKERS}).map, chunksize 64, per task", lambda r: r["map_per_task_s"] * 1e6, "µs"),
        (f"Pool({WORKERS}).submit, per task", lambda r: r["submit_per_task_s"] * 1e6, "µs"),
        (f"Pool({WORKERS}): constructor to first result", lambda r: r["first_result_s"] * 1e3, "ms"),
    ]
    print("| case | local | through srun | ratio |\n| --- | --- | --- | --- |")
    for label, figure, unit in rows:
        local, srun = figure(results["local"]), figure(results["srun"])
        print(f"| {label} | {local:.1f} {unit} | {srun:.1f} {unit} | {srun / local:.1f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
