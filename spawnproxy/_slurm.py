"""`slurm()`: the launcher that runs a child as one Slurm job step through `srun`.

Values layer: the standard library only.  It builds a command prefix for the `launcher=` option
(docs/guides/pools.md, "On a Slurm cluster"); nothing here talks to Slurm.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["slurm"]

# srun's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; or UNLIMITED.
_TIME = re.compile(r"(\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}|UNLIMITED|INFINITE)", re.IGNORECASE)
# srun's --mem: a number with an optional unit K, M, G or T (megabytes without one).
_MEM = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


def slurm(
    *,
    nodes: int | str | None = None,
    nodelist: str | Sequence[str] | None = None,
    partition: str | None = None,
    time: str | int | None = None,
    cpus_per_task: int | None = None,
    mem: str | int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The `launcher=` that runs each child as its own Slurm job step: one task, via `srun`.

    The list starts with `srun --unbuffered --quiet --nodes=1 --ntasks=1`: one node, one task, and the task's
    stdout passed on as it comes (srun line-buffers it otherwise, which stalls a binary protocol).
    Each keyword adds the srun option of the same meaning; `extra` is appended as given.  Inside
    an allocation (`salloc`, an `sbatch` script) the step runs there; outside one, srun asks for a
    job of its own.

    - `nodes`: `--nodes` (an int, or a range such as `"1-2"`; default 1): what a job srun asks
      for itself (outside an allocation) may span; the child is one task, run on one node,
    - `nodelist`: `--nodelist` (a name, a Slurm host list, or a sequence of names),
    - `partition`: `--partition`, `time`: `--time` (minutes as an int, or `"HH:MM:SS"` and the other
      srun forms), `cpus_per_task`: `--cpus-per-task`, `mem`: `--mem` (megabytes as an int, or
      `"4G"` and the like),
    - `extra`: further srun arguments, e.g. `["--exclusive", "--gres=gpu:1"]`.

    Example:
        >>> import spawnproxy
        >>> spawnproxy.slurm()
        ['srun', '--unbuffered', '--quiet', '--nodes=1', '--ntasks=1']
        >>> spawnproxy.slurm(partition="gpu", time=30, cpus_per_task=4, extra=["--gres=gpu:1"])[-4:]
        ['--partition=gpu', '--time=30', '--cpus-per-task=4', '--gres=gpu:1']
    """
    command = ["srun", "--unbuffered", "--quiet", f"--nodes={_nodes(nodes)}", "--ntasks=1"]
    if nodelist is not None:
        command.append(f"--nodelist={_nodelist(nodelist)}")
    if partition is not None:
        command.append(f"--partition={_word(partition, 'partition')}")
    if time is not None:
        command.append(f"--time={_time(time)}")
    if cpus_per_task is not None:
        command.append(f"--cpus-per-task={_positive(cpus_per_task, 'cpus_per_task')}")
    if mem is not None:
        command.append(f"--mem={_mem(mem)}")
    if isinstance(extra, str) or not all(isinstance(a, str) for a in extra):
        raise TypeError(f"slurm(): extra must be a sequence of str (srun arguments), not {extra!r}")
    if any("\0" in a for a in extra):
        raise ValueError("slurm(): an extra argument holds a NUL character")
    command.extend(extra)
    return command


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"slurm(): {name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"slurm(): {name} must be at least 1, not {value}")
    return value


def _nodes(value: object) -> str:
    if value is None:
        return "1"
    if isinstance(value, str):
        if not re.fullmatch(r"[1-9]\d*(-[1-9]\d*)?", value):
            raise ValueError(f"slurm(): nodes must be a count or a range such as '1-2', not {value!r}")
        return value
    return str(_positive(value, "nodes"))


def _word(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"slurm(): {name} must be a str, not {type(value).__name__}")
    if not value or any(c.isspace() or c in ",=\0" for c in value):
        raise ValueError(f"slurm(): {name} {value!r} is not a name (empty, or holds a space, ',' '=' or NUL)")
    return value


def _nodelist(value: object) -> str:
    if isinstance(value, str):
        if not value or any(c.isspace() or c == "\0" for c in value):
            raise ValueError(f"slurm(): nodelist {value!r} is not a host list (empty, or holds a space or NUL)")
        return value
    if isinstance(value, Sequence) and value:
        return ",".join(_word(name, "a nodelist entry") for name in value)
    raise TypeError(f"slurm(): nodelist must be a str or a non-empty sequence of str, not {value!r}")


def _time(value: object) -> str:
    return _amount(value, "time", "minutes", "1:30:00", _TIME, "a Slurm time (minutes, MM:SS, HH:MM:SS, D-HH:MM:SS)")


def _mem(value: object) -> str:
    return _amount(value, "mem", "megabytes", "4G", _MEM, "a Slurm size (a number with K, M, G or T)")


def _amount(value: object, name: str, unit: str, example: str, form: re.Pattern[str], what: str) -> str:
    """An srun quantity: a positive int of `unit`, or a str of the form srun reads."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(_positive(value, name))
    if not isinstance(value, str):
        raise TypeError(
            f"slurm(): {name} must be {unit} (int) or a str such as {example!r}, not {type(value).__name__}"
        )
    if not form.fullmatch(value):
        raise ValueError(f"slurm(): {name} {value!r} is not {what}")
    return value
