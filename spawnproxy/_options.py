"""The options every way of starting a child accepts, checked before anything starts.

Foundation layer: the standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

UNSET: Any = object()


class _Timeouts(threading.local):
    timeout: Any = UNSET  # a default: no AttributeError to pay


# The timeout call_timeout() sets for this thread, or UNSET.
timeouts = _Timeouts()


@dataclass(frozen=True)
class Options:
    """Validated `**options` of run_script / run_module / run_object / DaemonProxy."""

    call_timeout: float | None = None
    start_timeout: float | None = 60.0
    env: Mapping[str, str] | None = None
    cwd: str | os.PathLike[str] | None = None
    logs_maxlen: int = 1000
    ssh_options: Sequence[str] | None = None
    # A command prefix, or a callable of the worker's index returning one: after
    # from_kwargs, always the checked prefix (a list of str) or None.
    launcher: Sequence[str] | Callable[[int], Sequence[str]] | None = None
    # Fork the child from a zygote of its interpreter (see _zygote); None: the caller's default.
    warm: bool | None = None

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> Options:
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            known = ", ".join(sorted(cls.__dataclass_fields__))
            raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))}; the options are: {known}")
        made = cls(**options)
        for name in ("call_timeout", "start_timeout"):
            check_timeout(getattr(made, name), name)
        if made.env is not None:
            check_env(made.env)
        if made.cwd is not None:
            # Only the form: whether the directory exists is the child's question (it may
            # run on another machine), answered before it loads anything (DaemonProxy).
            check_child_path(made.cwd, "cwd")
        if made.ssh_options is not None and (
            isinstance(made.ssh_options, str) or not all(isinstance(o, str) for o in made.ssh_options)
        ):
            raise TypeError("ssh_options must be a list of str (arguments of the ssh command)")
        if not isinstance(made.logs_maxlen, int) or made.logs_maxlen < 1:
            raise ValueError(f"logs_maxlen must be a positive int, not {made.logs_maxlen!r}")
        if made.warm is not None and not isinstance(made.warm, bool):
            raise TypeError(f"warm must be True or False, not {made.warm!r}")
        if made.launcher is not None:
            made = dataclasses.replace(made, launcher=check_launcher(made.launcher))
        return made


def check_launcher(launcher: object, index: int = 0) -> list[str]:
    """The command prefix a `launcher` option gives worker `index`: a non-empty list of str.

    A callable is called with `index` (0 outside a Pool).  Anything else is a
    one-line TypeError or ValueError naming `launcher`.

    Example:
        >>> check_launcher(lambda index: ["nice", "-n", str(index)], 3)
        ['nice', '-n', '3']
    """
    what = "launcher"
    if callable(launcher):
        what, launcher = f"launcher({index})", launcher(index)
        if isinstance(launcher, str) or not isinstance(launcher, Sequence):
            shown = (
                f"the str {launcher!r}" if isinstance(launcher, str) else f"{type(launcher).__name__} {launcher!r:.80}"
            )
            raise TypeError(f"{what} returned {shown}, not a list of str (a command prefix)")
    elif isinstance(launcher, str):
        raise TypeError(
            f"launcher must be a list of str (a command prefix, such as ['nice', '-n', '5']), not the str {launcher!r}: "
            "give each word as an item"
        )
    elif not isinstance(launcher, Sequence):
        raise TypeError(
            "launcher must be a list of str (a command prefix, such as ['nice', '-n', '5']) or a callable of the "
            f"worker's index returning one, not {type(launcher).__name__}"
        )
    if not launcher:
        raise ValueError(f"{what} must not be empty: it is the command the child's interpreter runs under")
    for i, word in enumerate(launcher):
        if not isinstance(word, str):
            raise TypeError(f"{what}[{i}] must be a str, not {type(word).__name__} {word!r:.80}")
        if "\0" in word:
            raise ValueError(f"{what}[{i}] holds a NUL character, which no command argument can hold")
    if not launcher[0]:
        raise ValueError(f"{what}[0] is empty: it must name the launcher's program")
    return list(launcher)


def check_env(env: object) -> None:
    """A child's environment: str names that a process can hold (no '=', no NUL), str values without NUL."""
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise TypeError("env must be a mapping of str to str")
    for key, value in env.items():
        # Not stricter: a local environment may hold names a shell cannot set (bash exports
        # functions as BASH_FUNC_name%%), and env=dict(os.environ, ...) must keep working.
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"env key {key!r} is not an environment variable name (empty, or holds '=' or NUL)")
        if "\0" in value:
            raise ValueError(f"env value of {key!r} holds a NUL character, which no environment can hold")


def check_child_path(path: object, name: str) -> str:
    """The form of a path the child will use (a str or os.PathLike of str, not empty, no NUL); returns it as str."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a path of str, not {type(text).__name__}")
    if not text:
        raise ValueError(f"{name} must not be empty")
    if "\0" in text:
        raise ValueError(f"{name} {text!r} holds a NUL character")
    return text


def check_timeout(value: object, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, not {value!r}")


def check_logger(logger: object) -> logging.Logger | None:
    if logger is not None and not isinstance(logger, (logging.Logger, logging.LoggerAdapter)):
        raise TypeError(f"logger must be a logging.Logger, not {type(logger).__name__}")
    return logger  # type: ignore[return-value]


@contextlib.contextmanager
def call_timeout(seconds: float | None) -> Iterator[None]:
    """Set the timeout of the remote calls this thread makes inside the block.

    It overrides the child's own `call_timeout` option; `None` means no limit.
    A call that runs past it raises `CallTimeoutError`; the proxy stays usable.

    Example:
        >>> import spawnproxy
        >>> mod = spawnproxy.run_script("import time")
        >>> with spawnproxy.call_timeout(0.1):
        ...     try:
        ...         mod.time.sleep(2)
        ...     except spawnproxy.CallTimeoutError:
        ...         print("too slow")
        too slow
        >>> mod.terminate_daemon()
    """
    check_timeout(seconds, "call_timeout")
    previous = timeouts.timeout
    timeouts.timeout = seconds
    try:
        yield
    finally:
        timeouts.timeout = previous


def current_timeout(default: float | None) -> float | None:
    """The timeout that applies to a call made now by this thread."""
    value = timeouts.timeout
    return default if value is UNSET else value
