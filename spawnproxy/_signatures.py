"""Signatures of remote callables: `inspect.signature(proxy)`, rebuilt from the child's description.

The child describes a signature as plain data: `(parameters, return
annotation)`, each parameter `(name, kind, default, annotation)`, a default
`("value", v)` when it can travel or `("text", repr)` when only the child
has it.  Standard library only.
"""

from __future__ import annotations

import inspect
from typing import Any


class _RemoteText:
    """Stands for a default value or an annotation that only the child has; shows its text."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text


def rebuild_signature(encoded: Any) -> inspect.Signature | None:
    """The signature the child described, or None (it has none)."""
    if encoded is None:
        return None
    params, ret = encoded
    parameters = []
    for name, kind, default, annotation in params:
        if default is None:
            value: Any = inspect.Parameter.empty
        else:
            how, given = default  # ("value", the value) or ("repr", its repr)
            value = given if how == "value" else _RemoteText(given)
        parameters.append(
            inspect.Parameter(
                name,
                inspect._ParameterKind(kind),
                default=value,
                annotation=inspect.Parameter.empty if annotation is None else _RemoteText(annotation),
            )
        )
    return inspect.Signature(parameters, return_annotation=inspect.Signature.empty if ret is None else _RemoteText(ret))
