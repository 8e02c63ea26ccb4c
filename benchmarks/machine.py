"""What the numbers were measured on: CPU model, cores, memory, OS, Python, package versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

from benchmarks.cases import summarize

PACKAGES = ["spawnproxy", "spawny", "rpyc", "Pyro5", "execnet", "numpy", "msgpack"]


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """A description of this machine and interpreter."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "packages": {name: _version(name) for name in PACKAGES},
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def python_floor(n: int) -> dict[str, Any]:
    """Time ``python -c pass`` on this interpreter: the floor of any fresh child's start-up."""
    samples = []
    for i in range(n + 1):
        t0 = time.perf_counter_ns()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        if i:  # the first run only warms the file cache
            samples.append(time.perf_counter_ns() - t0)
    return summarize(samples, 1e6, "ms")
