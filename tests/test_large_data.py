"""Large data: bytes, bytearray, memoryview and NumPy arrays travel out of band, whole and right."""

from __future__ import annotations

import os
import sys
import time

import pytest

import spawnproxy

np = pytest.importorskip("numpy")

MIB = 1 << 20
SCRIPT = """
def echo(value):
    return value

def kinds(*args, **kwargs):
    return [type(a).__name__ for a in args] + sorted((k, type(v).__name__) for k, v in kwargs.items())

def fill(array, value):
    array[:] = value
    return array

def view(size):
    return memoryview(bytearray(b"v" * size))

def apply(func, value):
    return func(value)

def total(values):
    return sum(len(v) for v in values)
"""


@pytest.fixture(scope="module")
def mod():
    mod = spawnproxy.run_script(SCRIPT)
    yield mod
    mod.terminate_daemon()


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, 3 * MIB + 7])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_bytes_and_bytearray_round_trip(mod, kind: type, size: int) -> None:
    """Small and large, bytes and bytearray come back equal and of their own type."""
    data = kind(os.urandom(size))
    back = mod.echo(data)
    assert type(back) is kind
    assert back == data


def test_memoryview_round_trip_keeps_format_and_shape(mod) -> None:
    """A memoryview (which pickle refuses) arrives as a memoryview of the same format, shape and bytes."""
    array = np.arange(3 * MIB // 8, dtype=np.float64).reshape(3, -1)
    for view in (memoryview(array), memoryview(b"small"), memoryview(bytearray(b"rw" * MIB))):
        back = mod.echo(view)
        assert type(back) is memoryview
        assert (back.format, back.shape, back.readonly) == (view.format, view.shape, view.readonly)
        assert back.tobytes() == view.tobytes()
    assert len(mod.view(2 * MIB)) == 2 * MIB  # a result too


@pytest.mark.parametrize("shape", [(10,), (3 * MIB // 8,), (512, 1024)])
def test_numpy_arrays_round_trip_writable(mod, shape: tuple[int, ...]) -> None:
    """NumPy arrays come back equal, of the same dtype and shape, and writable."""
    array = np.random.default_rng(1).random(shape)
    back = mod.echo(array)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert (back == array).all()
    assert back.flags.writeable
    back[0] = -1  # writing to it touches neither the sent array nor anything shared
    assert (array != -1).all()


def test_the_child_works_on_its_own_copy(mod) -> None:
    """An array filled in the child is the child's: the parent's array is untouched."""
    array = np.zeros(MIB)
    back = mod.fill(array, 7.0)
    assert (back == 7.0).all() and (array == 0).all()


def test_large_buffers_as_keyword_and_nested_arguments(mod) -> None:
    """Top-level, keyword and nested large buffers all arrive as what they were."""
    big = os.urandom(2 * MIB)
    assert mod.kinds(big, bytearray(big), x=memoryview(big), y=np.zeros(MIB)) == [
        "bytes",
        "bytearray",
        ("x", "memoryview"),
        ("y", "ndarray"),
    ]
    assert mod.total([big, [big], (big,)][:1] + [big]) == 4 * MIB
    assert mod.echo((big, {"a": np.ones(MIB)}))[1]["a"].sum() == MIB


def test_large_buffers_with_proxies_and_with_dill(mod) -> None:
    """A large buffer beside a proxy argument (persistent references) or a lambda (dill)."""
    big = os.urandom(2 * MIB)
    assert mod.apply(mod.echo, big) == big
    assert mod.apply(lambda v: len(v) + 1, big) == 2 * MIB + 1


def test_many_large_exchanges_leak_no_descriptor_or_memory(mod) -> None:
    """Shared memory is recycled between large frames: no descriptor piles up on either side."""
    data = os.urandom(4 * MIB)
    for _ in range(3):
        assert mod.echo(data) == data
    fds = set(os.listdir("/proc/self/fd"))
    child_fds = len(os.listdir(f"/proc/{spawnproxy.daemon_of(mod).pid}/fd"))
    for _ in range(30):
        assert mod.echo(data) == data
        kept = mod.echo(np.ones(MIB))  # zero-copy arrays keep their mapping alive
    del kept
    assert set(os.listdir("/proc/self/fd")) - fds == set()
    # The child unmaps the last request's frame just after its answer is on its way: let it.
    deadline = time.monotonic() + 2
    while len(os.listdir(f"/proc/{spawnproxy.daemon_of(mod).pid}/fd")) > child_fds + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir(f"/proc/{spawnproxy.daemon_of(mod).pid}/fd")) <= child_fds + 2


@pytest.mark.skipif(sys.platform != "linux", reason="memfd frames are Linux only")
def test_large_bytes_travel_in_one_copy_each_way(mod) -> None:
    """The pickle of a large bytes argument does not contain it: its bytes travel out of band."""
    from spawnproxy import _serialize

    encoder = spawnproxy.daemon_of(mod)._session.encoder
    tag, payload, buffers = encoder.encode((0, 1, "call", 0, (b"x" * (2 * MIB),), {}), lambda: [])
    assert len(payload) < 1000 and [b.raw().nbytes for b in buffers] == [2 * MIB]
    tag, payload, buffers = encoder.encode((0, 1, "call", 0, (b"x" * 100,), {}), lambda: [])
    assert buffers == [] and tag == _serialize.protocol.TAG_PICKLE
