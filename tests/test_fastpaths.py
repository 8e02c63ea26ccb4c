"""The hot paths (`Session.call`, the child's `op_call`) send byte for byte what the general paths send.

Issue 16 keeps the inlined copies for speed; these tests are what proves them the same.
The parent side needs a real child (a call goes through the session's lane and the
child's answer is read); the child side builds a `Child` in-process over a socket pair.
"""

from __future__ import annotations

import itertools
import pickle
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import spawnproxy
from spawnproxy._child import ops, protocol, serve
from spawnproxy._child.buffers import split_buffers
from spawnproxy._child.channel import Channel

pytestmark = pytest.mark.timeout(60)

BIG = protocol.BIG_FRAME

SCRIPT = """
import threading
def echo(*args, **kwargs):
    return len(args) + len(kwargs)
lock = threading.Lock()
"""


class Local:
    """An object of the parent's, passed by_ref."""

    def hello(self) -> str:
        return "hi"


# -- the parent side: Session.call against Session.request ----------------------------------------

FAST, REFUSED, EITHER = "fast", "refused", "either"

# (name, args, kwargs, which path Session.call must take).  The operands marked with a callable
# are built per test (a proxy of the child, a by_ref stand-in, a lambda that needs dill).
PARENT_OPERANDS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("no operands", (), {}, FAST),
    ("small ints", (0, 1, -1, 255, 256, -(2**31)), {}, FAST),
    ("big ints", (2**64, -(2**200), 10**40), {}, FAST),
    ("floats", (0.0, -0.0, 1.5, float("inf"), 1e-300), {}, FAST),
    ("str", ("", "ascii", "été ☃ 漢字 \U0001f600"), {}, FAST),
    ("None and bools", (None, True, False), {}, FAST),
    ("small bytes", (b"", b"\x00\xff" * 10), {}, FAST),
    ("bytes just under the out-of-band size", (b"x" * (BIG - 1),), {}, FAST),
    ("bytearray", (bytearray(b"abc"),), {}, FAST),
    ("kwargs", (1,), {"a": 1, "b": "é", "c": None, "d": b"x"}, FAST),
    ("kwargs only", (), {"key": 2**70}, FAST),
    ("complex", (1 + 2j,), {}, EITHER),
    ("a tuple", ((1, "a"),), {}, EITHER),
    ("a list", ([1, 2, 3],), {}, EITHER),
    ("a dict in kwargs", (), {"d": {"k": 1}}, EITHER),
    ("bytes of the out-of-band size", (b"y" * BIG,), {}, REFUSED),
    ("large bytes in kwargs", (), {"data": b"z" * (BIG + 1)}, REFUSED),
    ("a memoryview", (memoryview(b"abc"),), {}, REFUSED),
    ("a proxy", ("PROXY",), {}, REFUSED),
    ("a proxy in kwargs", (), {"p": "PROXY"}, REFUSED),
    ("by_ref", ("BY_REF",), {}, REFUSED),
    ("a lambda (dill)", ("LAMBDA",), {}, REFUSED),
]

_LOCAL = Local()
_LAMBDA = lambda x: x + 1  # noqa: E731  (a lambda: pickle refuses it, dill carries it)


@pytest.fixture(scope="module")
def remote() -> Iterator[Any]:
    """A child running SCRIPT, ended after the module's tests."""
    mod = spawnproxy.run_script(SCRIPT)
    try:
        yield mod
    finally:
        mod.terminate_daemon()


def _operand(value: Any, remote: Any) -> Any:
    if value == "PROXY":
        return remote.lock
    if value == "BY_REF":
        return spawnproxy.by_ref(_LOCAL)
    if value == "LAMBDA":
        return _LAMBDA
    return value


def _frames(session: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes, list[bytes]]]:
    """Record every frame the session's channel sends: (tag, payload, out-of-band buffers)."""
    sent: list[tuple[bytes, bytes, list[bytes]]] = []
    real = session.channel.send

    def send(tag: bytes, payload: Any, deadline: Any = None, on_blocked: Any = None, buffers: Any = None) -> None:
        sent.append((tag, bytes(payload), [bytes(b.raw()) for b in buffers or ()]))
        real(tag, payload, deadline, on_blocked, buffers)

    monkeypatch.setattr(session.channel, "send", send)
    return sent


def _encodes(session: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes, list[bytes]]]:
    """Record every frame the general encoder makes."""
    made: list[tuple[bytes, bytes, list[bytes]]] = []
    real = session.encoder.encode

    def encode(message: Any, operands: Any) -> Any:
        tag, payload, buffers = real(message, operands)
        made.append((tag, bytes(payload), [bytes(b.raw()) for b in buffers]))
        return tag, payload, buffers

    monkeypatch.setattr(session.encoder, "encode", encode)
    return made


@pytest.mark.parametrize(("name", "args", "kwargs", "path"), PARENT_OPERANDS, ids=[row[0] for row in PARENT_OPERANDS])
def test_session_call_sends_the_frame_request_sends(
    remote: Any, monkeypatch: pytest.MonkeyPatch, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], path: str
) -> None:
    """Session.call's frame equals request("call")'s for the same id; plain operands skip the encoder, others not."""
    session = spawnproxy.daemon_of(remote)._session
    echo = remote.echo
    assert echo() == 0  # this thread now holds a lane: the condition of the fast path
    assert session.local.lane is not None
    args = tuple(_operand(a, remote) for a in args)
    kwargs = {k: _operand(v, remote) for k, v in kwargs.items()}
    owner, target = type(echo)._spawnproxy_ref_(echo)  # what a proxy sent as an operand says it is
    assert owner is session
    rid = 1000 + 10 * [row[0] for row in PARENT_OPERANDS].index(name)

    # The session's own count of _LOCAL keeps its export id the same for both calls (the child
    # releases what it was sent once the call returns; a new export would get a new id).
    held = session.export(_LOCAL, False)[1]
    sent = _frames(session, monkeypatch)
    made = _encodes(session, monkeypatch)
    session._ids = itertools.count(rid)
    fast_reply = session.call(target, args, kwargs, "the fast path", lambda: [])
    fast_frame, fast_encodes = sent[-1], list(made)
    del sent[:], made[:]
    session._ids = itertools.count(rid)
    general_reply = session.request("call", (target, args, kwargs), "the general path")
    general_frame = sent[-1]
    monkeypatch.undo()
    session.unexport([held])
    session._ids = itertools.count(rid + 5)

    assert fast_reply[1] == general_reply[1] == rid << protocol.LANE_BITS | session.local.lane.number
    assert fast_reply[3] == general_reply[3] == len(args) + len(kwargs)
    assert fast_frame == general_frame, f"{name}: Session.call and request('call') sent different frames"
    if path == FAST:
        assert not fast_encodes, f"{name}: Session.call went through the general encoder"
        assert fast_frame[0] == protocol.TAG_PICKLE and not fast_frame[2]
    elif path == REFUSED:
        assert fast_encodes == [fast_frame], f"{name}: Session.call did not take the general path"


@pytest.mark.parametrize("exports", [False, True], ids=["nothing of ours in the child", "an object of ours held there"])
def test_session_call_exchanges_inline_only_while_the_child_holds_nothing_of_ours(
    remote: Any, monkeypatch: pytest.MonkeyPatch, exports: bool
) -> None:
    """Session.call sends and waits itself, with request's frame and answer, unless the child holds an object of ours."""
    session = spawnproxy.daemon_of(remote)._session
    echo = remote.echo
    assert echo() == 0  # this thread holds a lane
    owner, target = type(echo)._spawnproxy_ref_(echo)
    held = session.export(_LOCAL, False)[1] if exports else None
    assert bool(session.exports.objects) == exports
    exchanges: list[int] = []
    real = session._lane_exchange
    monkeypatch.setattr(session, "_lane_exchange", lambda *a: exchanges.append(a[1]) or real(*a))
    sent = _frames(session, monkeypatch)
    try:
        session._ids = itertools.count(500)
        fast_reply = session.call(target, (1, "é", b"x"), {"k": None}, "the fast path", lambda: [])
        fast_frame = sent[-1]
        fast_exchanges = list(exchanges)
        session._ids = itertools.count(500)
        general_reply = session.request("call", (target, (1, "é", b"x"), {"k": None}), "the general path")
        general_frame = sent[-1]
    finally:
        monkeypatch.undo()
        if held is not None:
            session.unexport([held])
        session._ids = itertools.count(600)
    assert fast_frame == general_frame
    assert fast_reply == general_reply and fast_reply[3] == 4
    lane_rid = 500 << protocol.LANE_BITS | session.local.lane.number
    assert fast_exchanges == ([lane_rid] if exports else []), "Session.call took the wrong exchange"


# -- the child side: op_call against resolve, calling, result -----------------------------------


class Calc:
    """What the in-process child's table holds: methods of each kind of result."""

    def __init__(self, depth: int = 1) -> None:
        self._lock = threading.Lock()  # unpicklable: a Calc goes by reference
        self.inner = Calc(depth - 1) if depth else None
        self.big_value = b"b" * (BIG + 7)

    def add(self, a: Any, b: Any = 0) -> Any:
        return a + b

    def me(self) -> Calc:
        return self

    def lock(self) -> Any:
        return self._lock

    def nothing(self) -> None:
        return None

    def big(self) -> bytes:
        return self.big_value

    def values(self) -> list[Any]:
        return [1, "é", None, (2.5, 3j)]

    def boom(self) -> None:
        raise KeyError("boom")


class SelfCaller:
    """Calling it returns itself: the result is the call's target."""

    def __call__(self) -> SelfCaller:
        return self


def _general_call(child: Any, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, Any]:
    """The composition op_call inlines: resolve the target, call it, classify the result."""
    base, obj = child.resolve(target)
    value = obj(*args, **kwargs)
    return child.result(value, base, obj)  # type: ignore[no-any-return]


class InProcessChild:
    """A `Child` serving over one end of a socket pair, in this thread; the other end reads its frames."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.child = serve.Child(Channel(mine), dict(ops.OPS))
        self.peer = Channel(theirs)
        self.calc = Calc()
        self.calc_id = self.child.table.pin(self.calc)
        self.selfcaller_id = self.child.table.pin(SelfCaller())

    def reply_frame(self, op: Callable[..., Any], rid: int, target: Any, args: Any, kwargs: Any) -> tuple[bytes, bytes]:
        """The reply frame the serve loop sends for a call run by `op`."""
        table = self.child.ops
        saved = table["call"]
        table["call"] = op
        try:
            self.child.codec.retell_types()  # each run describes a type as the first did
            queue = self.child._main_queue
            queue.append((protocol.REQUEST, rid, "call", target, args, kwargs))
            self.child._run_next(queue)
        finally:
            table["call"] = saved
        tag, payload = self.peer.recv()
        return tag, bytes(payload)

    def close(self) -> None:
        self.child.channel.close()
        self.peer.close()


@pytest.fixture
def inproc() -> Iterator[InProcessChild]:
    made = InProcessChild()
    try:
        yield made
    finally:
        made.close()


# (name, target (with "CALC"/"SELF" for the table ids), args, kwargs, the `how` op_call gives)
CHILD_CALLS: list[tuple[str, Any, tuple[Any, ...], dict[str, Any], int]] = [
    ("a plain value", ("CALC", "add"), (1, 2), {}, ops.MAYBE),
    ("kwargs", ("CALC", "add"), ("a",), {"b": "é"}, ops.MAYBE),
    ("big ints", ("CALC", "add"), (2**100,), {"b": -(2**90)}, ops.MAYBE),
    ("None", ("CALC", "nothing"), (), {}, ops.MAYBE),
    ("a list of values", ("CALC", "values"), (), {}, ops.MAYBE),
    ("large bytes (out of band)", ("CALC", "big"), (), {}, ops.MAYBE),
    ("a method returning self", ("CALC", "me"), (), {}, protocol.BASE),
    ("a nested path", ("CALC", "inner", "add"), (2.5,), {}, ops.MAYBE),
    ("a nested method returning its object", ("CALC", "inner", "me"), (), {}, ops.MAYBE),
    ("the target itself", "SELF", (), {}, protocol.SAME),
    ("by reference", ("CALC", "lock"), (), {}, ops.MAYBE),
]


def _target(spec: Any, inproc: InProcessChild) -> Any:
    ids = {"CALC": inproc.calc_id, "SELF": inproc.selfcaller_id}
    if isinstance(spec, str):
        return ids[spec]
    return (ids[spec[0]],) + spec[1:]


@pytest.mark.parametrize(("name", "spec", "args", "kwargs", "how"), CHILD_CALLS, ids=[row[0] for row in CHILD_CALLS])
def test_op_call_gives_what_resolve_call_result_give(
    inproc: InProcessChild, name: str, spec: Any, args: tuple[Any, ...], kwargs: dict[str, Any], how: int
) -> None:
    """op_call's (how, payload) and reply frame equal those of resolve, the call and result, for one id."""
    child, target = inproc.child, _target(spec, inproc)
    fast = ops.op_call(child, target, args, kwargs)
    general = _general_call(child, target, args, kwargs)
    assert fast[0] == general[0] == how
    assert fast[1] is general[1] or fast[1] == general[1], f"{name}: payloads differ"
    rid = 77 << protocol.LANE_BITS  # lane 0: the reply comes on the channel
    fast_frame = inproc.reply_frame(ops.op_call, rid, target, args, kwargs)
    general_frame = inproc.reply_frame(_general_call, rid, target, args, kwargs)
    assert fast_frame == general_frame, f"{name}: op_call's reply frame differs from the general one"
    tag, payload = fast_frame
    if tag == protocol.TAG_BUFFERS:
        tag, pickled, buffers = split_buffers(memoryview(payload))
        reply = pickle.loads(pickled, buffers=buffers)
    else:
        reply = pickle.loads(payload) if tag == protocol.TAG_PICKLE else None
    if reply is not None:
        assert reply[:2] == (protocol.REPLY, rid)


def test_op_call_kinds_of_reply_are_covered(inproc: InProcessChild) -> None:
    """The child table above reaches every kind of reply op_call leads to: VALUE, REF, SAME and BASE."""
    kinds = set()
    for _name, spec, args, kwargs, _how in CHILD_CALLS:
        tag, payload = inproc.reply_frame(ops.op_call, 5 << protocol.LANE_BITS, _target(spec, inproc), args, kwargs)
        if tag == protocol.TAG_BUFFERS:
            tag, pickled, buffers = split_buffers(memoryview(payload))
            kinds.add(pickle.loads(pickled, buffers=buffers)[2])
        else:
            kinds.add(pickle.loads(payload)[2])
    assert kinds == {protocol.VALUE, protocol.REF, protocol.SAME, protocol.BASE}


def _user_frames(error: tuple[Any, ...]) -> tuple[Any, ...]:
    """An encoded exception without its traceback text and the frames of the machinery that ran it."""
    module, qualname, message, data, frames, _text, cause, context = error
    kept = [f for f in frames if f[1] not in ("op_call", "_general_call", "_run_next")]
    return module, qualname, message, data, kept, cause, context


def test_op_call_raises_what_the_general_composition_raises(inproc: InProcessChild) -> None:
    """An exception in the call: both raise it, and the ERROR replies differ only in the machinery's frames."""
    child, target = inproc.child, (inproc.calc_id, "boom")
    with pytest.raises(KeyError, match="boom"):
        ops.op_call(child, target, (), {})
    with pytest.raises(KeyError, match="boom"):
        _general_call(child, target, (), {})
    rid = 9 << protocol.LANE_BITS
    replies = []
    for op in (ops.op_call, _general_call):
        tag, payload = inproc.reply_frame(op, rid, target, (), {})
        assert tag == protocol.TAG_PICKLE
        replies.append(pickle.loads(payload))
    (fast, general) = replies
    assert fast[:3] == general[:3] == (protocol.REPLY, rid, protocol.ERROR)
    assert _user_frames(fast[3]) == _user_frames(general[3])
    assert [f[1] for f in _user_frames(fast[3])[4]] == ["boom"]


def test_op_call_of_a_missing_object_fails_as_resolve_does(inproc: InProcessChild) -> None:
    """A released object id: op_call raises the LookupError resolve raises, with the same message."""
    missing = 10**6
    with pytest.raises(LookupError) as fast:
        ops.op_call(inproc.child, (missing, "add"), (1,), {})
    with pytest.raises(LookupError) as general:
        inproc.child.resolve((missing, "add"))
    assert str(fast.value) == str(general.value)


def test_child_queue_is_empty_after_the_runs(inproc: InProcessChild) -> None:
    """reply_frame leaves nothing queued and nothing unread: each run is one request and one reply."""
    inproc.reply_frame(ops.op_call, 3 << protocol.LANE_BITS, (inproc.calc_id, "add"), (1,), {})
    assert not inproc.child._main_queue
    assert inproc.peer.wait(0) is None
