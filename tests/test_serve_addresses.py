"""Where a daemon listens: Unix socket paths it must not steal or unlink, address strings that are
errors rather than socket files, localhost on both loopbacks, and no plaintext beyond loopback."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import spawnproxy
from spawnproxy import ScriptDefinition
from tests.test_cli import spawnproxy_cli

pytestmark = pytest.mark.timeout(60)

SCRIPT = "def add(a, b):\n    return a + b\n"
KEY = b"sixteen bytes at least, here"
# TEST-NET-1 (RFC 5737): an address no interface has, so binding it fails without exposing anything.
UNASSIGNED = "192.0.2.1"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _identity(path: str) -> tuple[int, int, int]:
    """Which file is at `path`: inode numbers alone are reused at once on some file systems."""
    info = os.stat(path)
    return info.st_dev, info.st_ino, info.st_ctime_ns


# -- item 7: a Unix socket path belongs to the daemon that answers there --------------------------------


def test_a_live_unix_socket_is_not_taken_over(tmp_path: Path) -> None:
    """A second daemon on the path where one answers fails with "already in use"; the first is untouched."""
    path = str(tmp_path / "d.sock")
    with spawnproxy.serve(ScriptDefinition(SCRIPT), path, KEY) as first:
        before = _identity(path)
        with pytest.raises(spawnproxy.DaemonStartError, match="already in use") as info:
            spawnproxy.serve(ScriptDefinition(SCRIPT), path, KEY)
        message = str(info.value)
        assert path in message and "\n" not in message
        assert _identity(path) == before
        assert spawnproxy.connect(path, KEY).add(1, 2) == 3
        assert first.is_alive()


def test_a_stale_socket_is_replaced_and_not_unlinked_by_its_old_owner(tmp_path: Path) -> None:
    """A killed daemon's socket is replaced by the next; ending the dead one's handle leaves the new one alone."""
    path = str(tmp_path / "d.sock")
    dead = spawnproxy.serve(ScriptDefinition(SCRIPT), path, KEY)
    psutil.Process(dead.pid).kill()
    assert dead.wait(5)
    with spawnproxy.serve(ScriptDefinition(SCRIPT), path, KEY) as second:
        dead.terminate()
        assert os.path.exists(path), "the dead daemon's handle unlinked its successor's socket"
        assert spawnproxy.connect(path, KEY).add(2, 2) == 4
        assert second.is_alive()


def test_a_daemon_unlinks_only_the_socket_it_created(tmp_path: Path) -> None:
    """A daemon whose path was taken over (its socket removed) does not unlink the new one when it stops."""
    path = str(tmp_path / "d.sock")
    first = spawnproxy.serve(ScriptDefinition(SCRIPT), path, KEY)
    try:
        client = spawnproxy.connect(path, KEY)  # stays connected after the path is gone
        os.unlink(path)  # someone removed the socket: the path is free for another daemon
        with spawnproxy.serve(ScriptDefinition(SCRIPT), path, KEY):
            before = _identity(path)
            spawnproxy.daemon_of(client).stop_daemon()  # type: ignore[attr-defined]
            assert first.wait(5)
            assert os.path.exists(path) and _identity(path) == before, "the daemon unlinked a socket not its own"
            first.terminate()
            assert os.path.exists(path) and _identity(path) == before, "the handle unlinked a socket not its own"
            assert spawnproxy.connect(path, KEY).add(3, 4) == 7
    finally:
        first.terminate()


# -- item 8: an address is a socket path only when it says so ----------------------------------------------

BAD_ADDRESSES: list[tuple[Any, str]] = [
    ("127.0.0.1:notaport", "port 'notaport'"),
    ("localhost", "no port"),
    ("127.0.0.1:", "no port"),
    ("127.0.0.1:70000", "port 70000"),
    ("[::1]:http", "port 'http'"),
    ("[::1]", "no port"),
    ("::1:8000", r"\[::1\]:8000"),
    (("127.0.0.1", 70000), "port 70000"),
    (("127.0.0.1", -1), "port -1"),
    ("unix:", "empty"),
]


@pytest.mark.parametrize(("address", "match"), BAD_ADDRESSES, ids=[str(a) for a, _ in BAD_ADDRESSES])
def test_malformed_addresses_are_one_line_errors_not_socket_files(
    address: Any, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve() and connect() refuse a malformed address with a one-line ValueError naming the port; no file appears."""
    monkeypatch.chdir(tmp_path)
    for call in (
        lambda: spawnproxy.serve(ScriptDefinition(SCRIPT), address, KEY),
        lambda: spawnproxy.connect(address, KEY),
    ):
        with pytest.raises(ValueError, match=match) as info:
            server = call()
            if isinstance(server, spawnproxy.Server):
                server.terminate()
        assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_unix_socket_paths_need_a_slash_or_the_unix_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Addresses `unix:NAME` and `./NAME` are Unix sockets in the current directory; a pathlib.Path is one too."""
    monkeypatch.chdir(tmp_path)
    for address, name in (("unix:a.sock", "a.sock"), ("./b.sock", "b.sock"), (Path("c.sock"), "c.sock")):
        with spawnproxy.serve(ScriptDefinition(SCRIPT), address, KEY) as server:
            assert server.address == str(tmp_path / name)
            assert spawnproxy.connect(address, KEY).add(1, 1) == 2
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_bracketed_ipv6_addresses() -> None:
    """The address `[::1]:PORT` is the IPv6 loopback and a port, for serve and connect."""
    with spawnproxy.serve(ScriptDefinition(SCRIPT), "[::1]:0", KEY) as server:
        host, port = server.address  # type: ignore[misc]
        assert host == "::1"
        assert spawnproxy.connect(f"[::1]:{port}", KEY).add(1, 2) == 3


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("address", ["localhost:0", ("localhost", 0)])
def test_localhost_listens_on_both_loopback_addresses(address: Any) -> None:
    """Host `localhost` binds 127.0.0.1 and ::1 on one port: clients reach the daemon on each, a squatter gets neither."""
    with spawnproxy.serve(ScriptDefinition(SCRIPT), address, KEY) as server:
        host, port = server.address  # type: ignore[misc]
        assert host == "localhost"
        for family, loopback in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            assert spawnproxy.connect((loopback, port), KEY).add(1, 1) == 2
            with socket.socket(family) as squatter, pytest.raises(OSError) as info:
                squatter.bind((loopback, port))
            assert info.value.errno == errno.EADDRINUSE
        assert spawnproxy.connect(f"localhost:{port}", KEY).add(2, 2) == 4


def test_the_command_line_refuses_a_malformed_address(tmp_path: Path) -> None:
    """`serve --address 127.0.0.1:notaport` fails with one line on stderr naming the port, and serves nothing."""
    (tmp_path / "calc.py").write_text(SCRIPT)
    state = str(tmp_path / "s.json")
    try:
        result = spawnproxy_cli(
            "serve", "calc.py", "--address", "127.0.0.1:notaport", "--detach", "--state-file", state, cwd=tmp_path
        )
    finally:
        if os.path.exists(state):  # what it did before: serve on a socket file of that name
            spawnproxy_cli("stop", "--state-file", state, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "notaport" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "127.0.0.1:notaport").exists()


# -- item 9: no plaintext beyond loopback unless asked for ------------------------------------------------


@pytest.mark.parametrize("address", [f"{UNASSIGNED}:0", ("0.0.0.0", 0), ("", 0), ("::", 0)])
def test_plaintext_beyond_loopback_is_refused(address: Any) -> None:
    """A non-loopback (or wildcard) address without TLS is a one-line ValueError naming TLS and the opt-in."""
    started = time.monotonic()
    with pytest.raises(ValueError, match="TLS") as info:
        spawnproxy.serve(ScriptDefinition(SCRIPT), address, KEY).terminate()
    message = str(info.value)
    assert "allow_plaintext=True" in message and "--allow-plaintext" in message and "\n" not in message
    assert time.monotonic() - started < 1, "refused before a daemon starts"


def test_allow_plaintext_opts_in() -> None:
    """allow_plaintext=True lets serve() go on to bind the address (here one no interface has)."""
    with pytest.raises(spawnproxy.DaemonStartError, match="could not listen"):
        spawnproxy.serve(ScriptDefinition(SCRIPT), (UNASSIGNED, 0), KEY, allow_plaintext=True).terminate()


def test_loopback_and_unix_sockets_need_no_opt_in(tmp_path: Path) -> None:
    """127.0.0.0/8 and Unix sockets are served without TLS and without the opt-in."""
    for address in (("127.0.0.2", 0), str(tmp_path / "d.sock")):
        with spawnproxy.serve(ScriptDefinition(SCRIPT), address, KEY) as server:
            assert spawnproxy.connect(server.address, KEY).add(1, 1) == 2


def test_tls_needs_no_opt_in_on_a_wildcard(tls_files: dict[str, str]) -> None:
    """With TLS a daemon may listen on every interface; a client reaches it over loopback."""
    import ssl

    with spawnproxy.serve(
        ScriptDefinition(SCRIPT), ("0.0.0.0", 0), KEY, certfile=tls_files["cert"], keyfile=tls_files["key"]
    ) as server:
        context = ssl.create_default_context(cafile=tls_files["cert"])
        port = server.address[1]
        assert spawnproxy.connect(("127.0.0.1", port), KEY, ssl_context=context).add(2, 3) == 5


def test_the_command_line_names_allow_plaintext(tmp_path: Path) -> None:
    """`serve --address` beyond loopback fails with one line naming --allow-plaintext; with the flag it goes on."""
    (tmp_path / "calc.py").write_text(SCRIPT)
    refused = spawnproxy_cli("serve", "calc.py", "--address", f"{UNASSIGNED}:0", cwd=tmp_path)
    assert refused.returncode == 1
    assert "--allow-plaintext" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    opted = spawnproxy_cli("serve", "calc.py", "--address", f"{UNASSIGNED}:0", "--allow-plaintext", cwd=tmp_path)
    assert opted.returncode == 1 and "could not listen" in opted.stderr, opted.stderr
