"""spawnproxy.slurm(): children as Slurm job steps, on a real one-node cluster on 127.0.0.1
(tests/slurm_cluster.py: munged, slurmctld and slurmd of Debian's slurm-wlm, started once)."""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import pytest

import spawnproxy
from spawnproxy import _options
from tests.conftest import child_interpreters
from tests.slurm_cluster import ClusterUnavailable, SlurmCluster

pytestmark = pytest.mark.timeout(60)

HAS_LAUNCHER = "launcher" in {f.name for f in dataclasses.fields(_options.Options)}
HAS_POOL = hasattr(spawnproxy, "Pool")
needs_launcher = pytest.mark.skipif(not HAS_LAUNCHER, reason="needs launcher= (issue 17, launcher part)")
needs_pool = pytest.mark.skipif(not HAS_POOL, reason="needs spawnproxy.Pool")
# A child's start through srun takes 0.1-0.3 s here: a broken launcher fails with its reason
# (DaemonStartError) well before the test's own timeout.
START = 20.0

# What the children run: their Slurm identity, work that takes a while, and SPEC §3's usual suspects.
SCRIPT = """
import os, time

def where():
    return os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID"), os.environ.get("SLURMD_NODENAME")

def nap(seconds):
    time.sleep(seconds)
    return os.environ.get("SLURM_JOB_ID")

def square(x):
    return x * x

def inner():
    raise KeyError("deep on the node")

def outer():
    inner()

def apply(function, value):
    return function(value)

def count(n):
    for i in range(n):
        yield i

def echo(value):
    return value

items = [1, 2, 3]
"""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The one-node cluster, started once for the session; its tests skip with the reason where it cannot run."""
    try:
        started = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as error:
        pytest.skip(str(error))
    try:
        yield started
    finally:
        started.stop()


def launcher_of(cluster: SlurmCluster, **options: Any) -> list[str]:
    """slurm()'s list, with this cluster's configuration named to srun (env is a launcher too)."""
    return ["env", f"SLURM_CONF={cluster.conf}", *spawnproxy.slurm(**options)]


def srun_python(cluster: SlurmCluster, code: str, *srun_options: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["srun", *srun_options, "-N1", "-n1", sys.executable, "-c", code],
        env=cluster.env,
        capture_output=True,
        timeout=30,
    )


# ==== The launcher list (no cluster needed) =========================================================


def test_default_launcher_is_one_unbuffered_task() -> None:
    """slurm() is srun with one node, one task, unbuffered and quiet."""
    assert spawnproxy.slurm() == ["srun", "--unbuffered", "--quiet", "--nodes=1", "--ntasks=1"]


def test_each_option_maps_to_its_srun_option() -> None:
    """Each keyword adds the srun option of the same meaning, `extra` goes last as given."""
    command = spawnproxy.slurm(
        nodes="1-2",
        nodelist=["n1", "n2"],
        partition="gpu",
        time="1:30:00",
        cpus_per_task=4,
        mem="4G",
        extra=["--exclusive", "--gres=gpu:1"],
    )
    assert command == [
        "srun", "--unbuffered", "--quiet", "--nodes=1-2", "--ntasks=1", "--nodelist=n1,n2", "--partition=gpu",
        "--time=1:30:00", "--cpus-per-task=4", "--mem=4G", "--exclusive", "--gres=gpu:1",
    ]  # fmt: skip
    assert spawnproxy.slurm(time=30, mem=2048, nodelist="node[01-04]")[-3:] == [
        "--nodelist=node[01-04]",
        "--time=30",
        "--mem=2048",
    ]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"nodes": 0}, ValueError, "nodes must be at least 1"),
        ({"nodes": "two"}, ValueError, "nodes must be a count or a range"),
        ({"nodes": True}, TypeError, "nodes must be an int"),
        ({"partition": "a b"}, ValueError, "partition 'a b' is not a name"),
        ({"partition": 3}, TypeError, "partition must be a str"),
        ({"nodelist": []}, TypeError, "nodelist must be a str or a non-empty sequence"),
        ({"nodelist": ["a", "b c"]}, ValueError, "a nodelist entry 'b c' is not a name"),
        ({"time": "soon"}, ValueError, "time 'soon' is not a Slurm time"),
        ({"time": 0}, ValueError, "time must be at least 1"),
        ({"time": 1.5}, TypeError, "time must be minutes"),
        ({"cpus_per_task": "4"}, TypeError, "cpus_per_task must be an int"),
        ({"mem": "lots"}, ValueError, "mem 'lots' is not a Slurm size"),
        ({"extra": "--exclusive"}, TypeError, "extra must be a sequence of str"),
        ({"extra": ["--x\0"]}, ValueError, "NUL"),
    ],
)
def test_bad_options_fail_with_one_line(options: dict[str, Any], error: type[Exception], match: str) -> None:
    """A bad option is a one-line TypeError/ValueError naming it, before anything starts."""
    with pytest.raises(error, match=match) as info:
        spawnproxy.slurm(**options)
    assert "\n" not in str(info.value) and str(info.value).startswith("slurm(): ")


# ==== The cluster itself, and slurm()'s command line on it =========================================


def test_fixture_runs_a_task_whose_binary_output_comes_back_intact(cluster: SlurmCluster) -> None:
    """srun --unbuffered passes a task's binary stdout (no newlines, every byte value) through unchanged."""
    code = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096); sys.stdout.flush()"
    done = srun_python(cluster, code, "--unbuffered")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == bytes(range(256)) * 4096


def test_slurm_command_line_starts_python_as_a_job_step_on_the_node(cluster: SlurmCluster) -> None:
    """[*slurm(), python, "-c", ...] runs that Python as a job step of the cluster's node."""
    code = (
        "import os; print('ok', os.environ['SLURM_JOB_ID'], os.environ['SLURM_STEP_ID'], os.environ['SLURMD_NODENAME'])"
    )
    done = subprocess.run(
        [*spawnproxy.slurm(), sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    word, job, step, node = done.stdout.split()
    assert (word, node) == ("ok", cluster.node)
    assert job.isdigit() and step.isdigit()
    assert done.stderr == ""  # --quiet: no "srun: job N queued and waiting" chatter


def test_slurm_command_line_passes_its_options_to_srun(cluster: SlurmCluster) -> None:
    """The options reach srun: a task asking for a missing partition is refused by Slurm, one that fits runs."""
    code = "import os; print(os.environ['SLURM_CPUS_PER_TASK'])"
    done = subprocess.run(
        [*spawnproxy.slurm(partition="debug", cpus_per_task=2, time=5), sys.executable, "-c", code],
        env=cluster.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "2"), done.stderr
    refused = subprocess.run(
        [*spawnproxy.slurm(partition="nosuch"), sys.executable, "-c", "print('ran')"],
        env=cluster.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode != 0 and "ran" not in refused.stdout
    assert "partition" in refused.stderr.lower()


# ==== Children through the launcher (SPEC §3 through srun) =========================================


@pytest.fixture
def remote(cluster: SlurmCluster) -> Iterator[Any]:
    """One child, started as a Slurm job step."""
    mod = spawnproxy.run_script(SCRIPT, launcher=launcher_of(cluster), python_exe=sys.executable, start_timeout=START)
    try:
        yield mod
    finally:
        mod.terminate_daemon()


@needs_launcher
def test_child_runs_as_a_job_step_on_the_node(remote: Any, cluster: SlurmCluster) -> None:
    """A child started through slurm() sees its job and step in its environment and runs on the node."""
    job, step, node = remote.where()
    assert job is not None and job.isdigit() and step is not None and step.isdigit()
    assert node == cluster.node
    steps = subprocess.run(
        ["squeue", "-h", "-s", "-o", "%i"], env=cluster.env, capture_output=True, text=True, timeout=10
    ).stdout.split()
    assert f"{job}.{step}" in steps


@needs_launcher
def test_spec_semantics_hold_through_srun(remote: Any) -> None:
    """SPEC §3 through srun: operators, remote exceptions with their frames, callbacks, streaming, large data in-band."""
    assert remote.square(7) == 49
    assert len(remote.items) == 3 and remote.items[1] == 2 and 3 in remote.items
    assert [0] + remote.items == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="deep on the node") as info:
        remote.outer()
    text = "".join(traceback.format_exception(info.value))
    assert "in outer" in text and "in inner" in text
    assert remote.apply(spawnproxy.by_ref(lambda v: v + 1), 41) == 42  # a callback into the parent
    assert sum(remote.count(10_000)) == sum(range(10_000))  # a remote generator, streamed in batches
    blob = os.urandom(32 << 20)  # no memfd to a launched child: every byte goes through srun's stdio
    assert remote.echo(blob) == blob
    assert remote.square(8) == 64  # still usable


@needs_launcher
def test_run_object_through_srun_forwards_operators(cluster: SlurmCluster) -> None:
    """run_object(..., launcher=slurm()): an object sent to a job step, its operators forwarded there."""
    remote = spawnproxy.run_object(
        [3, 1, 2], launcher=launcher_of(cluster), python_exe=sys.executable, start_timeout=START
    )
    try:
        remote.sort()
        assert remote == [1, 2, 3] and len(remote) == 3 and remote[-1] == 3
        remote += [4]
        assert remote[1:] == [2, 3, 4] and 4 in remote
        with pytest.raises(IndexError):
            remote[10]
    finally:
        remote.terminate_daemon()


@needs_launcher
def test_what_slurm_refuses_is_a_start_error_with_sruns_words(cluster: SlurmCluster) -> None:
    """A step Slurm refuses (an unknown partition) is DaemonStartError at once, srun's message in it."""
    began = time.monotonic()
    with pytest.raises(spawnproxy.DaemonStartError, match=r"(?i)invalid partition"):
        spawnproxy.run_script("x = 1", launcher=launcher_of(cluster, partition="nosuch"), python_exe=sys.executable)
    assert time.monotonic() - began < 10


@needs_launcher
@pytest.mark.slow
def test_srun_without_unbuffered_is_a_start_error_within_start_timeout(cluster: SlurmCluster) -> None:
    """Why slurm() passes --unbuffered: srun holding the child's output back is a DaemonStartError, not a hang."""
    launcher = ["env", f"SLURM_CONF={cluster.conf}", "srun", "--quiet", "-N1", "-n1"]
    began = time.monotonic()
    with pytest.raises(spawnproxy.DaemonStartError, match="buffers its output"):
        spawnproxy.run_script("x = 1", launcher=launcher, python_exe=sys.executable, start_timeout=3)
    assert time.monotonic() - began < 10


@needs_launcher
def test_an_older_python_runs_as_a_job_step(cluster: SlurmCluster) -> None:
    """CPython 3.8 (the oldest supported) answers through srun as the parent's own does."""
    python38 = child_interpreters().get("3.8")
    if python38 is None:
        pytest.skip("no CPython 3.8 on this machine")
    mod = spawnproxy.run_script(
        "import sys\nversion = sys.version_info[:2]",
        launcher=launcher_of(cluster),
        python_exe=python38,
        start_timeout=START,
    )
    try:
        assert tuple(mod.version) == (3, 8)
    finally:
        mod.terminate_daemon()


# ==== A pool of job steps ===========================================================================


@pytest.fixture
def pool(cluster: SlurmCluster) -> Iterator[Any]:
    """A Pool of 4 children, each started through srun."""
    with spawnproxy.Pool(  # type: ignore[attr-defined]
        spawnproxy.ScriptDefinition(SCRIPT),
        max_workers=4,
        launcher=launcher_of(cluster),
        python_exe=sys.executable,
        start_timeout=START,
    ) as started:
        yield started


@needs_pool
@needs_launcher
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_each_pool_child_is_its_own_job_step_on_the_node(pool: Any, cluster: SlurmCluster) -> None:
    """Every child of a Pool through slurm() is a job step of its own, on the node; tasks run there."""
    places = [proxy.where() for proxy in pool.proxies]
    assert len({(job, step) for job, step, _ in places}) == 4
    assert {node for _, _, node in places} == {cluster.node}
    assert list(pool.map("square", range(100), chunksize=8)) == [x * x for x in range(100)]
    jobs = {job for job, _, _ in places}
    assert {pool.submit("nap", 0).result(timeout=30) for _ in range(8)} <= jobs


@needs_pool
@needs_launcher
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_scancel_of_one_step_fails_only_its_tasks_and_the_pool_replaces_it(pool: Any, cluster: SlurmCluster) -> None:
    """scancel of one child's step fails the tasks it was running (DaemonDiedError); the others finish;
    the pool starts a new child in its place."""
    jobs = [proxy.where()[0] for proxy in pool.proxies]
    futures = [pool.submit("nap", 4) for _ in range(4)]
    time.sleep(1.5)  # every child is in its nap
    victim = jobs[0]
    subprocess.run(["scancel", victim], env=cluster.env, check=True, timeout=10)
    wait(futures, timeout=60)
    failed = [f for f in futures if isinstance(f.exception(), spawnproxy.DaemonDiedError)]
    finished = [f.result() for f in futures if f.exception() is None]
    assert failed and finished and len(failed) + len(finished) == 4
    assert victim not in finished

    def jobs_now() -> set[str]:
        jobs = set()
        for proxy in pool.proxies:
            try:
                jobs.add(proxy.where()[0])
            except spawnproxy.SpawnProxyError:  # the dead child, not yet replaced
                jobs.add(victim)
        return jobs

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = jobs_now()
        if victim not in now and len(now) == 4:
            break
        time.sleep(0.2)
    assert victim not in now and len(now) == 4, f"the cancelled child was not replaced: {now}"
    assert list(pool.map("square", range(20))) == [x * x for x in range(20)]


@needs_pool
@needs_launcher
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_guides_slurm_recipe_runs_on_the_cluster(cluster: SlurmCluster) -> None:
    """The recipe of docs/guides/pools.md ("On a Slurm cluster") runs as written, its tasks on the node."""
    guide = (Path(__file__).resolve().parent.parent / "docs" / "guides" / "pools.md").read_text()
    section = guide[guide.index("## On a Slurm cluster") :]
    code = section[section.index("```python") :].split("\n", 1)[1].split("```", 1)[0]
    assert "spawnproxy.slurm(" in code
    done = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == [f"{cluster.node} {x * x}" for x in range(8)]


# ==== What starting through srun costs ==============================================================


@needs_launcher
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_start_through_srun_costs_a_bounded_delay(cluster: SlurmCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Start-up to the first answer through srun stays within a few seconds of a local start (medians printed)."""

    def first_answer(**options: Any) -> float:
        began = time.perf_counter()
        mod = spawnproxy.run_script("x = 1", python_exe=sys.executable, **options)
        try:
            assert mod.x == 1
            return time.perf_counter() - began
        finally:
            mod.terminate_daemon()

    local = statistics.median(first_answer() for _ in range(5))
    srun = statistics.median(first_answer(launcher=launcher_of(cluster)) for _ in range(5))
    with capsys.disabled():
        print(f"\nstart to first answer (median of 5): local {local * 1000:.0f} ms, through srun {srun * 1000:.0f} ms")
    assert srun < local + 5.0
