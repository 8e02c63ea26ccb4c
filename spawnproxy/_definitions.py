"""What a child runs: a script, a module or an instance, checked before anything starts.

Values layer: uses `_options` and the standard library.
"""

from __future__ import annotations

import hashlib
import linecache
import os
from typing import Any

from ._options import check_child_path

__all__ = ["InstanceDefinition", "ModuleDefinition", "ScriptDefinition"]


class ScriptDefinition:
    """A code string to run in a fresh module of its own in the child.

    `filename` is what tracebacks and syntax errors call the script (and its
    `__file__`): the path of the file it was read from, say; by default a
    name made from its text.

    Example:
        >>> import spawnproxy
        >>> with spawnproxy.DaemonProxy(spawnproxy.ScriptDefinition("x = 40 + 2")) as daemon:
        ...     print(daemon.proxy.x + 0)
        42
    """

    def __init__(self, script: str, *, filename: str | None = None) -> None:
        if not isinstance(script, str):
            raise TypeError(f"script must be a str of Python code, not {type(script).__name__}")
        if filename is not None and not isinstance(filename, str):
            raise TypeError(f"filename must be a str, not {type(filename).__name__}")
        self.script = script
        if filename is None:
            digest = hashlib.sha1(script.encode("utf-8", "surrogatepass")).hexdigest()[:10]
            filename = f"<spawnproxy-script-{digest}>"
        self.filename = filename
        # The parent knows the source too: remote tracebacks can then show its lines.
        linecache.cache[self.filename] = (len(script), None, script.splitlines(True), self.filename)

    def __repr__(self) -> str:
        first = self.script.strip().splitlines()[0] if self.script.strip() else ""
        return f"ScriptDefinition({first[:40]!r}{'...' if len(first) > 40 else ''})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScriptDefinition) and other.script == self.script

    def __hash__(self) -> int:
        return hash(self.script)

    def wire(self) -> tuple[Any, ...]:
        return ("script", self.script, self.filename)

    def label(self) -> str:
        return "script"


class ModuleDefinition:
    """A module to import in the child, by name or from a `.py` file.

    `module_path` is a path where the child runs (relative: from its working
    directory); only its form is checked here, and a file the child cannot
    load is a `DaemonStartError` naming it.

    Example:
        >>> import spawnproxy
        >>> with spawnproxy.DaemonProxy(spawnproxy.ModuleDefinition("json")) as daemon:
        ...     print(daemon.proxy.dumps([1, 2]))
        [1, 2]
    """

    def __init__(self, module_name: str, module_path: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(module_name, str) or not module_name:
            raise TypeError(f"module_name must be a non-empty str, not {module_name!r}")
        if module_path is not None:
            # Only the form here: the path is the child's (it may run on another machine),
            # and a relative one is found from the child's working directory.
            module_path = check_child_path(module_path, "module_path")
            if not module_path.endswith(".py"):
                raise ValueError(f"module_path {module_path!r} is not a .py file")
        self.module_name = module_name
        self.module_path = module_path

    def __repr__(self) -> str:
        if self.module_path is None:
            return f"ModuleDefinition({self.module_name!r})"
        return f"ModuleDefinition({self.module_name!r}, {self.module_path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModuleDefinition) and (other.module_name, other.module_path) == (
            self.module_name,
            self.module_path,
        )

    def __hash__(self) -> int:
        return hash((self.module_name, self.module_path))

    def wire(self) -> tuple[Any, ...]:
        return ("module", self.module_name, self.module_path)

    def label(self) -> str:
        if self.module_path is not None:
            return f"module {self.module_name} from {self.module_path!r}"
        return f"module {self.module_name}"


class InstanceDefinition:
    """A class to instantiate in the child, with the arguments to pass it.

    `module_name` may be `"builtins"`, or `None` for builtins.  The arguments
    are serialized like those of any call.

    Example:
        >>> import spawnproxy
        >>> strio = spawnproxy.run_object(spawnproxy.InstanceDefinition("io", "StringIO", "hello, world!"))
        >>> strio.getvalue()
        'hello, world!'
        >>> strio.terminate_daemon()
    """

    def __init__(self, module_name: str | None, class_name: str, *args: Any, **kwargs: Any) -> None:
        if module_name is not None and (not isinstance(module_name, str) or not module_name):
            raise TypeError(f"module_name must be a non-empty str or None, not {module_name!r}")
        if not isinstance(class_name, str) or not class_name:
            raise TypeError(f"class_name must be a non-empty str, not {class_name!r}")
        self.module_name = module_name
        self.class_name = class_name
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        parts = [repr(self.module_name), repr(self.class_name)]
        parts += [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"InstanceDefinition({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstanceDefinition) and (
            other.module_name,
            other.class_name,
            other.args,
            other.kwargs,
        ) == (self.module_name, self.class_name, self.args, self.kwargs)

    __hash__ = None  # type: ignore[assignment]  # arguments may be unhashable

    def wire(self) -> tuple[Any, ...]:
        return ("instance", self.module_name, self.class_name, self.args, self.kwargs)

    def label(self) -> str:
        return f"{self.module_name or 'builtins'}.{self.class_name} instance"


class ObjectDefinition:
    """An instance made in the parent and sent over (what run_object does with an object)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def wire(self) -> tuple[Any, ...]:
        return ("object", self.obj)

    def label(self) -> str:
        return f"{type(self.obj).__qualname__} instance"


Definition = ScriptDefinition | ModuleDefinition | InstanceDefinition | ObjectDefinition


def as_definition(definition_or_object: Any) -> Definition:
    if isinstance(definition_or_object, (ScriptDefinition, ModuleDefinition, InstanceDefinition)):
        return definition_or_object
    if isinstance(definition_or_object, type):
        raise TypeError(
            f"got the class {definition_or_object.__qualname__}, not an instance: pass an instance, "
            "or an InstanceDefinition to build one in the child"
        )
    return ObjectDefinition(definition_or_object)
