"""The operators a request may name (op "op"), shared by both sides.

Shipped to the child as source: standard library only, CPython 3.8 syntax;
uses nothing else of the package.  The child runs them on its objects for the parent's proxies; the parent runs
them on its own objects passed by reference (`spawnproxy.by_ref`).
"""

import math
import operator

OPERATORS = {
    "str": str,
    "repr": repr,
    "format": format,
    "len": len,
    "hash": hash,
    "bool": bool,
    "contains": operator.contains,
    "getitem": operator.getitem,
    "setitem": operator.setitem,
    "delitem": operator.delitem,
    "iter": iter,
    "next": next,
    "reversed": reversed,
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": abs,
    "invert": operator.invert,
    "int": int,
    "float": float,
    "complex": complex,
    "index": operator.index,
    "bytes": bytes,
    "round": round,
    "trunc": math.trunc,
    "floor": math.floor,
    "ceil": math.ceil,
    "enter": lambda x: x.__enter__(),
    "exit": lambda x, *a: x.__exit__(*a),
    "divmod": divmod,
    "rdivmod": lambda x, y: divmod(y, x),
    "pow": pow,
    "rpow": lambda x, y: pow(y, x),
}
for _name in (
    "lt",
    "le",
    "eq",
    "ne",
    "gt",
    "ge",
    "add",
    "sub",
    "mul",
    "matmul",
    "truediv",
    "floordiv",
    "mod",
    "lshift",
    "rshift",
    "and",
    "or",
    "xor",
):
    _func = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    OPERATORS[_name] = _func
    if _name not in ("lt", "le", "eq", "ne", "gt", "ge"):
        # Reflected forms: the remote object is the right operand.
        OPERATORS["r" + _name] = (lambda f: lambda x, y: f(y, x))(_func)
        OPERATORS["i" + _name] = getattr(operator, "i" + _name)
OPERATORS["ipow"] = operator.ipow
