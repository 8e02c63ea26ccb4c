"""What the parent hands a new child: a tiny `-c` program and the child-side sources.

The child needs nothing installed: `python -c BOOTSTRAP <fd> <lifeline fd>`
(or `0 stdio` for a child reached through ssh) reads one frame holding the
sources of the child-side modules (`spawnproxy/_child/`), loads them as the
package `_spawnproxy_child` and runs its entry point (`lifetime.main`, or
`stdio.main_stdio`, or `zygote.main` when the bundle says `zygote`).  The modules in `ON_DEMAND` come along but are run only
when needed (`package.load(name)` runs `name` with the modules it needs).
The program is written so that even Python 2 can parse it and report a
clear error.

Nothing may be imported from the directory a child starts in: a `pickle.py`
there would run before the child does.  `python -c` puts that directory
(as `''`) first on `sys.path` before the code runs, and CPython 3.13 even
imports `linecache` through it before running the code, which no code of ours
can prevent.  So every process spawnproxy starts with `-c` gets
`PYTHONSAFEPATH` in its environment (3.11+ then adds no such entry), and the
code begins with `SAFE_PATH`, which drops the entry where the interpreter
ignores that variable (3.8-3.10) before importing anything, then removes the
variable again so that the child's own subprocesses do not inherit it.  The
parent's `sys.path`, passed on to children of its own interpreter, is kept as
it is: an entry there is the user's own choice.
"""

from __future__ import annotations

import functools
import importlib.resources
import marshal
from collections.abc import Mapping
from typing import Any

# Child-side modules, in the order they must be loaded (each imports only those before it).
CHILD_MODULES = (
    "protocol",
    "buffers",
    "fdpassing",
    "channel",
    "operators",
    "table",
    "loader",
    "heads",
    "codec",
    "parent",
    "outbox",
    "records",
    "ops",
    "serve",
    "lifetime",
    "transports",
    "stdio",
    "handshake",
    "addresses",
    "listener",
    "network",
    "forwarder",
    "zygote",
)
# Shipped, but compiled and run only when needed: an entry point, and the modules it needs
# in load order.  The network side runs in a child told to listen (`ops.op_listen`), the
# stdio entry in one reached through ssh, the forwarder in one whose code imports logging
# (`records.watch_logging`), the zygote's in a zygote (see `_zygote`); the other children
# skip that work.
ON_DEMAND = {
    "network": ("transports", "handshake", "addresses", "listener", "network"),
    "stdio": ("transports", "stdio"),
    "forwarder": ("forwarder",),
    "zygote": ("zygote",),
}
CHILD_PACKAGE = "_spawnproxy_child"
MIN_CHILD_VERSION = (3, 8)
TOO_OLD_EXIT = 78
# Set for every process started with -c, unless the environment sets it already; SAFE_PATH removes it.
SAFE_PATH_VARIABLE = "PYTHONSAFEPATH"
SAFE_PATH_MARK = "spawnproxy"

# The first lines of every -c program: `sys` is built in, and nothing else is imported
# before the working directory's entry is gone.  (3.8 syntax; no f-strings.)
SAFE_PATH = """\
import sys
if sys.path and sys.path[0] == "" and not getattr(sys.flags, "safe_path", 0) and not getattr(sys.flags, "isolated", 0):
    del sys.path[0]
import os
if os.environ.get(%(var)r) == %(mark)r:
    del os.environ[%(var)r]
""" % {"var": SAFE_PATH_VARIABLE, "mark": SAFE_PATH_MARK}

BOOTSTRAP = """\
import sys
if sys.version_info < %(min)r:
    sys.stderr.write("spawnproxy: the child needs CPython %(min_text)s or newer, but %%s is Python %%s\\n"
                     %% (sys.executable, sys.version.split()[0]))
    sys.exit(%(too_old)d)
%(safe_path)s\
import pickle, struct, types
fd = int(sys.argv[1])
def _read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data
bundle = pickle.loads(_read(struct.unpack("!i", _read(4))[0])[1:])
package = types.ModuleType(%(pkg)r)
package.__path__ = []
sys.modules[%(pkg)r] = package
package.sources = dict(bundle.pop("modules"))
on_demand = bundle.pop("on_demand")
def load(name):
    for part in on_demand.get(name, (name,)):
        if part in package.sources:
            load_one(part)
    return getattr(package, name)
def load_one(name):
    module = types.ModuleType(%(pkg)r + "." + name)
    module.__package__ = %(pkg)r
    module.__file__ = "<spawnproxy-child:%%s.py>" %% name
    sys.modules[module.__name__] = module
    setattr(package, name, module)
    source = package.sources.pop(name)
    if isinstance(source, bytes):
        import marshal
        code = marshal.loads(source)
    else:
        code = compile(source, module.__file__, "exec", dont_inherit=True)
    exec(code, module.__dict__)
package.load = load
for name in bundle.pop("start"):
    load(name)
if sys.argv[2] == "stdio":
    load("stdio").main_stdio()
elif bundle.get("zygote"):
    load("zygote").main(fd, int(sys.argv[2]), bundle)
else:
    package.lifetime.main(fd, int(sys.argv[2]), bundle)
""" % {
    "min": MIN_CHILD_VERSION,
    "min_text": "%d.%d" % MIN_CHILD_VERSION,
    "too_old": TOO_OLD_EXIT,
    "pkg": CHILD_PACKAGE,
    "safe_path": SAFE_PATH,
}


def safe_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a process started with `-c`: with the variable that keeps its directory off `sys.path`."""
    made = dict(env)
    if not made.get(SAFE_PATH_VARIABLE):
        made[SAFE_PATH_VARIABLE] = SAFE_PATH_MARK
    return made


@functools.lru_cache(maxsize=1)
def child_sources() -> tuple[tuple[str, str], ...]:
    """The sources of the child-side modules, read once from the package."""
    files = importlib.resources.files(__package__) / "_child"
    return tuple((name, (files / f"{name}.py").read_text(encoding="utf-8")) for name in CHILD_MODULES)


@functools.lru_cache(maxsize=1)
def child_code() -> tuple[tuple[str, bytes], ...]:
    """The child-side modules compiled once, for children of the parent's own interpreter."""
    return tuple(
        (name, marshal.dumps(compile(source, f"<spawnproxy-child:{name}.py>", "exec", dont_inherit=True)))
        for name, source in child_sources()
    )


def bundle(own_interpreter: bool, sys_path: list[str] | None) -> dict[str, Any]:
    """The first frame a child receives: compiled code when it runs the parent's own interpreter."""
    on_demand = {name for needed in ON_DEMAND.values() for name in needed}
    return {
        "modules": child_code() if own_interpreter else child_sources(),
        "start": tuple(name for name in CHILD_MODULES if name not in on_demand),
        "on_demand": ON_DEMAND,
        "sys_path": sys_path,
    }
