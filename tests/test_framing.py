"""Frames, out-of-band buffers and the ssh command line, tested in-process (no child): what `_child.protocol`, `channel` and `buffers` promise."""

from __future__ import annotations

import array
import os
import pickle
import shlex
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

from spawnproxy import _bootstrap, _ssh
from spawnproxy._child import protocol
from spawnproxy._child.buffers import buffer_taker, out_of_band, split_buffers
from spawnproxy._child.channel import Channel, ChannelClosed, SendTimeout
from spawnproxy._errors import DaemonStartError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    """A Channel on one end of an AF_UNIX socket pair, the raw socket of the other end."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(mine)
    try:
        yield channel, theirs
    finally:
        channel.close()
        theirs.close()


@pytest.fixture
def channels() -> Iterator[tuple[Channel, Channel]]:
    """Two Channels on the two ends of an AF_UNIX socket pair."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    one, other = Channel(a), Channel(b)
    try:
        yield one, other
    finally:
        one.close()
        other.close()


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    deadline = time.monotonic() + 10
    while len(data) < n and time.monotonic() < deadline:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _unread(sock: socket.socket) -> bytes:
    """What is buffered on `sock` now, without waiting."""
    data = b""
    for _ in range(100_000):
        try:
            chunk = sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


# -- the bytes on the wire --------------------------------------------------------------------------

SMALL_FRAMES = [
    (protocol.TAG_PICKLE, pickle.dumps((protocol.REQUEST, 1 << protocol.LANE_BITS, "ping"), 5)),
    (protocol.TAG_REFS, b"refs payload"),
    (protocol.TAG_DILL, b"dill payload"),
    (protocol.TAG_LANE, protocol.LANE.pack(7, 0)),
    (protocol.TAG_PICKLE, b""),
    (protocol.TAG_PICKLE, bytes(range(256)) * 100),
]


@pytest.mark.parametrize(("tag", "payload"), SMALL_FRAMES, ids=["P", "R", "D", "L", "empty", "25 KiB"])
def test_a_frame_is_a_signed_big_endian_length_then_tag_and_payload(
    pair: tuple[Channel, socket.socket], tag: bytes, payload: bytes
) -> None:
    """A frame on the wire: 4-byte big-endian signed length (of tag and payload), the tag, the payload."""
    channel, theirs = pair
    channel.send(tag, payload)
    expected = struct.pack("!i", 1 + len(payload)) + tag + payload
    assert _read_exactly(theirs, len(expected)) == expected
    assert _unread(theirs) == b""


@pytest.mark.parametrize(("tag", "payload"), SMALL_FRAMES, ids=["P", "R", "D", "L", "empty", "25 KiB"])
def test_a_plain_connection_reads_our_frames_and_we_read_its(
    pair: tuple[Channel, socket.socket], tag: bytes, payload: bytes
) -> None:
    """multiprocessing.connection.Connection's recv_bytes reads our frame; our recv reads its send_bytes."""
    channel, theirs = pair
    connection = Connection(theirs.detach())
    try:
        channel.send(tag, payload)
        assert connection.recv_bytes() == tag + payload
        connection.send_bytes(tag + payload)
        got_tag, got_payload = channel.recv()
        assert (got_tag, bytes(got_payload)) == (tag, payload)
    finally:
        connection.close()


def test_frames_sent_back_to_back_are_read_one_by_one(channels: tuple[Channel, Channel]) -> None:
    """Several frames that arrive in one read come out of recv one at a time, in order, each whole."""
    one, other = channels
    sent = [(protocol.TAG_PICKLE, pickle.dumps(i, 5)) for i in range(50)]
    for tag, payload in sent:
        one.send(tag, payload)
    received = [other.recv() for _ in sent]
    assert [(tag, bytes(p)) for tag, p in received] == sent
    assert other.wait(0) is None


def test_the_long_header_of_minus_one_and_eight_bytes_is_read(pair: tuple[Channel, socket.socket]) -> None:
    """A length of -1 then an 8-byte unsigned length (multiprocessing's header of huge frames) is read."""
    channel, theirs = pair
    body = protocol.TAG_PICKLE + pickle.dumps("long header", 5)
    theirs.sendall(struct.pack("!iQ", -1, len(body)) + body)
    tag, payload = channel.recv()
    assert (tag, pickle.loads(payload)) == (protocol.TAG_PICKLE, "long header")


def test_a_frame_arriving_in_pieces_is_reassembled(pair: tuple[Channel, socket.socket]) -> None:
    """A frame whose bytes come one at a time (header split too) is returned whole."""
    channel, theirs = pair
    body = protocol.TAG_REFS + b"abcdef" * 1000
    frame = struct.pack("!i", len(body)) + body
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(channel.recv()))
    reader.start()
    for i in range(0, len(frame), 997):
        theirs.sendall(frame[i : i + 997])
        time.sleep(0.001)
    reader.join(10)
    assert not reader.is_alive()
    tag, payload = result[0]
    assert (tag, bytes(payload)) == (protocol.TAG_REFS, body[1:])


def test_a_frame_larger_than_the_socket_buffer_goes_whole_while_the_peer_reads(
    channels: tuple[Channel, Channel],
) -> None:
    """A frame under BIG_FRAME but past the socket buffer travels in-band, whole, as the other end reads."""
    one, other = channels
    payload = os.urandom(protocol.BIG_FRAME - 100)
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(other.recv()))
    reader.start()
    one.send(protocol.TAG_DILL, payload)
    reader.join(10)
    assert not reader.is_alive()
    assert result[0][0] == protocol.TAG_DILL and bytes(result[0][1]) == payload


# -- large frames in a memfd ------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd on this platform")
def test_a_big_frame_travels_in_a_memfd(pair: tuple[Channel, socket.socket]) -> None:
    """A frame of BIG_FRAME bytes or more: on the socket only b"M" and its size, the frame itself in a passed memfd."""
    channel, theirs = pair
    payload = os.urandom(protocol.BIG_FRAME)
    channel.send(protocol.TAG_PICKLE, payload)
    data, ancillary, _flags, _addr = theirs.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 4))
    size = 1 + len(payload)
    assert data == struct.pack("!i", 9) + protocol.TAG_MEMFD + struct.pack("!Q", size)
    (level, kind, fd_bytes) = ancillary[0]
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fds = array.array("i")
    fds.frombytes(fd_bytes[: len(fd_bytes) - len(fd_bytes) % fds.itemsize])
    with open(fds[0], "rb") as memfd:
        assert memfd.read() == protocol.TAG_PICKLE + payload


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd on this platform")
def test_a_big_frame_arrives_intact(channels: tuple[Channel, Channel]) -> None:
    """A Channel receiving a memfd frame returns the frame's own tag and payload, byte for byte."""
    one, other = channels
    for size in (protocol.BIG_FRAME - 1, protocol.BIG_FRAME, 3 * protocol.BIG_FRAME + 5):
        payload = os.urandom(size)
        one.send(protocol.TAG_REFS, payload)
        tag, received = other.recv()
        assert tag == protocol.TAG_REFS and bytes(received) == payload
        del received


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd on this platform")
def test_large_frames_of_changing_sizes_reuse_one_memfd_and_arrive_intact(
    channels: tuple[Channel, Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large frames back and forth, each larger or smaller than the last, travel in one reused memfd, byte for byte."""
    one, other = channels
    made = []
    real = os.memfd_create
    monkeypatch.setattr(os, "memfd_create", lambda *args: made.append(real(*args)) or made[-1])
    big = protocol.BIG_FRAME
    for i, size in enumerate((2 * big, big + 64, 3 * big + 5, big, 2 * big + 7, big + 1)):
        sender, receiver = (one, other) if i % 2 == 0 else (other, one)
        payload = bytes([i]) * size
        sender.send(protocol.TAG_PICKLE, payload)
        tag, received = receiver.recv()
        assert tag == protocol.TAG_PICKLE and bytes(received) == payload, f"frame {i} of {size} bytes"
        del received  # its mapping goes: the memfd carries the next frame, the other way
    assert len(made) == 1


def test_a_memfd_frame_without_its_descriptor_is_channel_closed(pair: tuple[Channel, socket.socket]) -> None:
    """A b"M" frame that comes without a descriptor ends the channel (ChannelClosed), nothing is mapped."""
    channel, theirs = pair
    theirs.sendall(struct.pack("!i", 9) + protocol.TAG_MEMFD + struct.pack("!Q", 100))
    with pytest.raises(ChannelClosed, match="without its memfd"):
        channel.recv()


# -- out-of-band buffers (pickle protocol 5) --------------------------------------------------------


def _send_out_of_band(channel: Channel, message: Any) -> list[pickle.PickleBuffer]:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(message, 5, buffer_callback=buffer_taker(buffers))
    channel.send(protocol.TAG_PICKLE, data, buffers=buffers)
    return buffers


def _load(tag: bytes, payload: memoryview) -> Any:
    assert tag == protocol.TAG_BUFFERS
    inner, pickled, views = split_buffers(payload)
    assert inner == protocol.TAG_PICKLE
    return pickle.loads(pickled, buffers=views)


def test_small_values_are_not_swapped_and_stay_in_band() -> None:
    """out_of_band leaves small bytes and non-buffers as they are; buffer_taker keeps small buffers in band."""
    for value in (b"x" * (protocol.BIG_FRAME - 1), bytearray(10), 1, "s", None, (b"t",)):
        assert out_of_band(value) is value
    buffers: list[pickle.PickleBuffer] = []
    take = buffer_taker(buffers)
    assert take(pickle.PickleBuffer(b"s" * 100)) is True
    assert not buffers
    big = pickle.PickleBuffer(b"b" * protocol.BIG_FRAME)
    assert take(big) is False and buffers == [big]


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_large_buffer_round_trips_out_of_band(channels: tuple[Channel, Channel], kind: type) -> None:
    """A large bytes or bytearray goes out of band (not in the pickle) and arrives equal, as its own type."""
    one, other = channels
    value = kind(os.urandom(protocol.BIG_FRAME + 3))
    swapped = out_of_band(value)
    assert swapped is not value
    buffers = _send_out_of_band(one, (protocol.REPLY, 5, protocol.VALUE, swapped))
    assert len(buffers) == 1
    tag, payload = other.recv()
    _inner, pickled, views = split_buffers(payload)
    assert len(pickled) < 1000, "the buffer travelled inside the pickle"
    assert [v.nbytes for v in views] == [len(value)]
    message = _load(tag, payload)
    assert message[:3] == (protocol.REPLY, 5, protocol.VALUE)
    assert type(message[3]) is kind and message[3] == value


def test_split_buffers_aligns_each_part_to_64_bytes(channels: tuple[Channel, Channel]) -> None:
    """The pickle and each buffer of a TAG_BUFFERS frame start 64-byte aligned in the mapping."""
    one, other = channels
    values = (out_of_band(b"a" * (protocol.BIG_FRAME + 1)), out_of_band(b"b" * (protocol.BIG_FRAME + 13)))
    _send_out_of_band(one, values)
    _tag, payload = other.recv()
    _inner, pickled, views = split_buffers(payload)
    import ctypes

    for view in [pickled, *views]:
        # The mapping is page-aligned, and each part's offset in it a multiple of 64 (the frame's
        # tag counts: it is the mapping's first byte).  A private writable mapping: from_buffer works.
        assert not view.readonly
        assert ctypes.addressof(ctypes.c_char.from_buffer(view)) % 64 == 0
    assert [bytes(v[:1]) for v in views] == [b"a", b"b"]


def test_a_memoryview_keeps_its_format_and_shape() -> None:
    """A memoryview is always swapped (pickle refuses it otherwise) and is rebuilt with its format and shape."""
    numbers = array.array("i", range(12))
    view = memoryview(numbers).cast("B").cast("i", (3, 4))
    swapped = out_of_band(view)
    assert swapped is not view
    rebuilt = pickle.loads(pickle.dumps(swapped, 5))
    assert type(rebuilt) is memoryview
    assert (rebuilt.format, rebuilt.shape, rebuilt.tolist()) == ("i", (3, 4), view.tolist())


def test_a_numpy_array_arrives_without_a_copy_and_writable(channels: tuple[Channel, Channel]) -> None:
    """A large NumPy array arrives as a view of the received mapping (no copy), writable like the one sent."""
    numpy = pytest.importorskip("numpy")
    one, other = channels
    array_sent = numpy.arange(protocol.BIG_FRAME // 8 + 1000, dtype=numpy.float64).reshape(-1, 4)
    buffers = _send_out_of_band(one, ("array", array_sent))
    assert len(buffers) == 1
    tag, payload = other.recv()
    _inner, pickled, views = split_buffers(payload)
    received = pickle.loads(pickled, buffers=views)[1]
    numpy.testing.assert_array_equal(received, array_sent)
    assert not received.flags.owndata, "the array was copied out of the mapping"
    assert numpy.shares_memory(received, numpy.frombuffer(views[0], dtype=numpy.uint8))
    assert received.flags.writeable
    received[0, 0] = -1.0
    assert array_sent[0, 0] == 0.0  # a private mapping: the sender's array is untouched


# -- descriptors, lanes, end of stream, timeouts ----------------------------------------------------


def test_send_fd_passes_a_descriptor_with_a_lane_frame(channels: tuple[Channel, Channel]) -> None:
    """send_fd sends a small frame and a descriptor; the receiver gets the frame, then take_fd gives the descriptor."""
    one, other = channels
    read_end, write_end = os.pipe()
    try:
        one.send_fd(protocol.TAG_LANE, protocol.LANE.pack(42, 1), write_end)
        tag, payload = other.recv()
        assert tag == protocol.TAG_LANE
        assert protocol.LANE.unpack(payload) == (42, 1)
        received = other.take_fd()
        assert received not in (read_end, write_end)
        os.write(received, b"through the passed fd")
        os.close(received)
        assert os.read(read_end, 100) == b"through the passed fd"
        with pytest.raises(ChannelClosed):
            other.take_fd()  # one descriptor came, one was taken
    finally:
        os.close(read_end)
        os.close(write_end)


def test_lane_frame_layout() -> None:
    """A lane frame's payload: a 4-byte big-endian lane number, then 1 (open) or 0 (close)."""
    assert protocol.LANE.pack(1, 1) == b"\x00\x00\x00\x01\x01"
    assert protocol.LANE.pack(protocol.LANE_MASK, 0) == b"\x00\x00\xff\xff\x00"
    assert protocol.LANE_MASK == (1 << protocol.LANE_BITS) - 1
    rid = 12345 << protocol.LANE_BITS | 7
    assert (rid >> protocol.LANE_BITS, rid & protocol.LANE_MASK) == (12345, 7)


def test_eof_is_channel_closed(pair: tuple[Channel, socket.socket]) -> None:
    """recv at the end of the stream raises ChannelClosed, an EOFError."""
    channel, theirs = pair
    theirs.close()
    with pytest.raises(ChannelClosed) as caught:
        channel.recv()
    assert isinstance(caught.value, EOFError)


def test_eof_mid_frame_is_channel_closed(pair: tuple[Channel, socket.socket]) -> None:
    """A stream that ends inside a frame (header promised more) raises ChannelClosed, not a short frame."""
    channel, theirs = pair
    theirs.sendall(struct.pack("!i", 100_000) + protocol.TAG_PICKLE + b"x" * 70_000)
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(ChannelClosed):
        channel.recv()


def _fill(sock: socket.socket) -> int:
    """Write to `sock` until the kernel takes no byte more; return how many it took."""
    total = 0
    for size in (1 << 16, 1 << 10, 1):
        for _ in range(100_000):
            try:
                total += sock.send(b"f" * size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
    return total


def test_send_timeout_writes_nothing_of_the_frame(pair: tuple[Channel, socket.socket]) -> None:
    """With the peer not reading and the socket full, send raises SendTimeout by its deadline, and nothing is written."""
    channel, theirs = pair
    filled = _fill(channel.sock)
    started = time.monotonic()
    with pytest.raises(SendTimeout):
        channel.send(protocol.TAG_PICKLE, b"p" * 100, deadline=started + 0.1)
    assert 0.05 < time.monotonic() - started < 5
    assert not channel.pending
    assert _unread(theirs) == b"f" * filled  # the filler, not one byte of the frame
    channel.send(protocol.TAG_PICKLE, b"p" * 100, deadline=time.monotonic() + 5)
    assert _read_exactly(theirs, 105) == struct.pack("!i", 101) + protocol.TAG_PICKLE + b"p" * 100


def test_a_frame_cut_by_its_deadline_is_finished_before_the_next(
    channels: tuple[Channel, Channel],
) -> None:
    """A frame partly written when its deadline passed is kept: the next send finishes it first, the stream stays whole."""
    one, other = channels
    big = os.urandom(protocol.BIG_FRAME - 100)  # in-band, larger than the socket buffer
    with pytest.raises(SendTimeout):
        one.send(protocol.TAG_PICKLE, big, deadline=time.monotonic() + 0.1)
    assert one.pending
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.extend(bytes(p) for _t, p in (other.recv(), other.recv())))
    reader.start()
    one.send(protocol.TAG_REFS, b"next", deadline=time.monotonic() + 10)
    reader.join(10)
    assert not reader.is_alive()
    assert result == [big, b"next"]


# -- the ssh command line ---------------------------------------------------------------------------

SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None, reason="the OpenSSH client is not installed")
SAFE = f"{_bootstrap.SAFE_PATH_VARIABLE}={_bootstrap.SAFE_PATH_MARK}"

# (url, ssh options, env, the ssh arguments before "--", host, the remote env words, interpreter path)
SSH_CASES: list[tuple[str, list[str] | None, dict[str, str] | None, list[str], str, list[str], str]] = [
    ("ssh://host/usr/bin/python3", None, None, [], "host", [SAFE], "/usr/bin/python3"),
    ("ssh://me@host/usr/bin/python3", [], {}, ["-l", "me"], "host", [SAFE], "/usr/bin/python3"),
    ("ssh://host:2222/py", None, None, ["-p", "2222"], "host", [SAFE], "/py"),
    ("ssh://a.b@h.example:22/p", None, None, ["-p", "22", "-l", "a.b"], "h.example", [SAFE], "/p"),
    ("ssh://[::1]:2200/usr/bin/python3", None, None, ["-p", "2200"], "::1", [SAFE], "/usr/bin/python3"),
    (
        'ssh://host/opt/my python/it\'s "here"/python3',
        None,
        None,
        [],
        "host",
        [SAFE],
        '/opt/my python/it\'s "here"/python3',
    ),
    (
        "ssh://host/usr/bin/python3",
        ["-i", "/keys/my key", "-o", "ConnectTimeout=5"],
        {"A": "1", "B_2": "it's $(echo no) `x` ; # \n", "_E": ""},
        ["-i", "/keys/my key", "-o", "ConnectTimeout=5"],
        "host",
        ["A=1", "B_2=it's $(echo no) `x` ; # \n", "_E=", SAFE],
        "/usr/bin/python3",
    ),
    (
        "ssh://host/usr/bin/python3",
        None,
        {_bootstrap.SAFE_PATH_VARIABLE: "1"},
        [],
        "host",
        [f"{_bootstrap.SAFE_PATH_VARIABLE}=1"],
        "/usr/bin/python3",
    ),
]


@needs_ssh
@pytest.mark.parametrize(("url", "options", "env", "ssh_args", "host", "env_words", "path"), SSH_CASES)
def test_ssh_command_line(
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    options: list[str] | None,
    env: dict[str, str] | None,
    ssh_args: list[str],
    host: str,
    env_words: list[str],
    path: str,
) -> None:
    """The exact ssh argv, and a remote command that a shell splits into `exec env K=V... PYTHON -c BOOTSTRAP 0 stdio`."""
    monkeypatch.delenv(_ssh.SSH_OPTIONS_ENV, raising=False)
    command = _ssh.ssh_command(url, options, env)
    assert command[:-1] == [SSH, "-T", "-o", "BatchMode=yes", "-e", "none", *ssh_args, "--", host]
    remote = shlex.split(command[-1])
    assert remote == ["exec", "env", *env_words, path, "-c", _bootstrap.BOOTSTRAP, "0", "stdio"]


@needs_ssh
def test_ssh_options_from_the_environment_come_before_the_given_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """SPAWNPROXY_SSH_OPTIONS is split as a shell would, and goes before ssh_options."""
    monkeypatch.setenv(_ssh.SSH_OPTIONS_ENV, "-o 'ProxyJump=jump host' -v")
    command = _ssh.ssh_command("ssh://u@h:1/p", ["-q"], None)
    assert command[6:] == ["-p", "1", "-l", "u", "-o", "ProxyJump=jump host", "-v", "-q", "--", "h", command[-1]]


@pytest.mark.parametrize("key", ["--split-string", "-S", "1ABC", "A-B", "A B", "A=B", "", "É", "A\nB"])
def test_a_bad_env_key_is_a_one_line_error_before_ssh(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """A key that is not a variable name: ssh_command raises a one-line ValueError naming it (no ssh looked for)."""
    monkeypatch.setenv("PATH", "/nonexistent")  # the key check comes first: no ssh needed to see it
    with pytest.raises(ValueError, match="env key") as caught:
        _ssh.ssh_command("ssh://host/usr/bin/python3", None, {"GOOD": "1", key: "x"})
    message = str(caught.value)
    assert repr(key) in message and "\n" not in message
    with pytest.raises(ValueError):
        _ssh.check_remote_env({key: "x"})


BAD_URLS = [
    "ssh://host",
    "ssh://host:port/p",
    "http://host/p",
    "ssh:///usr/bin/python3",
    "ssh://user@/p",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_url_is_a_one_line_start_error(url: str) -> None:
    """A URL not of the form ssh://[user@]host[:port]/path raises a one-line DaemonStartError naming it."""
    with pytest.raises(DaemonStartError) as caught:
        _ssh.ssh_command(url, None, None)
    assert repr(url) in str(caught.value) and "\n" not in str(caught.value)


def test_no_ssh_client_is_a_one_line_start_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ssh on PATH, ssh_command raises a one-line DaemonStartError saying so."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DaemonStartError, match="no ssh on PATH") as caught:
        _ssh.ssh_command("ssh://host/usr/bin/python3", None, None)
    assert "\n" not in str(caught.value)
