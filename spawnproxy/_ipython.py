"""IPython and Jupyter: TAB completion, `??`, `help()` and rich display of remote objects.

Loaded only inside a running IPython (a terminal or a Jupyter kernel): `import spawnproxy`
there loads it (`load_into_running_shell`), and `%load_ext spawnproxy` / `%unload_ext spawnproxy`
switch it on and off.  Nothing here imports IPython before IPython itself is running, and
everything goes through extension points of the shell instance, so no module of IPython's
(nor pydoc) is changed:

- TAB: a matcher in `Completer.custom_matchers` (the matcher API of IPython >= 8.6).  Jedi
  reads a proxy statically and sees only the proxy class; IPython's own evaluation ('limited')
  reads no attribute of an object with a `__getattr__` of its own.  The matcher reads the
  remote attributes the dotted name goes through and the remote `dir()`, each bounded by
  `COMPLETION_TIMEOUT`; with `Completer.evaluation` 'minimal' or 'forbidden' it reads nothing.
- `?` and `??`: the shell's inspector, whose `info()` takes a proxy's file and source from the
  child (IPython follows `__wrapped__`, which for a proxy is spawnproxy's handle).
- `help()`: the builtin IPython puts in place while a cell runs (its `BuiltinTrap`).  pydoc
  documents `type(obj)` of an instance, the proxy class for a proxy: the child renders the text.
- rich display: printers of the display formatter for the proxy types (`for_type`).  One
  request asks which of the formatters' methods (`_repr_html_`, ...) the remote object has;
  IPython's formatters then run on a stand-in that has just those, each a remote call.
"""

from __future__ import annotations

import builtins
import logging
import re
import sys
from typing import Any

from ._errors import CallTimeoutError
from ._handle import label_of, path_of, request
from ._options import call_timeout
from ._proxy import ObjectProxy, handle_of, make_proxy
from ._values import is_proxy

# How long a child may take to answer each read a completion makes: TAB never waits longer.
COMPLETION_TIMEOUT = 0.5

# The attribute IPython asks for to tell an object that claims every name (a mock) from one
# that has a `_repr_*_` method: none may have it (IPython.utils.dir2.get_real_method).
CANARY = "_ipython_canary_method_should_not_exist_"

# A dotted name before the cursor, ending in the part of the name being completed.
_DOTTED = re.compile(r"(?<![\w.)\]}'\"])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\.(\w*)$")

_log = logging.getLogger("spawnproxy")


def load(shell: Any) -> None:
    """Install completion, `??`, `help()` and rich display of proxies into an IPython shell."""
    unload(shell)  # loading twice installs once
    shell.Completer.custom_matchers.insert(0, _matcher(shell.Completer))
    _install_inspector(shell.inspector)
    auto = shell.builtin_trap.auto_builtins
    previous = auto.get("help")
    original = builtins.help if previous is None else previous
    auto["help"] = _Help(previous, original.original if isinstance(original, _Help) else original)
    formatter = shell.display_formatter
    formatter.mimebundle_formatter.for_type(ObjectProxy, _Bundle(formatter))
    for mime, each in formatter.formatters.items():
        if mime != "text/plain" and each is not formatter.mimebundle_formatter:
            # A proxy's rich reprs come from its bundle: one request, not IPython's two
            # (the canary, then the method) for each mime type.
            each.for_type(ObjectProxy, _from_bundle)


def unload(shell: Any) -> None:
    """Take out what `load` installed (nothing happens for what is not there)."""
    matchers = shell.Completer.custom_matchers
    matchers[:] = [m for m in matchers if not getattr(m, "spawnproxy", False)]
    shell.inspector.__dict__.pop("info", None)
    helper = shell.builtin_trap.auto_builtins.get("help")
    if isinstance(helper, _Help):
        if helper.previous is None:
            del shell.builtin_trap.auto_builtins["help"]
        else:
            shell.builtin_trap.auto_builtins["help"] = helper.previous
    formatter = shell.display_formatter
    for each in [formatter.mimebundle_formatter, *formatter.formatters.values()]:
        printer = each.type_printers.get(ObjectProxy)
        if printer is _from_bundle or isinstance(printer, _Bundle):
            each.pop(ObjectProxy)


def load_into_running_shell() -> None:
    """`load` into the running IPython, if there is one (what `import spawnproxy` does there)."""
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    if shell is None:
        return
    try:
        load(shell)
        shell.extension_manager.loaded.add("spawnproxy")  # so that %unload_ext spawnproxy works
    except Exception as exc:  # an IPython this does not know: spawnproxy itself still works
        _log.warning("spawnproxy's IPython integration is not installed: %s: %s", type(exc).__name__, exc)


# -- TAB completion -------------------------------------------------------------------


def _matcher(completer: Any) -> Any:
    """The completion matcher for `completer`: remote attributes of dotted names that start at a proxy."""
    from IPython.core.completer import SimpleCompletion, context_matcher

    @context_matcher()  # type: ignore[misc,untyped-decorator]
    def spawnproxy_matcher(context: Any) -> dict[str, Any]:
        names = _remote_names(completer, context.text_until_cursor)
        if names is None:
            return {"completions": [], "suppress": False}
        fragment, words = names
        if words is None:
            # The child did not answer in time.  Jedi, next, would read the proxy too and wait
            # for that same child: only a completion stops it, so one that changes nothing.
            words = [fragment]
        # Jedi's static view of the proxy class is not what the remote object has: it is left out.
        return {
            "completions": [SimpleCompletion(word, type="attribute") for word in words],
            "matched_fragment": fragment,
            "suppress": True,
        }

    spawnproxy_matcher.spawnproxy = True  # type: ignore[attr-defined]  # how `unload` finds it
    return spawnproxy_matcher


def _remote_names(completer: Any, text: str) -> tuple[str, list[str] | None] | None:
    """(the part being completed, the attribute names that complete it or None if the child did
    not answer in time), or None if the dotted name before the cursor does not start at a proxy."""
    match = _DOTTED.search(text)
    if match is None or getattr(completer, "evaluation", None) in ("forbidden", "minimal"):
        return None
    path, fragment = match.group(1).split("."), match.group(2)
    spaces = (completer.namespace, completer.global_namespace)
    obj = next((space[path[0]] for space in spaces if path[0] in space), None)
    if not is_proxy(obj):
        return None  # IPython's own matchers know local objects
    try:
        with call_timeout(COMPLETION_TIMEOUT):
            for name in path[1:]:
                if not is_proxy(obj):
                    return fragment, []  # only the child's objects are read: a local one may run anything
                obj = getattr(obj, name)
            words = dir(obj)
    except CallTimeoutError:
        return fragment, None
    except Exception:  # a missing attribute, a dead child: nothing to offer
        return fragment, []
    if not fragment.startswith("_"):
        # IPython's Completer.omit__names: 2 hides every _name, 1 the __dunders__, until asked.
        if completer.omit__names == 2:
            words = [w for w in words if not w.startswith("_")]
        elif completer.omit__names == 1:
            words = [w for w in words if not (w.startswith("__") and w.endswith("__"))]
    return fragment, [w for w in words if w.startswith(fragment)]


# -- ? and ?? ---------------------------------------------------------------------------


def _install_inspector(inspector: Any) -> None:
    """Make `inspector.info` describe a proxy's file and source as the child has them."""
    original = inspector.info  # the class's: the instance's own was taken out by `unload`

    def info(obj: Any, oname: str = "", info: Any = None, detail_level: int = 0) -> Any:
        out = original(obj, oname, info=info, detail_level=detail_level)
        if not is_proxy(obj):
            return out
        handle = handle_of(obj)
        try:
            kind, file, source = request(handle, "source", (), f"the source of {label_of(handle)}")
        except Exception:  # a dead or busy child: say nothing rather than something local
            kind, file, source = None, None, None
        # What IPython found locally describes the proxy class, not the remote object.
        out.update(file=file, class_docstring=None, call_def=None, call_docstring=None)
        if kind is not None:
            out["type_name"] = kind.rpartition(".")[2]
            out["base_class"] = f"<class '{kind}'>"
        if detail_level:
            out["source"] = source.rstrip() if source else None
            docstring = out.get("docstring")
            if source and docstring and docstring.splitlines()[0] in source:
                out["docstring"] = None  # shown in the source, as IPython does for a local object
        return out

    inspector.info = info


# -- help() --------------------------------------------------------------------------------


class _Help:
    """`help`, in IPython's cells: a proxy's help is rendered by pydoc in the child."""

    def __init__(self, previous: Any, original: Any) -> None:
        self.previous = previous  # what the builtin trap put in place before, if anything
        self.original = original  # the `help` everything else is handed to

    def __repr__(self) -> str:
        return repr(self.original)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and is_proxy(args[0]):
            import pydoc

            handle = handle_of(args[0])
            pydoc.pager(request(handle, "help", ("Help on %s:",), f"help({label_of(handle)})"))
            return None
        return self.original(*args, **kwargs)


# -- rich display -------------------------------------------------------------------------


class _Bundle:
    """The display formatter's printer of a proxy's mime bundle."""

    def __init__(self, formatter: Any) -> None:
        self.formatter = formatter

    def __call__(self, proxy: Any) -> Any:
        formatter = self.formatter
        formatters = [f for f in formatter.formatters.values() if f.enabled and f.format_type != "text/plain"]
        if formatter.mimebundle_formatter.enabled:
            formatters.append(formatter.mimebundle_formatter)
        if not formatters:
            return None
        handle = handle_of(proxy)
        names = sorted({f.print_method for f in formatters})
        found = request(handle, "hooks", (CANARY, names), f"the display methods of {label_of(handle)}")
        if not found:
            return None
        # IPython's own formatters, on a stand-in that has exactly the remote object's methods
        # (text/plain included: from a remote `_repr_mimebundle_` if it gives one, as locally).
        return formatter.format(_Reprs(proxy, found))


def _from_bundle(proxy: Any) -> None:
    """A mime type's printer of a proxy: nothing more than what the bundle has."""
    return None


class _Reprs:
    """Stands for a remote object before IPython's formatters: its display methods, no others."""

    def __init__(self, proxy: Any, names: list[str]) -> None:
        handle = handle_of(proxy)
        self._proxy = proxy
        self._methods = {name: make_proxy(path_of(handle, name, True)) for name in names}

    def __repr__(self) -> str:
        return repr(self._proxy)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_methods"][name]
        except KeyError:
            raise AttributeError(name) from None
