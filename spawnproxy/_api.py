"""The three ways to start a child: run_script, run_module, run_object.

Interface layer: uses `_daemon`, `_definitions`, `_proxy` and `_serialize` (see docs/architecture.md).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

from ._daemon import DaemonProxy
from ._definitions import ModuleDefinition, ScriptDefinition
from ._proxy import ObjectProxy
from ._serialize import ByRef

__all__ = ["by_ref", "run_module", "run_object", "run_script"]


def run_script(
    script: str,
    python_exe: str | os.PathLike[str] | None = None,
    logger: logging.Logger | None = None,
    **options: Any,
) -> ObjectProxy:
    """Run a code string in a fresh module in a new child; return the module's proxy.

    The module's first-level attributes are proxies; results of calls come back
    as plain values.  See `DaemonProxy` for `python_exe`, `logger` and the options.

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script('''
        ... def say_hello(who):
        ...     return "hello %s" % who
        ... ''')
        >>> mod.say_hello("earthling")
        'hello earthling'
        >>> mod.terminate_daemon()
    """
    return DaemonProxy(ScriptDefinition(script), python_exe, logger, **options).proxy


def run_module(
    module_name: str,
    module_path: str | os.PathLike[str] | None = None,
    python_exe: str | os.PathLike[str] | None = None,
    logger: logging.Logger | None = None,
    **options: Any,
) -> ObjectProxy:
    """Import a module in a new child (by name, or from `module_path`); return its proxy.

    The module is imported with the child's own `sys.path`.

    Example:
        >>> import spawnproxy
        >>> remote_json = spawnproxy.run_module("json")
        >>> remote_json.dumps({"a": 1})
        '{"a": 1}'
        >>> remote_json.terminate_daemon()
    """
    return DaemonProxy(ModuleDefinition(module_name, module_path), python_exe, logger, **options).proxy


def run_object(
    obj_or_definition: Any,
    python_exe: str | os.PathLike[str] | None = None,
    logger: logging.Logger | None = None,
    **options: Any,
) -> ObjectProxy:
    """Send a picklable instance to a new child, or build an `InstanceDefinition` there.

    Returns the proxy of the object living in the child.

    Example:
        >>> import spawnproxy
        >>> remote_list = spawnproxy.run_object([1, 2, 3])
        >>> remote_list.append(4)
        >>> len(remote_list)
        4
        >>> remote_list.terminate_daemon()
    """
    if isinstance(obj_or_definition, (ScriptDefinition, ModuleDefinition)):
        raise TypeError(
            f"run_object takes an instance or an InstanceDefinition, not {obj_or_definition!r}; "
            "use run_script or run_module, or DaemonProxy"
        )
    return DaemonProxy(obj_or_definition, python_exe, logger, **options).proxy


def by_ref(obj: Any, *, weak: bool = False) -> ByRef:
    """Pass a local object to a child by reference: the child gets a stand-in that calls back.

    Calling the stand-in in the child runs `obj` here, in the parent, with the
    parent's state; its attributes and operators are forwarded here too. Use it
    for callbacks (a function, a bound method, a lambda) and for objects that
    must stay in the parent. Without it, a function or lambda is sent by value.

    The parent keeps `obj` alive while the child holds the stand-in. With
    `weak=True` it keeps only a weak reference: once `obj` is gone, using the
    stand-in in the child raises `ReferenceError` there.

    Exceptions cross both ways with their type (when the other side can
    rebuild it) and the traceback of each side; a callback may call the child
    again, to any depth. See the guide "Callbacks".

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script('''
        ... def each(items, callback):
        ...     for item in items:
        ...         callback(item * 10)
        ... ''')
        >>> seen = []
        >>> mod.each([1, 2, 3], spawnproxy.by_ref(seen.append))
        >>> seen
        [10, 20, 30]
        >>> mod.terminate_daemon()
    """
    if isinstance(obj, ByRef):
        return obj
    if weak:
        try:
            weakref.ref(obj)
        except TypeError:
            raise TypeError(
                f"by_ref(weak=True) needs an object that can be weakly referenced, not {type(obj).__name__}"
            ) from None
    return ByRef(obj, weak)
