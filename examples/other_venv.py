"""Use a module that only exists in another virtual environment (here made on the fly)."""

import os
import subprocess
import sys
import sysconfig
import tempfile

import spawnproxy


def make_venv(path: str) -> str:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    python = os.path.join(path, "bin", "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with open(os.path.join(site, "legacy_lib.py"), "w") as f:
        f.write("VERSION = '1.0-only-in-the-venv'\n\ndef compute(x):\n    return x * 2\n")
    return python


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        python = make_venv(os.path.join(tmp, "venv"))
        legacy = spawnproxy.run_module("legacy_lib", python_exe=python)
        print("legacy_lib", legacy.VERSION, "computes", legacy.compute(21))
        print("importable here?", sysconfig.get_paths()["purelib"] in sys.path and "legacy_lib" in sys.modules)
        legacy.terminate_daemon()


if __name__ == "__main__":
    main()
