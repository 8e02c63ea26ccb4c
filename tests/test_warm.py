"""Warm start (issue 18): children forked from a zygote of their interpreter.

The behaviour a warm child shares with a cold one is tested in both modes by
the lifetime, fault, interpreter and output tests (the `warm` fixture); these
are the zygote's own rules: what it is, when it is replaced, when it ends, and
what a fork shares with its zygote that a fresh interpreter would not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import spawnproxy
from spawnproxy._zygote import IDLE_ZYGOTES, LOST_EXIT, zygote_pids
from tests.conftest import gone, run_python

pytestmark = pytest.mark.timeout(60)


def _zygote_of(mod: object) -> int:
    """The pid of the zygote that forked this warm child (its parent process)."""
    return psutil.Process(spawnproxy.daemon_of(mod).pid).ppid()


def test_a_warm_child_is_forked_by_a_zygote_and_shares_it() -> None:
    """Two warm children of one interpreter and environment have the same zygote as parent, a process of ours."""
    first = spawnproxy.run_script("x = 1", warm=True)
    second = spawnproxy.run_script("x = 2", warm=True)
    try:
        zygote = _zygote_of(first)
        assert zygote == _zygote_of(second)
        assert zygote in zygote_pids()
        assert psutil.Process(zygote).ppid() == os.getpid()
        assert spawnproxy.daemon_of(first).pid != zygote
        assert (first.x, second.x) == (1, 2)
    finally:
        first.terminate_daemon()
        second.terminate_daemon()


def test_the_zygote_runs_no_user_code_and_holds_one_thread(tmp_path) -> None:
    """What a warm child imports and the threads it starts stay in it: the zygote has one thread, the next fork none of it."""
    (tmp_path / "only_in_one_child.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
    )
    mod = spawnproxy.run_script(
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport only_in_one_child, os\npid = os.getpid()", warm=True
    )
    other = spawnproxy.run_script("import sys\ndef loaded():\n    return sorted(sys.modules)", warm=True)
    try:
        zygote = _zygote_of(mod)
        assert len(os.listdir(f"/proc/{mod.pid}/task")) > 1  # the child's own threads: lifeline, sleeper...
        assert os.listdir(f"/proc/{zygote}/task") == [str(zygote)]
        assert "only_in_one_child" not in other.loaded()
        assert "__spawnproxy_script__" in other.loaded()  # (its own script, loaded in it)
    finally:
        mod.terminate_daemon()
        other.terminate_daemon()


def test_a_dead_zygote_is_replaced_and_its_children_run_on() -> None:
    """SIGKILL the zygote: its child keeps serving, the next warm start makes a new zygote; the lost exit code is said."""
    mod = spawnproxy.run_script("x = 1", warm=True)
    daemon = spawnproxy.daemon_of(mod)
    zygote = _zygote_of(mod)
    os.kill(zygote, signal.SIGKILL)
    assert gone(zygote, 5)
    assert mod.x == 1  # the fork has its own lifeline: it outlives its zygote
    again = spawnproxy.run_script("x = 2", warm=True)
    try:
        assert again.x == 2
        assert _zygote_of(again) != zygote
        assert zygote not in zygote_pids()
    finally:
        again.terminate_daemon()
    assert daemon.terminate() == LOST_EXIT  # nobody could reap it for us: documented


def test_the_zygote_and_its_children_end_with_the_parent() -> None:
    """A parent that exits, or is killed, leaves neither the zygote nor a warm child behind."""
    code = (
        "import os, sys, spawnproxy\n"
        "from spawnproxy._zygote import zygote_pids\n"
        "mods = [spawnproxy.run_script('import time', warm=True) for _ in range(2)]\n"
        "print(*[spawnproxy.daemon_of(m).pid for m in mods], *zygote_pids(), flush=True)\n"
        "if sys.argv[1:] == ['die']:\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 3
    for pid in pids:
        assert gone(pid, 2), f"process {pid} outlived its parent's exit"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen(
        [sys.executable, "-c", code, "die"],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=root),
        cwd=root,
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        parent.wait(10)
        started = time.monotonic()
        for pid in pids:
            assert gone(pid, 2.0 - (time.monotonic() - started)), f"process {pid} outlived its killed parent by 2 s"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_each_warm_child_has_the_environment_and_directory_asked_for(tmp_path, monkeypatch) -> None:
    """env is the child's whole environment, and its working directory the parent's current one, as for a cold child."""
    script = "import os\nenviron = dict(os.environ)"
    one = spawnproxy.run_script(script, env={"SPAWNPROXY_T": "1"}, warm=True)
    two = spawnproxy.run_script(script, env={"SPAWNPROXY_T": "2"}, warm=True)
    monkeypatch.setenv("SPAWNPROXY_T", "3")
    monkeypatch.chdir(tmp_path)
    here = spawnproxy.run_script("import os\nwhere = os.getcwd()\nenviron = dict(os.environ)", warm=True)
    cold = spawnproxy.run_script(script)
    cold_one = spawnproxy.run_script(script, env={"SPAWNPROXY_T": "1"})
    try:
        # As a cold child's: the interpreter may add to it as it starts (LC_CTYPE, PEP 538).
        assert spawnproxy.obtain(one.environ) == spawnproxy.obtain(cold_one.environ)
        assert one.environ["SPAWNPROXY_T"] == "1"
        assert two.environ["SPAWNPROXY_T"] == "2"
        assert here.where == str(tmp_path)
        assert spawnproxy.obtain(here.environ) == spawnproxy.obtain(cold.environ)
        assert here.environ["SPAWNPROXY_T"] == "3"
    finally:
        for mod in (one, two, here, cold, cold_one):
            mod.terminate_daemon()


def test_what_a_fork_shares_with_its_zygote() -> None:
    """`random` is re-seeded in every warm child; the hash seed is the zygote's, shared by its forks (documented)."""
    script = "import random\ndef draw():\n    return random.random(), hash('spawnproxy')"
    mods = [spawnproxy.run_script(script, warm=True, env=dict(os.environ, PYTHONHASHSEED="random")) for _ in range(2)]
    try:
        (draw_a, hash_a), (draw_b, hash_b) = (mod.draw() for mod in mods)
        assert draw_a != draw_b
        assert hash_a == hash_b
    finally:
        for mod in mods:
            mod.terminate_daemon()


def test_many_threads_start_warm_children_at_once() -> None:
    """Warm starts from several threads at once each get their own child."""
    started: list[object] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            started.append(spawnproxy.run_script("import os\npid = os.getpid()", warm=True))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert not errors
        assert len({mod.pid for mod in started}) == 8
    finally:
        for mod in started:
            mod.terminate_daemon()


def test_warm_is_checked_and_refused_where_no_zygote_can_be() -> None:
    """warm must be a bool; warm=True with a launcher or ssh is a one-line ValueError, before anything starts."""
    with pytest.raises(TypeError, match=r"warm must be True or False, not 'yes'"):
        spawnproxy.run_script("x = 1", warm="yes")
    with pytest.raises(ValueError, match="warm=True cannot be combined with launcher"):
        spawnproxy.run_script("x = 1", warm=True, launcher=["env"])
    with pytest.raises(ValueError, match="warm=True cannot be combined with python_exe='ssh://"):
        spawnproxy.run_script("x = 1", warm=True, python_exe="ssh://127.0.0.1/python3")
    with pytest.raises(ValueError, match="warm=True cannot be combined with launcher"):
        spawnproxy.Pool(max_workers=1, launcher=["env"], warm=True)


def test_a_pool_is_warm_unless_told_or_launched() -> None:
    """Pool's children are warm by default, cold with warm=False or behind a launcher."""
    with spawnproxy.Pool(max_workers=1) as pool:
        assert psutil.Process(pool.submit(os.getpid).result(30)).ppid() in zygote_pids()
    with spawnproxy.Pool(max_workers=1, warm=False) as pool:
        assert psutil.Process(pool.submit(os.getpid).result(30)).ppid() == os.getpid()


def test_a_warm_child_holds_no_other_childs_descriptors() -> None:
    """Requests sent together, each larger than one read of the zygote, leave no fork holding another's descriptors."""
    # A request the zygote reads in several parts (one variable may hold at most 128 KiB).
    env = dict(os.environ, **{f"SPAWNPROXY_BIG{i}": "x" * 50_000 for i in range(4)})
    alone = spawnproxy.run_script("x = 1", env=env, warm=True)
    started: list[object] = []
    threads = [
        threading.Thread(target=lambda: started.append(spawnproxy.run_script("x = 1", env=env, warm=True)))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert len(started) == 6

        def fds(mod: object) -> int:
            return len(os.listdir(f"/proc/{spawnproxy.daemon_of(mod).pid}/fd"))

        assert [fds(mod) for mod in started] == [fds(alone)] * 6
    finally:
        for mod in [alone, *started]:
            mod.terminate_daemon()


def test_a_warm_child_gets_the_cpus_the_parent_has_now() -> None:
    """A warm child runs on the CPUs the parent may use when it starts it, as a cold child would."""
    spawnproxy.run_script("x = 1", warm=True).terminate_daemon()  # the zygote exists before the change
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        mod = spawnproxy.run_script("import os\ncpus = sorted(os.sched_getaffinity(0))", warm=True)
    finally:
        os.sched_setaffinity(0, before)
    try:
        assert mod.cpus == [min(before)]
    finally:
        mod.terminate_daemon()


def test_a_forked_parent_starts_a_zygote_of_its_own() -> None:
    """A process forked from a parent with a zygote gets warm children from a zygote of its own; the parent's serves on."""
    first = spawnproxy.run_script("import os\ndef parent():\n    return os.getppid()", warm=True)
    zygote = _zygote_of(first)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forked process: report its warm child's zygote, and leave at once
        try:
            mod = spawnproxy.run_script("import os\ndef parent():\n    return os.getppid()", warm=True)
            os.write(write, str(mod.parent()).encode())
            mod.terminate_daemon()
        finally:
            os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read) as answer:
            theirs = int(answer.read() or 0)
        os.waitpid(pid, 0)
        assert theirs not in (0, zygote)
        again = spawnproxy.run_script("import os\ndef parent():\n    return os.getppid()", warm=True)
        assert again.parent() == zygote == first.parent()
        again.terminate_daemon()
    finally:
        first.terminate_daemon()


def test_idle_zygotes_of_other_environments_are_bounded() -> None:
    """A warm child per environment keeps at most IDLE_ZYGOTES zygotes with no child alive; one with a child lives on."""
    before = set(zygote_pids())
    keep = spawnproxy.run_script("x = 0", warm=True, env=dict(os.environ, SPAWNPROXY_TEST_ENV="keep"))
    kept_zygote = _zygote_of(keep)
    try:
        for i in range(IDLE_ZYGOTES + 4):
            mod = spawnproxy.run_script("x = 1", warm=True, env=dict(os.environ, SPAWNPROXY_TEST_ENV=str(i)))
            assert mod.x == 1
            mod.terminate_daemon()
        started = set(zygote_pids()) - before
        assert kept_zygote in started  # its child is alive: its exit code must still be read
        assert len(started) <= IDLE_ZYGOTES + 1, f"{len(started)} zygotes for {IDLE_ZYGOTES + 5} environments"
        assert keep.x == 0
    finally:
        daemon = spawnproxy.daemon_of(keep)
        keep.terminate_daemon()
    assert daemon.exitcode not in (None, LOST_EXIT)
