"""Parent programs for the fault tests, run as `python -m tests.targets.parents SCENARIO`, and the helpers that drive them.

A scenario prints `READY <child pids>` once its children run, then does the thing the test
interrupts or kills; what it observes it prints as `KEY value` lines, which `Parent.results`
collects.  Run in its own session, so that a test may signal its whole process group.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = "tests.targets.faulty"
# Set by Parent(..., warm=True): the scenario starts its children warm (forked from a zygote).
WARM = os.environ.get("SPAWNPROXY_TEST_WARM") == "1"


def gone(pid: int, within: float) -> bool:
    """Wait up to `within` seconds for process `pid` to end (a zombie counts as ended)."""
    import psutil

    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


class Parent:
    """A parent interpreter running one scenario in a session of its own."""

    def __init__(self, scenario: str, *args: str, warm: bool = False) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env["SPAWNPROXY_TEST_WARM"] = "1" if warm else "0"
        self._stderr_file = tempfile.TemporaryFile("w+")  # noqa: SIM115  closed by close()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.targets.parents", scenario, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            text=True,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline().split()
        if not line or line[0] != "READY":
            self.close()
            raise AssertionError(f"scenario {scenario} did not start: {line!r}\n{self.stderr}")
        self.children = [int(pid) for pid in line[1:]]  # and the zygotes, when warm

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    @property
    def stderr(self) -> str:
        """What the parent wrote on stderr so far."""
        self._stderr_file.seek(0)
        return self._stderr_file.read()

    def results(self, timeout: float) -> dict[str, str]:
        """Wait for the parent to exit (killing it past `timeout`); return its `KEY value` lines."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"the parent did not exit within {timeout} s") from None
        assert self.popen.stdout is not None
        found = {}
        for line in self.popen.stdout.read().splitlines():
            key, _, value = line.partition(" ")
            found[key] = value
        found["exitcode"] = str(self.popen.returncode)
        return found

    def close(self) -> None:
        """Kill the parent and every child it started, whatever state they are in."""
        for pid in [self.pid, *getattr(self, "children", [])]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._stderr_file.close()


# -- the scenarios (run in the parent subprocess) ----------------------------------------


def _say(key: str, value: object) -> None:
    print(key, value, flush=True)


def _ready(*proxies: object) -> None:
    import spawnproxy
    from spawnproxy._zygote import zygote_pids

    pids = [spawnproxy.daemon_of(p).pid for p in proxies] + zygote_pids()
    _say("READY", " ".join(map(str, pids)))


def sigint_once() -> None:
    """A long remote call; the test sends one SIGINT."""
    import spawnproxy

    mod = spawnproxy.run_module(TARGET, warm=WARM)
    _ready(mod)
    started = time.monotonic()
    try:
        mod.nap(30)
        _say("RETURNED", 1)
    except KeyboardInterrupt as exc:
        import traceback

        _say("INTERRUPTED_AFTER", time.monotonic() - started)
        _say("REMOTE_FRAME", "in nap" in "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    _say("CHILD_ALIVE", spawnproxy.daemon_of(mod).is_alive())
    _say("NEXT_CALL", mod.ping("usable"))


def sigint_twice() -> None:
    """A remote call that ignores SIGINT; the test sends two."""
    import spawnproxy

    mod = spawnproxy.run_module(TARGET, warm=WARM)
    _ready(mod)
    started = time.monotonic()
    try:
        mod.stubborn(30)
        _say("RETURNED", 1)
    except KeyboardInterrupt:
        _say("ABANDONED_AT", time.monotonic() - started)
    _say("EXITING", time.monotonic())


def group_sigint(where: str) -> None:
    """The parent idles locally ("idle") or waits on a remote call ("call"); the test signals its group."""
    import spawnproxy

    mod = spawnproxy.run_module(TARGET, warm=WARM)
    if where == "idle":
        mod.sigint_default()  # the child would die of any SIGINT that reached it
    _ready(mod)
    try:
        if where == "idle":
            time.sleep(30)
        else:
            mod.nap(30)
    except KeyboardInterrupt:
        _say("INTERRUPTED", 1)
    _say("CHILD_ALIVE", spawnproxy.daemon_of(mod).is_alive())
    _say("NEXT_CALL", mod.ping("usable"))


def sigint_during_send() -> None:
    """Ctrl-C while a large argument is still being written to a busy child."""
    import spawnproxy

    mod = spawnproxy.run_module(TARGET, warm=WARM)
    try:
        with spawnproxy.call_timeout(0.1):
            mod.nap(2)
    except spawnproxy.CallTimeoutError:
        pass
    _ready(mod)
    try:
        mod.echo_len(b"x" * (512 * 1024))  # more than the socket buffer, less than a memfd frame
    except KeyboardInterrupt:
        _say("INTERRUPTED", 1)
    try:
        with spawnproxy.call_timeout(4):  # the busy child is free again after 2 s
            _say("NEXT_CALL", mod.ping("usable"))
    except spawnproxy.SpawnProxyError as exc:
        _say("NEXT_CALL_FAILED", type(exc).__name__)


def killed_while(what: str) -> None:
    """Children busy in various ways; the test kills this parent with SIGKILL."""
    import spawnproxy

    busy = spawnproxy.run_module(TARGET, warm=WARM)
    idle = spawnproxy.run_module(TARGET, warm=WARM)
    deaf = spawnproxy.run_module(TARGET, warm=WARM)
    deaf.ignore_sigterm()
    deaf.sigint_default()
    call = {"hold_gil": lambda: busy.hold_gil(1000), "sleep": lambda: deaf.nap(1000)}[what]
    _ready(busy, idle, deaf)
    call()


def exit_with_children() -> None:
    """Exit normally while children are referenced, some of them busy or deaf to SIGTERM."""
    import psutil

    import spawnproxy

    def check_reaped() -> None:  # registered before spawnproxy's own handler: runs after it
        children = psutil.Process().children(recursive=True)  # warm children are a zygote's
        zombies = [p.pid for p in children if p.status() == psutil.STATUS_ZOMBIE]
        _say("ZOMBIES", len(zombies))
        _say("LEFT", len(children))
        _say("EXIT_DONE", time.monotonic())

    atexit.register(check_reaped)
    mods = [spawnproxy.run_module(TARGET, warm=WARM) for _ in range(4)]
    mods[2].ignore_sigterm()
    mods[3].ignore_sigterm()
    threading.Thread(target=mods[1].nap, args=(1000,), daemon=True).start()
    threading.Thread(target=mods[3].hold_gil, args=(1000,), daemon=True).start()
    time.sleep(0.3)  # the calls are running in the children
    _ready(*mods)
    _say("EXIT_START", time.monotonic())


SCENARIOS = {
    "sigint_once": sigint_once,
    "sigint_twice": sigint_twice,
    "group_sigint": group_sigint,
    "sigint_during_send": sigint_during_send,
    "killed_while": killed_while,
    "exit_with_children": exit_with_children,
}

if __name__ == "__main__":
    # A parent run in the background may inherit SIGINT ignored: these scenarios need Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    SCENARIOS[sys.argv[1]](*sys.argv[2:])
