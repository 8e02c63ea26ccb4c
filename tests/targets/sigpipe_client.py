"""A client that restores SIGPIPE's default action, as many programs do.

Run as `python -m tests.targets.sigpipe_client ADDRESS KEYHEX`.  Opens two
connections, starts `nap(30)` on the first and prints `READY`; the test then
kills the daemon.  It prints `MIDCALL <what the call raised>`, waits for a
line on stdin, then calls on the idle second connection and on the first
again, printing `IDLE ...` and `AGAIN ...`.

Or as `python -m tests.targets.sigpipe_client ssh URL OPTIONS_JSON`: starts a
child through ssh, prints `READY <ssh pid>`, waits for a line on stdin (the
test kills ssh meanwhile) and calls, printing `IDLE ...` and `AGAIN ...`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import spawnproxy


def outcome(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except Exception as exc:
        return type(exc).__name__
    return "returned"


def through_ssh(url: str, options: list[str]) -> None:
    child = spawnproxy.run_script("def add(a, b):\n    return a + b\n", python_exe=url, ssh_options=options)
    assert child.add(1, 2) == 3
    print("READY", spawnproxy.daemon_of(child).pid, flush=True)
    sys.stdin.readline()
    print("IDLE", outcome(lambda: child.add(1, 2)), flush=True)
    print("AGAIN", outcome(lambda: child.add(1, 2)), flush=True)


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if sys.argv[1] == "ssh":
        through_ssh(sys.argv[2], json.loads(sys.argv[3]))
        return
    address, key = sys.argv[1], bytes.fromhex(sys.argv[2])
    busy = spawnproxy.connect(address, key)
    idle = spawnproxy.connect(address, key)
    assert idle.add(1, 2) == 3
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(outcome(lambda: busy.nap(30))))
    thread.start()
    time.sleep(0.2)
    print("READY", flush=True)
    thread.join(20)
    print("MIDCALL", results[0] if results else "hung", flush=True)
    sys.stdin.readline()
    print("IDLE", outcome(lambda: idle.add(1, 2)), flush=True)
    print("AGAIN", outcome(lambda: busy.add(1, 2)), flush=True)


if __name__ == "__main__":
    main()
