"""A real single-node Slurm cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd of
Debian's slurm-wlm (22.05) and munge, run from a temp dir with a generated key and slurm.conf.

`SlurmCluster.start(directory)` raises `ClusterUnavailable` (the daemon's own error as the reason)
where it cannot work: no packages, not root, a daemon that refuses to start.  Every wait is
bounded, and `stop()` ends all three daemons whatever state the start reached.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

MUNGED = "/usr/sbin/munged"
SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
START_TIMEOUT = 30.0

# The node claims more CPUs than this machine may have (with SlurmdParameters=config_overrides,
# slurmd does not check), so that a pool of 4 one-CPU steps runs at once on a 2-core machine.
NODE_CPUS = 8


class ClusterUnavailable(Exception):
    """The cluster cannot run here; the message says why (for pytest.skip)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the daemon before exec: SIGTERM when the test process dies, even where no teardown runs
    (a pytest killed by its timeout or by a signal)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line for line in text.splitlines()[-lines:] if line.strip()) or "(empty log)"


class SlurmCluster:
    """The running cluster: `env` (with SLURM_CONF) for srun, squeue and scancel; `node` its node's name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.node = socket.gethostname().split(".")[0]
        self.conf = directory / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    @classmethod
    def start(cls, directory: Path) -> SlurmCluster:
        """Start munged, slurmctld and slurmd, and wait (bounded) until the node is idle."""
        missing = [p for p in (MUNGED, SLURMCTLD, SLURMD) if not os.access(p, os.X_OK)]
        missing += [c for c in ("srun", "sinfo", "scancel", "squeue") if shutil.which(c) is None]
        if missing:
            raise ClusterUnavailable(
                f"Slurm is not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)"
            )
        if os.geteuid() != 0:
            raise ClusterUnavailable("the Slurm test cluster needs root (slurmd runs job steps as their users)")
        cluster = cls(directory)
        try:
            cluster._start_munged()
            cluster._write_conf()
            cluster._start("slurmctld", [SLURMCTLD, "-D", "-f", str(cluster.conf)])
            # Until the controller listens, sinfo would retry for seconds: wait for its port first.
            cluster._wait("slurmctld", cluster._controller_listens, "slurmctld did not listen")
            cluster._start("slurmd", [SLURMD, "-D", "-f", str(cluster.conf), "-N", cluster.node])
            cluster._wait_idle()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self, name: str, argv: list[str]) -> None:
        log = self.directory / f"{name}.out"
        self.logs[name] = log
        with open(log, "wb") as out:
            self.processes[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _start_munged(self) -> None:
        d = self.directory
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = d / "munge.sock"
        # -f: munged refuses a socket under a world-writable directory (/tmp) unless forced.
        self._start(
            "munged",
            [
                MUNGED, "-F", "-f", f"--socket={self.munge_socket}", f"--key-file={key}",
                f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}",
            ],
        )  # fmt: skip
        self._wait("munged", lambda: self.munge_socket.exists(), "munged did not create its socket")

    def _write_conf(self) -> None:
        d = self.directory
        self.controller_port = _free_port()
        for sub in ("state", "spool"):
            (d / sub).mkdir(exist_ok=True)
        self.conf.write_text(
            "ClusterName=spawnproxytest\n"
            f"SlurmctldHost={self.node}(127.0.0.1)\n"
            f"SlurmctldPort={self.controller_port}\nSlurmdPort={_free_port()}\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={self.munge_socket}\n"
            f"StateSaveLocation={d / 'state'}\nSlurmdSpoolDir={d / 'spool'}\n"
            f"SlurmctldPidFile={d / 'slurmctld.pid'}\nSlurmdPidFile={d / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={d / 'slurmctld.log'}\nSlurmdLogFile={d / 'slurmd.log'}\n"
            "SlurmctldDebug=info\nSlurmdDebug=info\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n"
            "SlurmdParameters=config_overrides\n"
            "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
            "JobCompType=jobcomp/none\nSwitchType=switch/none\nMailProg=/bin/true\n"
            "ReturnToService=2\nSchedulerType=sched/builtin\nKillWait=2\nInactiveLimit=0\n"
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} State=UNKNOWN\n"
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n"
        )

    def _wait(self, name: str, ready: Callable[[], bool], what: str | Callable[[], str]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            process = self.processes[name]
            if process.poll() is not None:
                raise ClusterUnavailable(f"{name} exited with {process.returncode}: {self.reason(name)}")
            if time.monotonic() > deadline:
                said = what() if callable(what) else what
                raise ClusterUnavailable(f"{said} within {START_TIMEOUT:.0f} s: {self.reason(name)}")
            time.sleep(0.1)

    def reason(self, name: str) -> str:
        """The daemon's own words: its output, then its log file."""
        parts = [_tail(self.logs[name])]
        log = self.directory / f"{name}.log"
        if log.exists():
            parts.append(_tail(log))
        return " | ".join(parts)

    def _node_state(self) -> str:
        try:
            done = subprocess.run(
                ["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=5,
            )
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.strip()

    def _controller_listens(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.controller_port), timeout=1).close()
        except OSError:
            return False
        return True

    def _wait_idle(self) -> None:
        states = [""]

        def idle() -> bool:
            for name in ("slurmctld", "slurmd"):
                process = self.processes[name]
                if process.poll() is not None:
                    raise ClusterUnavailable(f"{name} exited with {process.returncode}: {self.reason(name)}")
            states.append(self._node_state())
            return states[-1] == "idle"

        self._wait("slurmd", idle, lambda: f"node {self.node} did not become idle (last state {states[-1]!r})")

    def stop(self) -> None:
        """Cancel the cluster's jobs, end every daemon started (slurmd first), bounded, kill what does
        not end, then any process of this cluster left behind (see `leftovers`)."""
        controller = self.processes.get("slurmctld")
        if controller is not None and controller.poll() is None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=10)
                deadline = time.monotonic() + 10
                while self.leftovers() and time.monotonic() < deadline:
                    time.sleep(0.1)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            # Each runs in its own session: the group holds the helpers it forked.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """Live processes of this cluster's jobs: slurmstepd, the tasks and what they started.  They
        leave the daemons' process groups, but keep an environment that names this cluster's
        slurm.conf (slurmd's, or srun's passed on to the task)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        daemons = {p.pid for p in self.processes.values() if p.poll() is None}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state, _, _, session = f.read().rsplit(b")", 1)[-1].split()[:4]
                if state == b"Z" or int(session) in daemons:
                    continue  # a zombie (already ended), or a daemon and its helpers (stopped apart)
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
        return found
