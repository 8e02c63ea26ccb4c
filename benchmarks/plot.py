"""The PNG: start-up, call latency, bandwidth and throughput per peer, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# title, cases, tick labels, log scale
PANELS = [
    ("Start-up to first answer (ms, median)", ["startup"], ["start-up"], False),
    (
        "Call latency (µs, median; pinned unless marked)",
        ["noop", "add", "get_value", "set_value", "noop_unpinned", "add_unpinned"],
        ["noop()", "add(1, 2)", "read value", "write value", "noop()\nunpinned", "add(1, 2)\nunpinned"],
        False,
    ),
    (
        "Bandwidth there and back (MB/s)",
        ["echo_1KiB", "echo_1MiB", "echo_64MiB", "echo_numpy_64MiB"],
        ["1 KiB", "1 MiB", "64 MiB", "64 MiB NumPy"],
        True,
    ),
    (
        "Throughput (per second)",
        ["threads_2", "threads_8", "refs"],
        ["2 threads", "8 threads", "refs create+drop"],
        True,
    ),
]


def plot(results: dict[str, Any], path: Path) -> None:
    """Draw the four panels, one bar per peer in each group; a case not measured is labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = results["peers"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    width = 0.8 / max(1, len(peers))
    for ax, (title, cases, ticks, log) in zip(axes.flat, PANELS, strict=True):
        if log:
            ax.set_yscale("log")
        for i, p in enumerate(peers.values()):
            for j, case in enumerate(cases):
                x = j + (i - (len(peers) - 1) / 2) * width
                res = p.get("cases", {}).get(case, {})
                if res.get("status") == "ok":
                    ax.bar(x, res["value"], width, color=f"C{i}", label=p["label"] if j == 0 else None)
                else:
                    word = {"unsupported": "n/a", None: "missing"}.get(res.get("status"), "failed")
                    ax.text(
                        x,
                        0.02,
                        word,
                        rotation=90,
                        fontsize=7,
                        ha="center",
                        va="bottom",
                        color=f"C{i}",
                        transform=ax.get_xaxis_transform(),
                    )
        if cases == ["startup"]:
            floor = results["python_floor"]["median_ms"]
            ax.axhline(floor, color="black", linestyle="--", linewidth=1, label="python -c pass")
        ax.set_title(title)
        ax.set_xticks(range(len(cases)), ticks)
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small")
    m = results["machine"]
    fig.suptitle(
        f"spawnproxy and peers — {m['cpu']}, {m['logical_cores']} cores, Python {m['python']}"
        + (" (quick run)" if results["quick"] else "")
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
