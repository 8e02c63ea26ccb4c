"""The key a served daemon and its clients share: checking one, and reading it from a key file.

Whoever holds the key can run any code in the daemon, so it is treated as a
password: long enough not to be guessed, and read only from a file that is
this user's alone.  Uses the standard library and `_statefile` (the privacy check).
"""

from __future__ import annotations

import os
import shlex

from ._statefile import privacy_problem

# Shorter keys are refused: 16 bytes (128 bits) is the least a key that guards a shell should have.
MIN_AUTHKEY = 16


def check_authkey(authkey: object) -> bytes:
    if not isinstance(authkey, (bytes, bytearray)):
        raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
    if not authkey:
        raise ValueError("authkey must not be empty: there is no unauthenticated mode")
    if len(authkey) < MIN_AUTHKEY:
        raise ValueError(
            f"authkey must be at least {MIN_AUTHKEY} bytes, not {len(authkey)}: a short key can be guessed "
            "(serve() makes a random 32-byte one when given none)"
        )
    return bytes(authkey)


def read_authkey_file(path: str | os.PathLike[str]) -> bytes:
    """The key in a key file: its bytes, without surrounding whitespace.

    As OpenSSH does with a private key, a file that is not the user's own,
    or that group or others may read or write, is refused: the key is a
    password to this account.
    """
    name = os.fspath(path)
    # O_NONBLOCK: a FIFO planted there must not hang the reader (it is refused below).
    with os.fdopen(os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
        problem = privacy_problem(os.fstat(f.fileno()))
        if problem is not None:
            raise PermissionError(
                f"refusing the key file {name!r}: it {problem}; it must be yours alone "
                f"(chmod 600 {shlex.quote(name)}, and make a new key if others may have read it)"
            )
        data = f.read().strip()
    try:
        return check_authkey(data)
    except ValueError as exc:
        raise ValueError(f"the key in {name!r}: {exc}") from None
