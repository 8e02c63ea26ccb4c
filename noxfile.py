"""Every way to check spawnproxy: tests, lint, typecheck, docs, build, bench.

`nox` runs the default sessions; `nox -s tests-3.12` runs one.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile

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
    """Build the documentation site strictly (Zensical; see mkdocs.yml) and run its examples.

    The build fails on any deprecation or end-of-life notice its tools print, so that a move
    forced on the site is seen when it is announced, not when the tool stops working.
    """
    session.install("-e", ".[docs,tests]")
    output = session.run("zensical", "build", "--strict", "--clean", silent=True)
    print(output)
    notices = [line for line in (output or "").splitlines() if _is_notice(line)]
    if notices:
        session.error("the docs build printed a deprecation notice: " + " | ".join(n.strip() for n in notices))
    session.run("pytest", "-m", "docs", "tests/test_docs_examples.py")


def _is_notice(line: str) -> bool:
    lowered = line.lower()
    return "deprecat" in lowered or "end of life" in lowered or "end-of-life" in lowered


# Files the sdist must hold (checked by `build`), relative to the project root.
SDIST_REQUIRED = [
    "LICENSE",
    "README.md",
    "MANIFEST.in",
    "docs/changelog.md",
    "mkdocs.yml",
    "noxfile.py",
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "spawnproxy/py.typed",
]
# Every file under these directories of the tree must be in the sdist (a packager runs the tests
# and builds the docs from it); nothing under the forbidden ones (benchmarks, build products).
SDIST_TREES = ["spawnproxy", "docs", "tests", "examples"]
SDIST_FORBIDDEN = ["benchmarks/", ".nox/", "site/"]


# Build products, caches and environments in a working tree: left out of the copy that is built.
_NOT_SOURCE = ["*.egg-info", "build", "dist", "site", ".nox", ".git", ".cache", "__pycache__", "*.py[cod]", ".*_cache"]


def _tree_files(top: str) -> set[str]:
    """The files under `top` that a distribution carries: no bytecode, no caches."""
    found = set()
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        found.update(os.path.join(root, f) for f in files if not f.endswith((".pyc", ".pyo")))
    return found


def _check_wheel(path: str) -> list[str]:
    """What is wrong with the wheel at `path`: each problem one line, none if it is right."""
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        dist_info = next((n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")), "")
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode() if dist_info else ""
    problems = []
    # The package exactly as the tree has it: every module, the child package shipped to children
    # as source, and the py.typed marker.
    for missing in sorted(_tree_files("spawnproxy") - names):
        problems.append(f"wheel lacks {missing}")
    for extra in sorted(n for n in names if n.split("/")[0] not in ("spawnproxy", dist_info)):
        problems.append(f"wheel holds {extra}, which is not the package (tests, benchmarks, docs?)")
    if f"{dist_info}/licenses/LICENSE" not in names:
        problems.append("wheel lacks its LICENSE")
    if "spawnproxy = spawnproxy._cli:main" not in entry_points:
        problems.append("wheel lacks the `spawnproxy` console script")
    return problems


def _check_sdist(path: str) -> list[str]:
    """What is wrong with the sdist at `path`: each problem one line, none if it is right."""
    with tarfile.open(path) as sdist:
        members = sdist.getnames()
    prefix = members[0].split("/")[0] + "/"
    names = {m[len(prefix) :] for m in members if m.startswith(prefix)}
    wanted = set(SDIST_REQUIRED).union(*(_tree_files(top) for top in SDIST_TREES))
    problems = [f"sdist lacks {missing}" for missing in sorted(wanted - names)]
    problems += [f"sdist holds {n}" for n in sorted(names) if n.startswith(tuple(SDIST_FORBIDDEN))]
    problems += [f"sdist holds {n}" for n in sorted(names) if "__pycache__" in n or n.endswith(".pyc")]
    return problems


# Run in a fresh virtual environment, from a directory outside the tree: proves the wheel's copy is
# the one imported, then runs the README's first command's example as a user would.
_QUICKSTART = """\
import os, runpy, sys
import spawnproxy
print("spawnproxy", spawnproxy.__version__, "from", spawnproxy.__file__)
if not spawnproxy.__file__.startswith(sys.prefix + os.sep):
    sys.exit("imported spawnproxy from outside the virtual environment: " + spawnproxy.__file__)
runpy.run_path("quickstart.py", run_name="__main__")
"""


@nox.session(python=_interpreter("3.11"))
def build(session: nox.Session) -> None:
    """Build the sdist and the wheel, check them, and run the quickstart from the wheel on each parent.

    Checks: `twine check --strict`; the wheel holds the whole package (the child package and
    py.typed with it), the console script and the license, nothing else; the sdist holds what a
    packager needs (license, changelog, docs, tests, examples, the build and nox files), not the
    benchmarks. Then, for each parent Python 3.10+ found, the wheel goes into a fresh virtual
    environment and examples/quickstart.py runs there, from outside the tree.
    """
    session.install("build", "twine")
    tmp = os.path.abspath(session.create_tmp())
    dist = os.path.join(tmp, "dist")
    shutil.rmtree(dist, ignore_errors=True)
    # From a clean copy: setuptools adds to the sdist whatever a stale spawnproxy.egg-info/SOURCES.txt
    # lists, so a file MANIFEST.in no longer names would still ship from a tree once built.
    source = os.path.join(tmp, "source")
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(".", source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    session.run("python", "-m", "build", "--outdir", dist, source, silent=True)
    wheels = glob.glob(os.path.join(dist, "*.whl"))
    sdists = glob.glob(os.path.join(dist, "*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        session.error(f"expected one wheel and one sdist in {dist}, found {os.listdir(dist)}")
    session.run("twine", "check", "--strict", wheels[0], sdists[0])
    problems = _check_wheel(wheels[0]) + _check_sdist(sdists[0])
    if problems:
        session.error("the distributions are wrong:\n  " + "\n  ".join(problems))
    session.log(f"contents checked: {os.path.basename(wheels[0])}, {os.path.basename(sdists[0])}")

    for version in _installed_parent_pythons():
        with tempfile.TemporaryDirectory(prefix=f"spawnproxy-wheel-{version}-") as outside:
            venv = os.path.join(outside, "venv")
            shutil.copy("examples/quickstart.py", outside)  # nothing else of the tree is there
            subprocess.run([_interpreter(version), "-m", "venv", venv], check=True)
            python = os.path.join(venv, "bin", "python")
            session.run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheels[0], external=True)
            with session.chdir(outside):
                session.run(python, "-c", _QUICKSTART, external=True, env={"PYTHONPATH": ""})
                session.run(os.path.join(venv, "bin", "spawnproxy"), "--help", external=True, silent=True)


@nox.session(python=_interpreter("3.11"))
def bench(session: nox.Session) -> None:
    """Benchmark spawnproxy side by side with its peers, start-up warm and cold, and through srun; writes benchmarks/results/."""
    session.install("-e", ".", "-r", "benchmarks/requirements.txt")
    session.run("python", "benchmarks/run.py", *session.posargs)
    # Start-up, warm and cold, beside python -c pass and the fork-based workers, with its plot.
    reps = ["--reps", "10"] if "--quick" in session.posargs else []
    session.run(
        "python", "benchmarks/startup.py", *reps, "--out", "benchmarks/results", "--plot", "docs/assets/warm-start.png"
    )
    # The srun rows: children as Slurm job steps on a one-node cluster the script starts (as root,
    # with slurm-wlm and munge); where none can start it says why and exits 2, which is no failure.
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run(
        "python", "benchmarks/slurm_cost.py", *quick, "--json", "benchmarks/results/slurm.json", success_codes=[0, 2]
    )
