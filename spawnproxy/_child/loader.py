"""Build the child's root object from a definition sent as plain data.

Shipped to the child as source: standard library only, CPython 3.8 syntax;
uses nothing else of the package.

A definition arrives as a tuple whose first item names its kind:

    ("script", source, filename)
    ("module", module_name, module_path or None)
    ("instance", module_name or None, class_name, args, kwargs)
    ("object", obj)
"""

import builtins
import importlib
import os
import sys
import types

SCRIPT_MODULE = "__spawnproxy_script__"


def load(definition):
    """Return the root object the definition describes."""
    kind, *fields = definition
    if kind == "script":
        source, filename = fields
        return _load_script(source, filename)
    if kind == "module":
        module_name, module_path = fields
        return _load_module(module_name, module_path)
    if kind == "instance":
        return _load_instance(*fields)
    if kind == "object":
        (obj,) = fields
        return obj
    raise ValueError("unknown definition kind %r" % (kind,))


def _load_script(source, filename):
    import linecache

    module = types.ModuleType(SCRIPT_MODULE)
    module.__file__ = filename
    # Register the module so that pickle can name what the script defines and
    # tracebacks can show the script's lines.
    sys.modules[SCRIPT_MODULE] = module
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(source, filename, "exec", dont_inherit=True)
    exec(code, module.__dict__)
    return module


def _load_module(name, path):
    if path is None:
        return importlib.import_module(name)
    from importlib.util import module_from_spec, spec_from_file_location

    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else " (relative to its working directory %r)" % (os.getcwd(),)
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise FileNotFoundError("module_path %r %s in the child%s" % (path, what, where))
    spec = spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot load module %r from %r" % (name, path))
    module = module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_instance(module_name, class_name, args, kwargs):
    if module_name is None or module_name == "builtins":
        module = builtins
    else:
        module = importlib.import_module(module_name)
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise AttributeError("module %r has no attribute %r" % (module.__name__, class_name)) from None
    return cls(*args, **kwargs)
