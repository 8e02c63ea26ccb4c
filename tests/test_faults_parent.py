"""Faults: the parent dies or exits — its children never outlive it (SPEC §3.7; extends test_lifetime.py)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.targets.parents import Parent, gone

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

# A killed parent's children are gone within this (SPEC §3.7).
PARENT_DEATH = 2.0
# A parent exiting normally ends its children all at once: 1 s of grace, then the lifeline, SIGTERM
# and SIGKILL 0.5 s apart, for all of them together (docs/reliability.md).
NORMAL_EXIT = 2.5


def _kill_and_time(parent: Parent) -> dict[int, float | None]:
    """SIGKILL the parent; return how long each child took to go (None: still there after 2 s)."""
    time.sleep(0.3)  # the remote call is running
    parent.signal(signal.SIGKILL)
    parent.popen.wait(5)
    killed = time.monotonic()
    took: dict[int, float | None] = {}
    for pid in parent.children:
        took[pid] = time.monotonic() - killed if gone(pid, PARENT_DEATH - (time.monotonic() - killed)) else None
    return took


def test_killed_parent_takes_idle_busy_and_deaf_children_along(parents, warm: bool) -> None:
    """Parent SIGKILLed: an idle child, and one deaf to SIGTERM and SIGINT blocked in sleep (and the zygote), end within 2 s."""
    parent = Parent("killed_while", "sleep", warm=warm)
    parents.append(parent)
    took = _kill_and_time(parent)
    assert None not in took.values(), f"children outlived their parent by more than {PARENT_DEATH} s: {took}"


def test_killed_parent_takes_a_child_stuck_in_c_along(parents, warm: bool) -> None:
    """Parent SIGKILLed while its child is blocked in a C call holding the GIL: the child ends within 2 s."""
    parent = Parent("killed_while", "hold_gil", warm=warm)
    parents.append(parent)
    took = _kill_and_time(parent)
    assert None not in took.values(), f"children outlived their parent by more than {PARENT_DEATH} s: {took}"


def test_normal_exit_ends_every_child_without_zombies(parents, warm: bool) -> None:
    """A parent exiting with children referenced, busy, deaf to SIGTERM or stuck in C, leaves nothing behind."""
    parent = Parent("exit_with_children", warm=warm)
    parents.append(parent)
    found = parent.results(timeout=30)
    assert found["exitcode"] == "0", parent.stderr
    took = float(found["EXIT_DONE"]) - float(found["EXIT_START"])
    assert took < NORMAL_EXIT, f"ending the children at exit took {took:.2f} s"
    assert found["ZOMBIES"] == "0"  # every child was reaped by its parent before it exited
    assert found["LEFT"] == "0"
    for pid in parent.children:
        assert gone(pid, 0.5)
