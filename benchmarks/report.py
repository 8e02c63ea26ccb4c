"""The Markdown report: the machine, a side-by-side summary, every figure in detail, the peers."""

from __future__ import annotations

from typing import Any

from benchmarks.cases import SMALL_CASES, UNPINNED

X = "\u00d7"  # the multiplication sign, written out so that linters do not take it for an x

LABELS = {
    "startup": ("start-up to first answer", "ms"),
    "noop": ("`p.noop()`", "µs"),
    "add": ("`p.add(1, 2)`", "µs"),
    "get_value": ("`p.value` (read)", "µs"),
    "set_value": ("`p.value = 3`", "µs"),
    "echo_1KiB": ("`p.echo(data)`, 1 KiB bytes", "MB/s"),
    "echo_1MiB": ("`p.echo(data)`, 1 MiB bytes", "MB/s"),
    "echo_64MiB": ("`p.echo(data)`, 64 MiB bytes", "MB/s"),
    "echo_numpy_64MiB": ("`p.echo(data)`, 64 MiB NumPy array", "MB/s"),
    "threads_2": ("2 threads, one proxy", "calls/s"),
    "threads_8": ("8 threads, one proxy", "calls/s"),
    "refs": ("create + drop a remote reference", "refs/s"),
    "stream_1M": ("iterate a remote generator of 10⁶ ints", "items/s"),
    "async_1000": ("1,000 concurrent awaits (asyncio)", "calls/s"),
}
for _case in SMALL_CASES:
    LABELS[_case + UNPINNED] = (LABELS[_case][0] + ", unpinned", LABELS[_case][1])

HOW_TO_READ = f"""\
How to read this: every figure comes from one run on this machine. Latencies are medians (and
p99) of single calls timed with `time.perf_counter_ns` after a warm-up. Bandwidth counts the
bytes that travel there and back (2 {X} size) over the median round trip, in MB/s (10⁶ bytes/s).
Thread and reference cases report calls (or references) per second; their median and p99 are
per call. **{X} raw** divides each figure by the same case's figure for the raw Pipe echo (a
spawned child sending each pickled message straight back on a `multiprocessing.Pipe`), so
below 1.0 is better for times and above 1.0 is better for rates. The socket-pair echo, where it
ran, is the transport's floor: a fresh interpreter writing each frame back unread. *n/a* marks a case the peer
cannot do by design, *failed* one that raised, hung or gave a wrong answer; the reasons are
listed under the details.
"""

PINNED = """† Measured with the client, the server and all their threads pinned to one CPU: on a small
virtual machine an unpinned ping-pong costs two to three times more whenever the scheduler puts
the two processes on different CPUs, and it moves them mid-run, so unpinned medians follow the
placement rather than the code (`--pin none` measures unpinned). Each of these cases runs again
unpinned (the rows marked *unpinned*): that is what a caller sees. Bandwidth, threads and start-up
always run unpinned.
"""


def number(x: float) -> str:
    """A figure with three significant digits, or whole with thousands separators when large."""
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 1 else f"{x:.2g}"


def span(res: dict[str, Any], key: str) -> str:
    """A time sample (median or p99) with a unit that fits."""
    if f"{key}_ms" in res:
        return f"{number(res[f'{key}_ms'])} ms"
    if f"{key}_us" not in res:
        return ""
    us = res[f"{key}_us"]
    return f"{number(us / 1000)} ms" if us >= 1000 else f"{number(us)} µs"


def _cell(res: dict[str, Any] | None, notes: list[str], where: str) -> str:
    if not res:
        return "—"
    if res["status"] != "ok":
        notes.append(f"{where}: {res.get('error', '')}")
        word = "n/a" if res["status"] == "unsupported" else "failed"
        return f"{word} [{len(notes)}]"
    ratio = f" · {res['ratio']:.2f}{X}" if "ratio" in res else ""
    return f"{number(res['value'])}{ratio}"


def _escape(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    m = results["machine"]
    peers = results["peers"]
    floor = results["python_floor"]
    lines = [
        "# spawnproxy benchmarks",
        "",
        f"Run {results['generated']}{' with `--quick`' if results['quick'] else ''} in {results['duration_s']} s.",
        "",
        f"**Machine:** {m['cpu']}, {m.get('physical_cores', '?')} physical / "
        f"{m['logical_cores']} logical cores, {m.get('memory_gib', '?')} GiB, {m['os']}; "
        f"{m['implementation']} {m['python']}.",
        f"**Floor:** `python -c pass` on this interpreter takes {number(floor['median_ms'])} ms "
        f"(median, p99 {number(floor['p99_ms'])} ms, n={floor['n']}).",
        "",
        HOW_TO_READ,
        f"## Summary (figure · {X} raw)",
        "",
        "| case | unit | " + " | ".join(p["label"] for p in peers.values()) + " |",
        "| --- | --- |" + " ---: |" * len(peers),
    ]
    notes: list[str] = []
    pinned = set(results.get("pinned_cases", []))
    for case in results["cases"]:
        label, unit = LABELS[case]
        unit += " †" if case in pinned else ""
        cells = [
            _cell(p["cases"].get(case), notes, f"{p['label']}, {label}") if p["status"] == "ok" else "missing"
            for p in peers.values()
        ]
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    startups = [
        f"{p['label']} {p['cases']['startup']['vs_python_floor']:.1f}{X}"
        for p in peers.values()
        if "vs_python_floor" in p.get("cases", {}).get("startup", {})
    ]
    lines += ["", "Start-up as a multiple of `python -c pass`: " + ", ".join(startups) + "."]
    if pinned:
        lines += ["", PINNED]
    lines += [
        "",
        "## Details",
        "",
        f"| case | peer | figure | {X} raw | median | p99 | n |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in results["cases"]:
        label, unit = LABELS[case]
        for p in peers.values():
            res = p.get("cases", {}).get(case)
            if not res or res["status"] != "ok":
                continue
            ratio = f"{res['ratio']:.2f}{X}" if "ratio" in res else ""
            lines.append(
                f"| {label} | {p['label']} | {number(res['value'])} {unit} | {ratio} | "
                f"{span(res, 'median')} | {span(res, 'p99')} | {res.get('n', '')} |"
            )
    lines += _pools(results, notes)
    if notes:
        lines += ["", "Not measured:", ""]
        lines += [f"{i}. {_escape(text)}" for i, text in enumerate(notes, 1)]
    lines += ["", "## Peers", ""]
    for p in [*peers.values(), *results.get("pools", {}).values()]:
        version = p.get("version", "")
        version = f"(Python {version})" if p.get("dist") is None and version else version
        lines.append(
            f"- **{p['label']}** {version}" + (f" — missing: {_escape(p['error'])}" if p["status"] == "missing" else "")
        )
        lines += [f"  - {note}" for note in p.get("notes", [])]
    return "\n".join(lines) + "\n"


def _pools(results: dict[str, Any], notes: list[str]) -> list[str]:
    """The pool rows: each pool's figure and its ratio to ProcessPoolExecutor's (`benchmarks/pools.py`)."""
    from benchmarks.pools import LABELS as POOL_LABELS

    pools = results.get("pools", {})
    if not pools:
        return []
    lines = [
        "",
        f"## Pools (figure · {X} ProcessPoolExecutor)",
        "",
        "One worker per CPU (4 for the time to first result), every pool on fresh interpreters;",
        f"{X} ProcessPoolExecutor is above 1.0 better for tasks/s, below 1.0 better for times.",
        "",
        "| case | unit | " + " | ".join(p["label"] for p in pools.values()) + " |",
        "| --- | --- |" + " ---: |" * len(pools),
    ]
    for case in results.get("pool_cases", []):
        label, unit = POOL_LABELS[case]
        cells = [
            _cell(p["cases"].get(case), notes, f"{p['label']}, {label}") if p["status"] == "ok" else "missing"
            for p in pools.values()
        ]
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    floors = [
        res["floor"] for p in pools.values() if (res := p.get("cases", {}).get("pool_sleep_64x50ms", {})).get("floor")
    ]
    if floors:
        lines += ["", f"The floor of 64 tasks of 50 ms on these CPUs is {number(floors[0])} s."]
    return lines
