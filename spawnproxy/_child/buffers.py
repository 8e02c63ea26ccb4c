"""Large buffers out of band: the layout of a ``B`` frame and the stand-ins that put buffers there.

Shipped to the child as source (standard library only, CPython 3.8 syntax);
uses `protocol` only, and both ends use it.  A pickle (protocol 5) of a message holding large bytes, bytearrays or
memoryviews keeps them out of its stream (`out_of_band`, `buffer_taker`); the
frame then carries the pickle and each buffer 64-byte aligned in a memfd, and
the receiver passes views of the mapping as the pickle's buffers
(`split_buffers`): a NumPy array arrives without a copy.
"""

import collections.abc
import pickle
import struct

from .protocol import BIG_FRAME

SIZE = struct.Struct("!Q")
_COUNT = struct.Struct("!cI")
_ALIGN = 64


def buffer_parts(tag, payload, buffers):
    """The memfd layout of a TAG_BUFFERS frame (after its tag): see split_buffers."""
    raws = [buffer.raw() for buffer in buffers]
    sizes = [len(payload)] + [raw.nbytes for raw in raws]
    head = _COUNT.pack(tag, len(raws)) + b"".join(SIZE.pack(size) for size in sizes)
    parts = [head]
    offset = 1 + len(head)  # the frame's own tag comes first
    for part in [memoryview(payload).cast("B")] + raws:
        pad = -offset % _ALIGN
        if pad:
            parts.append(bytes(pad))
        parts.append(part)
        offset += pad + part.nbytes
    return parts


def split_buffers(payload: "memoryview") -> "tuple[bytes, memoryview, list[memoryview]]":
    """Return (tag, pickle, buffers) of a TAG_BUFFERS frame: views of the mapping, no copy."""
    tag, count = _COUNT.unpack_from(payload)
    sizes = [SIZE.unpack_from(payload, _COUNT.size + 8 * i)[0] for i in range(count + 1)]
    views = []
    offset = 1 + _COUNT.size + 8 * (count + 1)
    for size in sizes:
        offset += -offset % _ALIGN
        views.append(payload[offset - 1 : offset - 1 + size])
        offset += size
    return tag, views[0], views[1:]


class OutOfBand:
    """Stands for a bytes, bytearray or memoryview in a pickle, so that its bytes may go out of band.

    Only its reduction is pickled — a standard type and a pickle.PickleBuffer —
    so the receiver needs nothing but the standard library to rebuild it.
    """

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __reduce_ex__(self, protocol):
        value = self.value
        if type(value) is memoryview:
            import operator

            # Whether the buffer came in band (as bytes or bytearray) or out of band (a
            # view of the mapping), memoryview() of it then cast() gives back its shape.
            return operator.methodcaller("cast", value.format, value.shape), (ViewOf(value),)
        return type(value), (pickle.PickleBuffer(value),)


class ViewOf(OutOfBand):
    __slots__ = ()

    def __reduce_ex__(self, protocol):
        return memoryview, (pickle.PickleBuffer(self.value),)


BUFFER_TYPES = (bytes, bytearray, memoryview)


def out_of_band(value: object) -> object:
    """`value`, or a stand-in for it when it is a large bytes or bytearray, or a memoryview.

    A memoryview is swapped whatever its size: pickle refuses it otherwise.
    """
    kind = type(value)
    if kind is memoryview:
        if value.c_contiguous and value.ndim:
            return OutOfBand(value)
    elif kind in BUFFER_TYPES and len(value) >= BIG_FRAME:
        return OutOfBand(value)
    return value


def buffer_taker(buffers: "list[pickle.PickleBuffer]") -> "collections.abc.Callable[[pickle.PickleBuffer], bool]":
    """A pickle buffer_callback: large buffers go to `buffers` (out of band), small ones in band."""

    def take(buffer: "pickle.PickleBuffer") -> bool:
        if buffer.raw().nbytes < BIG_FRAME:
            return True
        buffers.append(buffer)
        return False

    return take
