"""Run Python code in another interpreter and use its objects through proxies.

Example:
    >>> import spawnproxy
    >>> mod = spawnproxy.run_script("foo = 'hello world'")
    >>> mod.foo == "hello world"
    True
    >>> mod.terminate_daemon()
"""

import sys as _sys
from typing import Any as _Any

from ._aio import aio
from ._api import by_ref, run_module, run_object, run_script
from ._client import connect
from ._daemon import DaemonProxy, daemon_of
from ._definitions import InstanceDefinition, ModuleDefinition, ScriptDefinition
from ._errors import (
    AuthenticationError,
    CallTimeoutError,
    ConnectError,
    DaemonDiedError,
    DaemonStartError,
    DaemonTerminatedError,
    RemoteError,
    SerializationError,
    SpawnProxyError,
)
from ._options import call_timeout
from ._pool import Pool
from ._proxy import ObjectProxy
from ._server import Server, serve
from ._slurm import slurm
from ._values import is_proxy, obtain
from ._version import __version__

__all__ = [
    "AuthenticationError",
    "CallTimeoutError",
    "ConnectError",
    "DaemonDiedError",
    "DaemonProxy",
    "DaemonStartError",
    "DaemonTerminatedError",
    "InstanceDefinition",
    "ModuleDefinition",
    "ObjectProxy",
    "Pool",
    "RemoteError",
    "ScriptDefinition",
    "SerializationError",
    "Server",
    "SpawnProxyError",
    "__version__",
    "aio",
    "by_ref",
    "call_timeout",
    "connect",
    "daemon_of",
    "is_proxy",
    "obtain",
    "run_module",
    "run_object",
    "run_script",
    "serve",
    "slurm",
]


def load_ipython_extension(ipython: _Any) -> None:
    """`%load_ext spawnproxy`: completion, `??`, `help()` and rich display of proxies in IPython.

    `import spawnproxy` inside IPython does it already; see the guide "In IPython and Jupyter".
    """
    from ._ipython import load

    load(ipython)


def unload_ipython_extension(ipython: _Any) -> None:
    """`%unload_ext spawnproxy`: IPython's own completion, `??`, `help()` and display again."""
    from ._ipython import unload

    unload(ipython)


if "IPython" in _sys.modules:  # inside a running IPython (never imported here otherwise)
    from ._ipython import load_into_running_shell

    load_into_running_shell()
