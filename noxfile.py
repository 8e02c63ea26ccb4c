"""Every way to check spawnproxy: tests, lint, typecheck, docs, bench.

`nox` runs the default sessions; `nox -s tests-3.12` runs one.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

PARENT_PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _installed_parent_pythons() -> list[str]:
    """The 3.10+ interpreters found here (on PATH or under pyenv), so CI tests what it has."""
    found = []
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for version in PARENT_PYTHONS:
        if shutil.which(f"python{version}") or glob.glob(f"{pyenv_root}/versions/{version}*/bin/python{version}"):
            found.append(version)
    return found or PARENT_PYTHONS


def _interpreter(version: str) -> str:
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    matches = sorted(glob.glob(f"{pyenv_root}/versions/{version}*/bin/python{version}"))
    return matches[-1] if matches else f"python{version}"


@nox.session(python=[_interpreter(v) for v in _installed_parent_pythons()])
def tests(session: nox.Session) -> None:
    """Run the test suite (children on every CPython 3.8-3.13 found) on each parent Python 3.10+.

    The newest parent runs everything; the others leave out the tests marked slow (stress, floods,
    fault timing), which exercise the transport and the processes rather than the parent's
    version, so that the whole stays well under CI's time budget.  Arguments replace that choice.
    """
    session.install("-e", ".[tests]")
    args = session.posargs
    if not args and session.python != _interpreter(_installed_parent_pythons()[-1]):
        args = ["-m", "not slow"]
    session.run("pytest", *args, env={"PYTHONDONTWRITEBYTECODE": "1"})


@nox.session(python=_interpreter("3.11"))
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", "spawnproxy", "tests", "noxfile.py", "benchmarks", "examples")
    session.run("ruff", "format", "--check", "spawnproxy", "tests", "noxfile.py")


@nox.session(python=_interpreter("3.11"))
def typecheck(session: nox.Session) -> None:
    """mypy (strict) on the package."""
    session.install("-e", ".", "mypy")
    session.run("mypy")


@nox.session(python=_interpreter("3.11"))
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly and run its examples."""
    session.install("-e", ".[docs,tests]")
    session.run("mkdocs", "build", "--strict", "--site-dir", os.path.join(session.create_tmp(), "site"))
    session.run("pytest", "-m", "docs", "tests/test_docs_examples.py")


@nox.session(python=_interpreter("3.11"))
def bench(session: nox.Session) -> None:
    """Benchmark spawnproxy side by side with its peers, and through srun; writes benchmarks/results/."""
    session.install("-e", ".", "-r", "benchmarks/requirements.txt")
    session.run("python", "benchmarks/run.py", *session.posargs)
    # The srun rows: children as Slurm job steps on a one-node cluster the script starts (as root,
    # with slurm-wlm and munge); where none can start it says why and exits 2, which is no failure.
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run(
        "python", "benchmarks/slurm_cost.py", *quick, "--json", "benchmarks/results/slurm.json", success_codes=[0, 2]
    )
