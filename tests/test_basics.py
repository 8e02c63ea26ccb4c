"""The spawny README examples, and the three kinds of definition."""

from __future__ import annotations

import gc
import io
import os
import pickle
import sys

import pytest

import spawnproxy
from spawnproxy import InstanceDefinition, ObjectProxy
from spawnproxy._child import protocol

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
from collections import OrderedDict

odct = OrderedDict()
odct['a'] = 1

foo = "hello world"

def say_hello(who):
    return "hello %s" % who

print(say_hello("process"))
"""


def test_script_example_from_spawny(capfd: pytest.CaptureFixture[str]) -> None:
    """run_script gives proxies of first-level variables and plain values of results."""
    mod = spawnproxy.run_script(SCRIPT)
    assert str(mod.odct) == "OrderedDict([('a', 1)])" or str(mod.odct) == "OrderedDict({'a': 1})"
    assert mod.foo == "hello world"
    assert mod.say_hello("earthling") == "hello earthling"
    assert isinstance(mod.foo, ObjectProxy)
    assert type(mod.say_hello("earthling")) is str
    mod.terminate_daemon()
    assert "hello process" in capfd.readouterr().out


def test_script_runs_in_a_module_of_its_own() -> None:
    """The script is not the child's __main__, so a __main__ guard does not run."""
    mod = spawnproxy.run_script("ran = []\nif __name__ == '__main__':\n    ran.append(1)\nname = __name__")
    try:
        assert mod.ran == []
        assert mod.name != "__main__"
    finally:
        mod.terminate_daemon()


def test_disposing_ends_the_child() -> None:
    """Dropping every proxy ends the child when the garbage collector runs."""
    mod = spawnproxy.run_script("x = 1")
    daemon = spawnproxy.daemon_of(mod)
    pid = daemon.pid
    del daemon, mod
    gc.collect()
    import time

    import psutil

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"child {pid} still runs 5 s after its last proxy was collected")


def test_run_module_by_name() -> None:
    """run_module imports a module by name in the child."""
    remote_json = spawnproxy.run_module("json")
    try:
        assert remote_json.dumps({"a": 1}) == '{"a": 1}'
        assert remote_json.loads("[1, 2]") == [1, 2]
    finally:
        remote_json.terminate_daemon()


def test_run_module_from_path(tmp_path) -> None:
    """run_module loads a module from a .py file the parent never imported."""
    path = tmp_path / "only_here.py"
    path.write_text("def triple(x):\n    return 3 * x\nNAME = __name__\n")
    mod = spawnproxy.run_module("only_here", str(path))
    try:
        assert mod.triple(5) == 15
        assert mod.NAME == "only_here"
        assert "only_here" not in sys.modules
    finally:
        mod.terminate_daemon()


def test_instance_definition_stringio() -> None:
    """InstanceDefinition builds the instance in the child."""
    strio = spawnproxy.run_object(InstanceDefinition("io", "StringIO", "hello, world!"))
    try:
        assert strio.getvalue() == "hello, world!"
    finally:
        strio.terminate_daemon()


@pytest.mark.parametrize("module_name", ["builtins", None])
def test_instance_definition_builtins(module_name: str | None) -> None:
    """A builtin class is found with module 'builtins' or None."""
    p = spawnproxy.run_object(InstanceDefinition(module_name, "str", 1))
    try:
        assert str(p) == "1"
        assert p == "1"
    finally:
        p.terminate_daemon()


def test_run_object_sends_an_instance() -> None:
    """run_object sends a picklable instance; its methods run in the child."""
    from tests.targets.sample import Service

    service = spawnproxy.run_object(Service(start=10))
    try:
        assert service.bump(5) == 15
        assert service.count == 15
        assert service.add(1, b=2) == 3
    finally:
        service.terminate_daemon()


def test_methods_run_in_the_child() -> None:
    """A method read through a proxy runs in the child and changes the child's object."""
    mod = spawnproxy.run_script("lst = [1, 2, 3]\nimport os\ndef pid():\n    return os.getpid()")
    try:
        mod.lst.append(4)
        assert mod.lst == [1, 2, 3, 4]
        assert mod.pid() == spawnproxy.daemon_of(mod).pid != os.getpid()
    finally:
        mod.terminate_daemon()


def test_daemon_proxy_handle() -> None:
    """DaemonProxy exposes pid, is_alive, exitcode, proxy, and ends the child on exit."""
    with spawnproxy.DaemonProxy(spawnproxy.ScriptDefinition("x = 5")) as daemon:
        assert daemon.is_alive()
        assert daemon.exitcode is None
        assert daemon.proxy.x == 5
        assert spawnproxy.daemon_of(daemon.proxy) is daemon
        assert f"pid={daemon.pid}" in repr(daemon)
    assert not daemon.is_alive()
    assert daemon.exitcode is not None


def test_module_definition_repr_and_equality() -> None:
    """Definitions compare by value and show what they hold."""
    assert spawnproxy.ModuleDefinition("json") == spawnproxy.ModuleDefinition("json")
    assert "json" in repr(spawnproxy.ModuleDefinition("json"))
    assert InstanceDefinition("io", "StringIO", "x") == InstanceDefinition("io", "StringIO", "x")
    assert spawnproxy.ScriptDefinition("a = 1") == spawnproxy.ScriptDefinition("a = 1")


def test_unpicklable_object_result_is_a_proxy() -> None:
    """A generator cannot be pickled: a call returning one gives a proxy that iterates remotely."""
    mod = spawnproxy.run_script("def make():\n    yield 'a'\n    yield 'b'")
    try:
        gen = mod.make()
        assert isinstance(gen, ObjectProxy)
        assert next(gen) == "a"
        assert list(gen) == ["b"]
    finally:
        mod.terminate_daemon()


def test_picklable_object_result_is_a_value() -> None:
    """An io.StringIO can be pickled and the parent can rebuild it: it comes back by value."""
    mod = spawnproxy.run_script("import io\ndef make():\n    return io.StringIO('abc')")
    try:
        s = mod.make()
        assert type(s) is io.StringIO
        assert s.read() == "abc"
    finally:
        mod.terminate_daemon()


def test_a_call_is_one_round_trip() -> None:
    """p.method(x) is one request; mod.obj.method() is one request once the method was read."""
    mod = spawnproxy.run_script("class C:\n    def m(self, x):\n        return x\nobj = C()\ndef f(x):\n    return x")
    session = spawnproxy.daemon_of(mod)._session
    sent: list[str] = []
    real = session.channel.send

    def counting(tag, payload, *args, **kwargs):
        # The requests that go out, as the child reads them (a frame opening a lane is no request).
        if tag == protocol.TAG_PICKLE:
            message = pickle.loads(payload)
            if message[0] == protocol.REQUEST:
                sent.append(message[2])
        return real(tag, payload, *args, **kwargs)

    session.channel.send = counting
    try:
        assert mod.f(1) == 1
        assert sent == ["call"]
        mod.obj.m(1)
        sent.clear()
        assert mod.obj.m(2) == 2
        assert sent == ["call"]
        inst = mod.C()  # a proxy: C() cannot be rebuilt in the parent
        sent.clear()
        assert inst.m(3) == 3
        assert sent == ["call"]
    finally:
        del session.channel.send
        mod.terminate_daemon()


def test_a_path_from_a_path_asks_nothing_of_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading `mod.obj.method` sends one request: the base of the path is not asked its truth (`bool`)."""
    from spawnproxy import _session

    mod = spawnproxy.run_script("class Obj:\n    def method(self):\n        return 1\nobj = Obj()")
    try:
        obj = mod.obj  # the root's attribute: reached by path, no request
        sent: list[str] = []
        request = _session.Session.request

        def counted(self: object, op: str, operands: tuple[object, ...], *args: object) -> object:
            sent.append(op if op != "op" else f"op {operands[1]}")
            return request(self, op, operands, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(_session.Session, "request", counted)
        assert obj.method() == 1
        assert sent == ["getattr"]
    finally:
        mod.terminate_daemon()


def test_a_roots_docstring_is_a_string() -> None:
    """`mod.__doc__` of a root is the remote docstring itself, a str (so inspect.getdoc and `mod?` show it)."""
    import inspect

    mod = spawnproxy.run_script('"""The script\'s docstring."""\nx = 1')
    try:
        assert type(mod.__doc__) is str
        assert inspect.getdoc(mod) == "The script's docstring."
    finally:
        mod.terminate_daemon()


def test_a_missing_attribute_is_asked_for_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hasattr(p, "missing")` sends the child one request, and the AttributeError is the child's."""
    from spawnproxy import _session

    mod = spawnproxy.run_script("class Obj:\n    pass\nobj = Obj()")
    try:
        obj = mod.obj
        sent: list[str] = []
        request = _session.Session.request

        def counted(self: object, op: str, *args: object) -> object:
            sent.append(op)
            return request(self, op, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(_session.Session, "request", counted)
        assert not hasattr(obj, "missing")
        assert sent == ["getattr"]
        with pytest.raises(AttributeError, match="'Obj' object has no attribute 'missing'"):
            obj.missing  # noqa: B018
        assert getattr(obj, "missing", None) is None
        assert sent == ["getattr"] * 3
    finally:
        mod.terminate_daemon()
