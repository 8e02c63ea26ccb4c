"""The parent's objects and errors, as the child sees them.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax.  Uses `codec` (NeedsRefs) and, through the child it is
given, `serve.Child.request` and `Child.call_parent`; holds no state of its own.

- `ParentRef` / `CallableParentRef`: an object of the parent's passed with
  `spawnproxy.by_ref`; using it runs code there.
- `rebuild_parent_exception`: an exception the parent raised, as a local one
  (`ParentError` when its type cannot be rebuilt here), with the parent's
  traceback as its cause (`ParentTraceback`; the parent names this class by
  its module, see `spawnproxy._serialize`).
- `ParentFinder`: imports pure-Python packages the child lacks (dill) from
  the parent's copy.
"""

import pickle

from .codec import NeedsRefs


class ParentFinder:
    """Import pure-Python packages the child lacks (dill) from the parent's copy.

    A meta path finder and loader by duck typing: importlib.abc costs the
    child's start-up 10 ms of imports.
    """

    def __init__(self, child, packages):
        self._child = child
        self._packages = packages

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in self._packages:
            return None
        found = self._child.request("source", fullname)
        if found is None:
            return None
        import importlib.util

        source, is_package = found
        spec = importlib.util.spec_from_loader(fullname, self, is_package=is_package)
        spec.loader_state = source
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        spec = module.__spec__
        module.__file__ = "<spawnproxy-parent:%s>" % spec.name
        exec(compile(spec.loader_state, module.__file__, "exec"), module.__dict__)


class ParentTraceback(Exception):
    """The traceback of an exception raised in the parent: the cause of its copy here."""

    def __init__(self, text):
        Exception.__init__(self, text)
        self.text = text

    def __str__(self):
        return "\n\nTraceback in the parent:\n" + self.text.rstrip()


class ParentError(Exception):
    """An exception raised in the parent whose type cannot be rebuilt in the child."""

    def __init__(self, parent_type, message):
        Exception.__init__(self, "%s: %s" % (parent_type, message))
        self.parent_type = parent_type
        self.parent_message = message


def rebuild_parent_exception(encoded):
    """Turn an exception the parent encoded (see spawnproxy._serialize) into a local one."""
    module, qualname, message, data, text = encoded
    exc = None
    if data is not None:
        try:
            exc = pickle.loads(data)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = ParentError(qualname if module == "builtins" else module + "." + qualname, message)
    exc.__cause__ = ParentTraceback(text)
    exc.__suppress_context__ = True
    return exc


class ParentRef(object):
    """An object of the parent's, passed with spawnproxy.by_ref: using it runs code there.

    Attribute reads and operators are a round trip each (methods the parent
    listed are reached by path, so `obj.method(x)` is one).  Identity is
    local: references to the same parent object compare equal and hash alike.
    """

    _sp_parent_ = True
    __slots__ = ("__weakref__", "_sp_child", "_sp_names", "_sp_owner", "_sp_target", "_sp_truthy")

    def __init__(self, child, target, names, owner, truthy):
        setter = object.__setattr__
        setter(self, "_sp_child", child)
        setter(self, "_sp_target", target)
        setter(self, "_sp_names", names)
        setter(self, "_sp_owner", owner)  # None: this reference holds a count in the parent
        setter(self, "_sp_truthy", truthy)

    def __del__(self):
        try:
            if self._sp_owner is None:
                # Never sends: the release rides along the child's next message, or goes
                # with the releaser thread's (see outbox.start_releaser) if none comes soon.
                self._sp_child.releases.append(self._sp_target)
        except AttributeError:
            pass

    def __getattr__(self, name):
        if name.startswith("_sp_"):
            raise AttributeError(name)
        target = self._sp_target
        if name in self._sp_names:
            path = (target, name) if type(target) is int else target + (name,)
            return CallableParentRef(self._sp_child, path, (), self._sp_owner or self, None)
        return self._sp_child.request("getattr", target, name)

    def __setattr__(self, name, value):
        self._sp_child.request("setattr", self._sp_target, name, value)

    def __delattr__(self, name):
        self._sp_child.request("delattr", self._sp_target, name)

    def __dir__(self):
        return self._sp_child.request("dir", self._sp_target)

    def __eq__(self, other):
        return getattr(type(other), "_sp_parent_", False) and other._sp_target == self._sp_target

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(("spawnproxy-parent", self._sp_target))

    def __bool__(self):
        if self._sp_truthy:
            return True
        return self._sp_op("bool")

    def __reduce_ex__(self, protocol):
        raise NeedsRefs("an object of the parent's only travels back to the parent")

    def _sp_op(self, name, *args):
        return self._sp_child.request("op", self._sp_target, name, args)


def _forward_to_parent(name):
    def forward(self, *args):
        return self._sp_op(name, *args)

    forward.__name__ = "__%s__" % name
    return forward


for _name in (
    "str",
    "repr",
    "format",
    "len",
    "contains",
    "getitem",
    "setitem",
    "delitem",
    "iter",
    "next",
    "reversed",
    "lt",
    "le",
    "gt",
    "ge",
    "enter",
    "exit",
    "int",
    "float",
    "index",
    "neg",
    "abs",
):
    setattr(ParentRef, "__%s__" % _name, _forward_to_parent(_name))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "and", "or", "xor"):
    setattr(ParentRef, "__%s__" % _name, _forward_to_parent(_name))
    setattr(ParentRef, "__r%s__" % _name, _forward_to_parent("r" + _name))


class CallableParentRef(ParentRef):
    """A callable object of the parent's (a function, a bound method, ...)."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        return self._sp_child.call_parent(self._sp_target, args, kwargs)
