"""Run the cases of one peer and report each as a JSON line (run by `run.py`, one per peer).

Usage: ``python benchmarks/worker.py PEER --cases a,b,c [--quick]``.

Results go to the original stdout, one JSON object per line: ``{"event": "begin", "case": ...}``
before a case and ``{"event": "result", "case": ..., "status": "ok" | "failed" | "unsupported"}``
after it. Everything else the process or its children print is sent to stderr. A case that
fails makes the worker drop its server and start a new one for the next case. Imports are made
in `main` so that a ``spawn`` child, which re-runs this file as ``__mp_main__``, stays light.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any


def _emitter() -> IO[str]:
    """Keep the real stdout for results; point file descriptor 1 at stderr for everything else."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    return out


def _error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"[:2000]


def _discard(handle: Any) -> None:
    """Close a handle that may be broken: give it 5 s, then kill what this worker started."""
    closer = threading.Thread(target=handle.close, daemon=True)
    closer.start()
    closer.join(5)
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            child.kill()
    except Exception as exc:  # psutil missing or a child already gone
        print(f"worker: cleanup: {exc!r}", file=sys.stderr)


def _version(module: Any) -> str:
    from importlib import metadata

    if module.DIST is None:
        return sys.version.split()[0]
    try:
        return metadata.version(module.DIST)
    except metadata.PackageNotFoundError:
        top = sys.modules.get(module.DIST)
        return str(getattr(top, "__version__", "unknown"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer")
    parser.add_argument("--cases", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pin", choices=["one-cpu", "none"], default="one-cpu")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import importlib

    from benchmarks import cases, pinning
    from benchmarks.peers import PEERS
    from benchmarks.peers.base import Unsupported

    out = _emitter()

    def emit(**msg: Any) -> None:
        out.write(json.dumps(msg) + "\n")

    try:
        module = importlib.import_module(PEERS[args.peer][0])
    except Exception as exc:
        emit(event="missing", error=_error(exc))
        return 0
    emit(event="info", version=_version(module), dist=module.DIST, notes=module.NOTES)
    settings = cases.Settings.make(args.quick)
    handle = None
    for case in args.cases.split(","):
        emit(event="begin", case=case)
        try:
            if case == "startup":
                res = cases.startup(module.start, settings)
            else:
                if handle is None:
                    handle = module.start()
                pin = args.pin == "one-cpu" and case in pinning.PINNED_CASES
                with pinning.one_cpu(pin) as cpu:
                    res = cases.run(handle, case, settings)
                res["pinned_cpu"] = cpu
            emit(event="result", case=case, status="ok", **res)
        except Unsupported as exc:
            emit(event="result", case=case, status="unsupported", error=str(exc))
        except Exception as exc:
            emit(event="result", case=case, status="failed", error=_error(exc))
            if handle is not None:
                _discard(handle)
                handle = None
    if handle is not None:
        _discard(handle)
    emit(event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
