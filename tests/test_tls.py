"""TLS on both sides: with certificates the tests generate; an untrusted daemon is refused clearly."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest

import spawnproxy
from spawnproxy import ScriptDefinition

pytestmark = pytest.mark.timeout(60)

SCRIPT = "def echo(x):\n    return x\n"


@pytest.fixture
def tls_server(tls_files: dict[str, str]) -> Any:
    server = spawnproxy.serve(ScriptDefinition(SCRIPT), certfile=tls_files["cert"], keyfile=tls_files["key"])
    yield server
    server.terminate()


def test_client_that_trusts_the_certificate_works(tls_server: Any, tls_files: dict[str, str]) -> None:
    """A client whose context trusts the daemon's certificate (hostname checked) talks TLS to it."""
    context = ssl.create_default_context(cafile=tls_files["cert"])
    root = spawnproxy.connect(tls_server.address, tls_server.authkey, ssl_context=context)
    assert root.echo("secret") == "secret"
    channel = spawnproxy.daemon_of(root)._session.channel
    assert isinstance(channel.sock, ssl.SSLSocket) and channel.sock.version() in ("TLSv1.2", "TLSv1.3")


def test_untrusted_certificate_is_refused_with_a_clear_error(tls_server: Any, tls_files: dict[str, str]) -> None:
    """A client that does not trust the daemon's certificate is refused: ConnectError says why."""
    stranger = ssl.create_default_context(cafile=tls_files["other_cert"])
    with pytest.raises(spawnproxy.ConnectError, match="does not trust"):
        spawnproxy.connect(tls_server.address, tls_server.authkey, ssl_context=stranger)
    with pytest.raises(spawnproxy.ConnectError, match="does not trust"):
        spawnproxy.connect(tls_server.address, tls_server.authkey, ssl_context=ssl.create_default_context())
    assert tls_server.connect().echo(1) == 1  # the daemon goes on serving


def test_wrong_hostname_is_refused(tls_server: Any, tls_files: dict[str, str]) -> None:
    """The certificate must name the host the client asked for."""
    context = ssl.create_default_context(cafile=tls_files["cert"])
    with pytest.raises(spawnproxy.ConnectError, match="does not trust"):
        spawnproxy.connect(tls_server.address, tls_server.authkey, ssl_context=context, server_hostname="example.org")


def test_plain_client_and_tls_daemon_do_not_mix(tls_server: Any, tls_files: dict[str, str]) -> None:
    """A plain client of a TLS daemon, and a TLS client of a plain daemon, get a ConnectError."""
    with pytest.raises(spawnproxy.ConnectError, match="handshake"):
        spawnproxy.connect(tls_server.address, tls_server.authkey)
    with spawnproxy.serve(ScriptDefinition(SCRIPT)) as plain:
        context = ssl.create_default_context(cafile=tls_files["cert"])
        with pytest.raises(spawnproxy.ConnectError, match="TLS"):
            spawnproxy.connect(plain.address, plain.authkey, ssl_context=context)


def test_client_certificates_required_by_cafile(tls_files: dict[str, str]) -> None:
    """With cafile the daemon requires a client certificate signed by that CA."""
    with spawnproxy.serve(
        ScriptDefinition(SCRIPT), certfile=tls_files["cert"], keyfile=tls_files["key"], cafile=tls_files["ca"]
    ) as server:
        without = ssl.create_default_context(cafile=tls_files["cert"])
        with pytest.raises(spawnproxy.ConnectError):
            spawnproxy.connect(server.address, server.authkey, ssl_context=without).echo(1)
        with_cert = ssl.create_default_context(cafile=tls_files["cert"])
        with_cert.load_cert_chain(tls_files["client_cert"], tls_files["client_key"])
        assert spawnproxy.connect(server.address, server.authkey, ssl_context=with_cert).echo(2) == 2


def test_large_frames_and_threads_over_tls(tls_server: Any) -> None:
    """Frames larger than a TLS record, from several threads at once, arrive whole."""
    import os
    import threading

    root = tls_server.connect()
    blob = os.urandom(5 << 20)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                assert root.echo(blob) == blob
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_detached_tls_daemon_state_file_pins_its_certificate(tmp_path: Any, tls_files: dict[str, str]) -> None:
    """connect(state_file=...) trusts exactly the certificate the daemon serves."""
    state = tmp_path / "tls.json"
    server = spawnproxy.serve(
        ScriptDefinition(SCRIPT), certfile=tls_files["cert"], keyfile=tls_files["key"], detach=True, state_file=state
    )
    try:
        root = spawnproxy.connect(state_file=state)
        assert root.echo("over tls") == "over tls"
    finally:
        server.terminate()


def test_a_slow_tls_handshake_is_dropped_within_the_handshake_timeout(tls_server: Any) -> None:
    """A peer that trickles its TLS hello byte by byte is dropped within handshake_timeout, like a plain one."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    with socket.create_connection(tls_server.address, timeout=5) as sock:
        started = time.monotonic()
        sock.settimeout(0.3)
        try:
            for byte in hello[:-1]:  # never the whole hello: the daemon must not wait for it
                sock.send(bytes([byte]))
                time.sleep(0.1)
                if time.monotonic() - started > 4:
                    break
            sock.settimeout(5)
            while sock.recv(4096):
                pass
        except OSError:
            pass
        took = time.monotonic() - started
    assert took < 1.0 + 0.5, f"dropped after {took:.2f} s"
    assert tls_server.connect().echo(1) == 1
