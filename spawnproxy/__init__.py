"""Run Python code in another interpreter and use its objects through proxies.

Example:
    >>> import spawnproxy
    >>> mod = spawnproxy.run_script("foo = 'hello world'")
    >>> mod.foo == "hello world"
    True
    >>> mod.terminate_daemon()
"""

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
