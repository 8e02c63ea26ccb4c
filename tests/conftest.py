"""Shared fixtures: child interpreters found at run time, and no child outliving its test."""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

# Named bounds (seconds), so that tests say what they wait for.
CHILD_EXIT = 5.0
DEATH_NOTICE = 1.0
START = 2.0


@functools.lru_cache(maxsize=1)
def child_interpreters() -> dict[str, str]:
    """CPython 3.8-3.13 executables on this machine: 'X.Y' -> path (found at run time)."""
    candidates: list[str] = []
    roots = [os.environ.get("PYENV_ROOT", "")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            roots.append(subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    roots.append(os.path.expanduser("~/.pyenv"))
    for root in filter(None, roots):
        candidates += sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python3.*")))
    for minor in range(8, 14):
        found = shutil.which(f"python3.{minor}")
        if found:
            candidates.append(found)
    found_by_version: dict[str, str] = {}
    for exe in candidates:
        if not os.access(exe, os.X_OK) or exe.endswith("-config"):
            continue
        version = interpreter_version(exe)
        if version in {f"3.{m}" for m in range(8, 14)}:
            found_by_version.setdefault(version, exe)
    return found_by_version


def interpreter_version(exe: str) -> str | None:
    """'X.Y' of a Python executable (any version, Python 2 included), or None if it does not run."""
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    version = out.stdout.strip()
    return version if out.returncode == 0 and version else None


@pytest.fixture
def parents():
    """Parent programs (tests.targets.parents.Parent) a test starts; ended with their children after it."""
    started: list = []
    yield started
    for parent in started:
        parent.close()


ALL_VERSIONS = [f"3.{m}" for m in range(8, 14)]


@pytest.fixture(params=ALL_VERSIONS)
def child_python(request: pytest.FixtureRequest) -> str:
    """The path of a child interpreter of each version; skips where it is not installed."""
    exe = child_interpreters().get(request.param)
    if exe is None:
        pytest.skip(f"CPython {request.param} is not installed here")
    return exe


@pytest.fixture(params=[False, True], ids=["cold", "warm"])
def warm(request: pytest.FixtureRequest) -> bool:
    """The `warm` option a test starts its children with: each such test runs cold and warm (a zygote's fork)."""
    return bool(request.param)


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie (it may vanish while we look)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True)
def no_leaked_children():
    """Fail a test that leaves a child process behind (after a bounded wait); zygotes live on by design."""
    from spawnproxy._zygote import zygote_pids

    before = _children()
    yield
    deadline = time.monotonic() + CHILD_EXIT
    while True:
        import gc

        gc.collect()
        left = _children() - before - set(zygote_pids())
        left = {pid for pid in left if running(pid)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    assert not left, f"child processes outlived the test: {sorted(left)}"


def run_python(code: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh parent interpreter (this one), with the repo importable."""
    full_env = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env["PYTHONPATH"] = root + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=root
    )


def _make_certificate(directory: str, name: str, ca: tuple[str, str] | None = None) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost made with the openssl command: (certfile, keyfile)."""
    cert, key = os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")
    subject = ["-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    if ca is None:
        command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        command += ["-keyout", key, "-out", cert, *subject]
        # Its own trust anchor, or a CA: Python 3.13 (VERIFY_X509_STRICT) wants the key usage said.
        command += ["-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign"]
    else:
        csr = os.path.join(directory, f"{name}.csr")
        subprocess.run(
            ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, *subject],
            check=True,
            capture_output=True,
            timeout=60,
        )
        # The extensions Python 3.13's default context insists on (VERIFY_X509_STRICT).
        extensions = os.path.join(directory, f"{name}.ext")
        with open(extensions, "w") as f:
            f.write(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=clientAuth,serverAuth\nsubjectKeyIdentifier=hash\n"
                "authorityKeyIdentifier=keyid,issuer\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
            )
        command = ["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial"]
        command += ["-days", "2", "-out", cert, "-extfile", extensions]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Certificates the tests generate: a server's (self-signed), another one, a CA and a client it signed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: no certificates for the TLS tests")
    directory = str(tmp_path_factory.mktemp("tls"))
    files: dict[str, str] = {}
    files["cert"], files["key"] = _make_certificate(directory, "server")
    files["other_cert"], files["other_key"] = _make_certificate(directory, "stranger")
    files["ca"], files["ca_key"] = _make_certificate(directory, "ca")
    files["client_cert"], files["client_key"] = _make_certificate(
        directory, "client", ca=(files["ca"], files["ca_key"])
    )
    return files


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Whether `predicate()` became true within `timeout` seconds (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def gone(pid: int, within: float) -> bool:
    """Whether process `pid` has ended (or is a zombie) within `within` seconds."""
    return wait_until(lambda: not running(pid), within)


@pytest.fixture
def private_state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """XDG_RUNTIME_DIR and XDG_STATE_HOME point into a fresh private directory: no test touches the user's own.

    Returns the runtime directory (mode 0700), where daemons' state files go by default.
    """
    base = tmp_path_factory.mktemp("xdg")
    runtime, state_home = base / "runtime", base / "state"
    for path in (runtime, state_home):
        path.mkdir(mode=0o700)
        path.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    return str(runtime)
