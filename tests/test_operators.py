"""Every operator family of SPEC §3.3: the same operation on a local object and on its proxy."""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import pytest

import spawnproxy
from spawnproxy import ObjectProxy

pytestmark = pytest.mark.timeout(120)

SAMPLES: dict[str, Any] = {
    "int": 7,
    "float": 2.5,
    "str": "hello",
    "list": [3, 1, 2],
    "dict": {"a": 1, "b": 2},
    "set": {1, 2, 3},
    "bytes": b"abc",
    "fraction": Fraction(3, 4),
    "tuple": (1, 2),
}

OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "str": str,
    "repr": repr,
    "format": lambda x: format(x, ""),
    "format_spec": lambda x: f"{x!s:>10}",
    "percent": lambda x: "%s" % (x,),
    "len": len,
    "bool": bool,
    "hash": hash,
    "contains_1": lambda x: 1 in x,
    "contains_a": lambda x: "a" in x,
    "getitem_0": lambda x: x[0],
    "getitem_slice": lambda x: x[0:2],
    "getitem_a": lambda x: x["a"],
    "iter": lambda x: list(iter(x)),
    "reversed": lambda x: list(reversed(x)),
    "eq": lambda x: x == 7,
    "ne": lambda x: x != 7,
    "lt": lambda x: x < 5,
    "le": lambda x: x <= 5,
    "gt": lambda x: x > 5,
    "ge": lambda x: x >= 5,
    "add": lambda x: x + 1,
    "radd": lambda x: 1 + x,
    "add_list": lambda x: x + [9],
    "radd_list": lambda x: [0] + x,
    "sub": lambda x: x - 1,
    "rsub": lambda x: 10 - x,
    "mul": lambda x: x * 2,
    "rmul": lambda x: 2 * x,
    "truediv": lambda x: x / 2,
    "rtruediv": lambda x: 1 / x,
    "floordiv": lambda x: x // 2,
    "rfloordiv": lambda x: 100 // x,
    "mod": lambda x: x % 3,
    "rmod": lambda x: 100 % x,
    "divmod": lambda x: divmod(x, 2),
    "rdivmod": lambda x: divmod(100, x),
    "pow": lambda x: x**2,
    "rpow": lambda x: 2**x,
    "pow3": lambda x: pow(x, 2, 5),
    "lshift": lambda x: x << 1,
    "rlshift": lambda x: 1 << x,
    "rshift": lambda x: x >> 1,
    "rrshift": lambda x: 256 >> x,
    "and": lambda x: x & 3,
    "rand": lambda x: 3 & x,
    "or": lambda x: x | 8,
    "ror": lambda x: 8 | x,
    "xor": lambda x: x ^ 1,
    "rxor": lambda x: 1 ^ x,
    "set_or": lambda x: x | {9},
    "set_and": lambda x: x & {1},
    "neg": operator.neg,
    "pos": operator.pos,
    "invert": operator.invert,
    "abs": abs,
    "int": int,
    "float": float,
    "index": operator.index,
    "complex": complex,
    "round": round,
    "round2": lambda x: round(x, 1),
    "trunc": math.trunc,
    "floor": math.floor,
    "ceil": math.ceil,
    "bytes": bytes,
    "matmul": lambda x: x @ x,
}


def _outcome(func: Callable[[Any], Any], obj: Any) -> tuple[str, Any]:
    try:
        value = func(obj)
    except Exception as exc:
        return "raises", type(exc)
    return "value", value


@pytest.fixture(scope="module")
def remotes() -> Iterator[dict[str, Any]]:
    """One child per sample object, for the whole module."""
    proxies = {name: spawnproxy.run_object(value) for name, value in SAMPLES.items()}
    yield proxies
    for proxy in proxies.values():
        proxy.terminate_daemon()


@pytest.mark.parametrize("sample", list(SAMPLES))
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_operation_matches_local(remotes: dict[str, Any], sample: str, operation: str) -> None:
    """The proxy gives the local result, or raises the local exception type."""
    func = OPERATIONS[operation]
    local = _outcome(func, SAMPLES[sample])
    remote = _outcome(func, remotes[sample])
    if operation == "hash" and local[0] == "value" and sample in ("str", "bytes"):
        # str and bytes hashes are salted per process: only "hashable" can be compared.
        assert remote[0] == "value"
        return
    if operation == "repr" and local[0] == "value":
        assert remote == local
        return
    assert remote[0] == local[0], f"{operation} on {sample}: local {local}, remote {remote}"
    if local[0] == "raises":
        assert issubclass(remote[1], local[1]) or issubclass(local[1], remote[1]), (local, remote)
    else:
        assert remote[1] == local[1]


@pytest.mark.parametrize("sample", ["list", "dict", "set", "int", "str"])
def test_inplace_operators(sample: str) -> None:
    """In-place operators mutate a mutable remote object and rebind the name for an immutable one."""
    local = {"list": [1], "dict": {"a": 1}, "set": {1}, "int": 5, "str": "ab"}[sample]
    other = {"list": [2], "dict": {"b": 2}, "set": {2}, "int": 3, "str": "cd"}[sample]
    proxy = spawnproxy.run_object(local)
    try:
        alias = proxy
        if sample in ("dict", "set"):
            expected = local | other
            proxy |= other
        else:
            expected = local + other
            proxy += other
        assert proxy == expected
        if sample in ("list", "dict", "set"):
            assert proxy is alias or proxy.__wrapped__ is alias.__wrapped__
            assert alias == expected  # the remote object itself changed
        else:
            assert alias == local  # the remote object is unchanged; the name was rebound
    finally:
        alias.terminate_daemon()


def test_item_assignment_and_deletion_with_slices() -> None:
    """[...] set and delete, with slices, act on the remote object."""
    p = spawnproxy.run_object([0, 1, 2, 3, 4])
    try:
        p[0] = 10
        p[1:3] = ["a", "b", "c"]
        del p[-1]
        del p[0:1]
        assert p == ["a", "b", "c", 3]
    finally:
        p.terminate_daemon()


def test_attribute_get_set_delete() -> None:
    """Attribute get, set and delete are forwarded; a missing one raises AttributeError."""
    mod = spawnproxy.run_script("class C:\n    pass\nobj = C()\nobj.a = 1")
    try:
        assert mod.obj.a == 1
        mod.obj.b = [1, 2]
        assert mod.obj.b == [1, 2]
        del mod.obj.a
        assert not hasattr(mod.obj, "a")
        with pytest.raises(AttributeError):
            mod.obj.missing  # noqa: B018
        mod.new_global = 42
        assert mod.new_global == 42
        del mod.new_global
        with pytest.raises(AttributeError):
            mod.new_global  # noqa: B018
    finally:
        mod.terminate_daemon()


def test_iteration_of_remote_iterator_and_next() -> None:
    """iter/next on a remote generator run in the child, item by item."""
    mod = spawnproxy.run_script("def gen(n):\n    for i in range(n):\n        yield i * i")
    try:
        g = mod.gen(4)
        assert next(g) == 0
        assert [x for x in g] == [1, 4, 9]
        with pytest.raises(StopIteration):
            next(g)
    finally:
        mod.terminate_daemon()


def test_with_on_a_remote_context_manager() -> None:
    """`with` enters and exits the remote context manager, passing the exception type."""
    from tests.targets.sample import Counter

    p = spawnproxy.run_object(Counter())
    try:
        with p as entered:
            assert entered.entered == 1
        with pytest.raises(KeyError), p:
            raise KeyError("x")
        assert p.entered == 2
        assert p.exited == 2
        assert p.last_exc == "KeyError"
    finally:
        p.terminate_daemon()


def test_unsupported_operator_fails_as_locally() -> None:
    """len() of a remote int raises TypeError, like len(7) does."""
    p = spawnproxy.run_object(7)
    try:
        with pytest.raises(TypeError):
            len(p)
        with pytest.raises(TypeError):
            p["a"]
        with pytest.raises(TypeError):
            iter(p)
    finally:
        p.terminate_daemon()


def test_dir_doc_name_and_signature() -> None:
    """dir() lists remote attributes; __doc__, __name__ and signature() reflect the remote function."""
    mod = spawnproxy.run_script('''
def greet(who: str, punctuation: str = "!", *, times: int = 1) -> str:
    """Greet someone."""
    return ("hello " + who + punctuation) * times
''')
    try:
        assert "greet" in dir(mod)
        assert mod.greet.__doc__ == "Greet someone."
        assert mod.greet.__name__ == "greet"
        sig = inspect.signature(mod.greet)
        assert list(sig.parameters) == ["who", "punctuation", "times"]
        assert sig.parameters["punctuation"].default == "!"
        assert sig.parameters["times"].kind is inspect.Parameter.KEYWORD_ONLY
        assert str(sig) == "(who: str, punctuation: str = '!', *, times: int = 1) -> str"
        assert "greet" in dir(mod)
        assert callable(mod.greet)
        assert not callable(mod.__name__)
    finally:
        mod.terminate_daemon()


def test_help_shows_the_remote_function() -> None:
    """help() on a remote function shows its name and docstring."""
    mod = spawnproxy.run_script('def area(w, h=2):\n    """Area of a rectangle."""\n    return w * h')
    try:
        import pydoc

        text = pydoc.render_doc(mod.area, renderer=pydoc.plaintext)
        assert "Area of a rectangle." in text
        assert "area" in text
    finally:
        mod.terminate_daemon()


def test_proxy_is_object_proxy() -> None:
    """Every proxy, root or nested, is an ObjectProxy."""
    mod = spawnproxy.run_script("x = [1]\ndef f():\n    yield 1")
    try:
        for p in (mod, mod.x, mod.f, mod.f()):
            assert isinstance(p, ObjectProxy)
    finally:
        mod.terminate_daemon()
