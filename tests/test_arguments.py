"""Arguments (SPEC §3.4): pickle first, dill for what pickle refuses, proxies as references."""

from __future__ import annotations

import pytest

import spawnproxy
from tests.targets.sample import Point, Service

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def service():
    proxy = spawnproxy.run_object(Service())
    yield proxy
    proxy.terminate_daemon()


def test_lambda_through_dill(service) -> None:
    """A lambda is sent with dill and runs in the child."""
    assert service.apply(lambda x: x + 1, 41) == 42


def test_closure_through_dill(service) -> None:
    """A closure carries its captured values."""
    offset = 100

    def shifted(x):
        return x + offset

    assert service.apply(shifted, 1) == 101


def test_keyword_arguments_and_values(service) -> None:
    """Positional and keyword arguments of any picklable type arrive intact."""
    assert service.add(1, b=2) == 3
    assert service.echo({"a": [1, (2, 3)], "b": {4}}) == {"a": [1, (2, 3)], "b": {4}}
    assert service.point(1, 2) == Point(1, 2)


def test_unserializable_argument_names_it(service) -> None:
    """An argument nothing can serialize fails locally, naming it; the child stays usable."""
    with pytest.raises(spawnproxy.SerializationError, match=r"argument 1 \(<generator object"):
        service.apply(print, (i for i in range(3)))
    with pytest.raises(spawnproxy.SerializationError, match="keyword argument 'b'"):
        service.add(1, b=(i for i in range(3)))
    assert service.add(2, 3) == 5


def test_proxy_argument_arrives_as_the_real_object(service) -> None:
    """A proxy passed back to its own child is the real object there."""
    lock = service.make_lock()
    assert isinstance(lock, spawnproxy.ObjectProxy)
    assert service.type_name(lock) == "lock"
    assert service.is_same(lock, lock) is True
    assert service.type_name([lock, {"k": lock}]) == "list"
    assert service.lock.locked() is False


def test_proxy_of_another_child_is_refused(service) -> None:
    """A proxy cannot be sent to a child other than its own."""
    other = spawnproxy.run_object(Service())
    try:
        with pytest.raises(spawnproxy.SerializationError, match="another child"):
            service.echo(other.make_lock())
        assert service.add(1, 1) == 2
    finally:
        other.terminate_daemon()


def test_result_of_a_child_only_class_is_a_proxy() -> None:
    """An instance of a class defined only in the child's script comes back as a proxy."""
    mod = spawnproxy.run_script(
        "class Local:\n    def __init__(self):\n        self.v = 3\ndef make():\n    return Local()"
    )
    try:
        obj = mod.make()
        assert isinstance(obj, spawnproxy.ObjectProxy)
        assert obj.v == 3
    finally:
        mod.terminate_daemon()


def test_result_of_an_importable_class_is_a_value(service) -> None:
    """An instance of a class the parent can import comes back by value."""
    p = service.point(3, 4)
    assert type(p) is Point
    assert p == Point(3, 4)


def test_released_references_return_the_table_to_its_baseline(service) -> None:
    """Dropping proxies of returned objects releases them in the child, in batches."""
    daemon = spawnproxy.daemon_of(service)
    baseline = daemon._session.request("stats", (), "stats")[3]["objects"]
    locks = [service.make_lock() for _ in range(200)]
    assert daemon._session.request("stats", (), "stats")[3]["objects"] == baseline + 200
    del locks
    service.noop()  # releases ride along the next request
    assert daemon._session.request("stats", (), "stats")[3]["objects"] == baseline


def test_large_payloads_travel_out_of_band(service) -> None:
    """Frames of a MiB and more go through a memfd, there and back, intact and without leaking fds."""
    import os

    data = os.urandom(3 << 20)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert service.echo(data) == data
        assert service.echo(bytearray(data)) == bytearray(data)
    assert len(os.listdir("/proc/self/fd")) <= before + 1  # one memfd kept for the next large frame
    assert service.add(1, 2) == 3  # small frames still flow after large ones


def test_pickling_a_proxy_elsewhere_is_a_serialization_error(service) -> None:
    """A proxy pickled outside a call says what it is: a SerializationError."""
    import pickle

    with pytest.raises(spawnproxy.SerializationError, match="only travels as an argument"):
        pickle.dumps(service)
