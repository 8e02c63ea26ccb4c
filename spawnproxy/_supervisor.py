"""The supervisor of a detached daemon: the process `_detach` starts with `python -c`.

It leaves the starter's process tree (a double fork and a new session), sends
its output to the daemon's bounded log, runs `serve` in the foreground,
writes the state file, reports one line to the starter, and ends the daemon
on SIGTERM (or when it ends by itself).

Uses `_server` (serve), `_serialize` (the spec the starter sent) and `_statefile`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

from . import _serialize
from ._addresses import format_address
from ._child import protocol
from ._errors import SpawnProxyError
from ._output import CHILD_LOGGERS
from ._server import serve
from ._statefile import RotatingLog, open_log, write_private

log = logging.getLogger("spawnproxy")


def supervise() -> None:
    """The detached daemon's supervisor: leave the starter's process tree, serve, report, wait."""
    data = sys.stdin.buffer.read()  # the starter's sys.path (see _detach.start_detached), then the spec
    size = int.from_bytes(data[:4], "big")
    starter_path = _serialize.decode(protocol.TAG_PICKLE, data[4 : 4 + size])
    sys.path[:] = starter_path + [p for p in sys.path if p not in starter_path]
    spec = _serialize.loads_with_dill(data[4 + size :])
    if os.fork():
        os._exit(0)  # the starter reaps this one at once; the daemon is nobody's child
    os.setsid()
    # The report goes through a private copy of the pipe: whatever the daemon prints
    # while it starts must land in the log, not in the starter's reading.
    report = os.fdopen(os.dup(1), "w")
    try:
        log_fd, _ = open_log(spec["log_file"])
    except OSError as exc:  # (the starter checked it: something changed it since)
        report.write(json.dumps({"ok": False, "error": str(exc)}) + "\n")
        report.close()
        os._exit(1)
    # Everything the daemon and this process write goes through one bounded log.
    sys.stdout = sys.stderr = RotatingLog(spec["log_file"], log_fd, spec["log_max_bytes"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The daemon's records (see _output) land in the log down to the daemon's own levels.
    logging.getLogger(CHILD_LOGGERS).setLevel(logging.DEBUG)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        server = serve(
            spec["definition"],
            spec["address"],
            spec["authkey"],
            python_exe=spec["python_exe"],
            handshake_timeout=spec["handshake_timeout"],
            keepalive=spec["keepalive"],
            allow_plaintext=True,  # the starter's serve() has checked the address
            **spec["files"],
            **spec["options"],
        )
    except BaseException as exc:
        error = str(exc) if isinstance(exc, SpawnProxyError) else f"{type(exc).__name__}: {exc}"
        remote = getattr(exc, "remote_traceback", None)
        report.write(json.dumps({"ok": False, "error": error, "remote_traceback": remote}) + "\n")
        report.close()
        os._exit(1)
    server.supervisor = os.getpid()
    server.state_file = spec["state_file"]
    state = server.state()
    write_private(spec["state_file"], json.dumps(state, indent=2) + "\n")
    try:
        report.write(json.dumps({"ok": True, **state}) + "\n")
        report.close()
    except OSError:  # the starter gave up waiting: nobody knows of this daemon
        server.terminate()
        os._exit(1)
    log.info("daemon %d serves %s on %s", server.pid, type(spec["definition"]).__name__, format_address(server.address))
    while not stop.wait(0.5):
        if not server.is_alive():
            log.warning("daemon %d ended by itself", server.pid)
            break
    server.terminate()  # the daemon, its Unix socket and the state file
    log.info("daemon %d stopped", server.pid)
    logging.shutdown()
    os._exit(0)
