"""Keys and TLS settings a daemon and its clients refuse: short keys, key files others can read or
that are not the user's, and TLS below 1.2 (set explicitly, also for a daemon running Python 3.8)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

import spawnproxy
from spawnproxy import ScriptDefinition, _client, _keys
from tests.test_cli import spawnproxy_cli

pytestmark = pytest.mark.timeout(60)

SHORT = b"fifteen bytes.."
ENOUGH = b"sixteen bytes..."


def test_keys_shorter_than_16_bytes_are_refused(tmp_path: Path) -> None:
    """serve(), connect() and key files refuse a key under 16 bytes with a one-line ValueError; 16 will do."""
    assert len(SHORT) == 15 and len(ENOUGH) == 16
    key_file = tmp_path / "key"
    key_file.write_bytes(SHORT + b"\n")
    key_file.chmod(0o600)
    for call in (
        lambda: spawnproxy.serve(ScriptDefinition("x = 1"), authkey=SHORT).terminate(),
        lambda: spawnproxy.connect(str(tmp_path / "none.sock"), SHORT),
        lambda: _keys.read_authkey_file(key_file),
    ):
        with pytest.raises(ValueError, match="at least 16 bytes") as info:
            call()
        assert "\n" not in str(info.value)
    with spawnproxy.serve(ScriptDefinition("x = 1"), authkey=ENOUGH) as server:
        assert spawnproxy.connect(server.address, ENOUGH).x == 1


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644], ids=oct)
def test_key_files_others_can_read_are_refused(tmp_path: Path, mode: int) -> None:
    """A key file group or others may read or write is refused, naming the file and what to do."""
    key_file = tmp_path / "key"
    key_file.write_bytes(ENOUGH)
    key_file.chmod(mode)
    with pytest.raises(PermissionError, match="chmod 600") as info:
        _keys.read_authkey_file(key_file)
    assert str(key_file) in str(info.value) and "\n" not in str(info.value)
    key_file.chmod(0o600)
    assert _keys.read_authkey_file(key_file) == ENOUGH


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user owns needs root")
def test_key_files_of_another_user_are_refused(tmp_path: Path) -> None:
    """A key file not owned by the user (here: by nobody) is refused even with mode 0600."""
    key_file = tmp_path / "key"
    key_file.write_bytes(ENOUGH)
    key_file.chmod(0o600)
    os.chown(key_file, 65534, 65534)
    with pytest.raises(PermissionError, match="not owned by") as info:
        _keys.read_authkey_file(key_file)
    assert "\n" not in str(info.value)


def test_the_command_line_refuses_an_unprotected_key_file(tmp_path: Path) -> None:
    """`--authkey-file` with a file others can read fails with one line on stderr, before connecting."""
    key_file = tmp_path / "key"
    key_file.write_bytes(ENOUGH)
    key_file.chmod(0o644)
    result = spawnproxy_cli(
        "connect", "--address", str(tmp_path / "none.sock"), "--authkey-file", str(key_file), cwd=tmp_path
    )
    assert result.returncode == 1
    assert "chmod 600" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


PROBE = """
import gc, ssl

def tls_floors():
    '''The minimum TLS version of every TLS context in this process.'''
    return sorted({int(o.minimum_version) for o in gc.get_objects() if isinstance(o, ssl.SSLContext)})
"""


@pytest.mark.parametrize("child_python", ["3.8"], indirect=True)
def test_tls_contexts_require_tls_1_2(tls_files: dict[str, str], child_python: str) -> None:
    """The daemon's TLS context (under Python 3.8, whose default is OpenSSL's) and the client's require TLS 1.2."""
    assert _client.client_context().minimum_version == ssl.TLSVersion.TLSv1_2
    with spawnproxy.serve(
        ScriptDefinition(PROBE), certfile=tls_files["cert"], keyfile=tls_files["key"], python_exe=child_python
    ) as server:
        assert server.proxy.tls_floors() == [int(ssl.TLSVersion.TLSv1_2)]
