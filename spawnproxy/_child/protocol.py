"""The wire: frames, message kinds and the named layouts of every message.

Both ends use this module (it is shipped to the child as source: standard
library only, CPython 3.8 syntax); it uses nothing else of the package and
does no I/O.  It is the one place that says what goes over a spawnproxy
connection; code reads a message through the indexes named here (or by
unpacking it), never through bare numbers.  docs/architecture.md shows this
text as the wire's reference.

**Frames.** Framing is the one `multiprocessing.connection.Connection` uses,
so either end could be a plain `Connection`: a 4-byte signed big-endian
length, then that many payload bytes; a length of -1 announces an 8-byte
unsigned length.  The first payload byte (the tag) says how the rest was
encoded:

| tag | the rest of the frame |
| --- | --- |
| `P` (`TAG_PICKLE`) | a pickle (protocol 5) that the standard library can load |
| `R` (`TAG_REFS`) | a pickle with persistent ids for objects the receiver holds (below) |
| `D` (`TAG_DILL`) | a pickle made by dill: the receiver needs dill to load it |
| `M` (`TAG_MEMFD`) | a frame of at least `BIG_FRAME` bytes passed out of band: an 8-byte size follows, and the frame itself (tag and payload) is in a memfd sent along (SCM_RIGHTS), which the receiver maps (see `channel`, `fdpassing`) |
| `B` (`TAG_BUFFERS`) | inside such a memfd only: a pickle whose large buffers travel out of band: the pickle's tag, the sizes, then the pickle and each buffer, 64-byte aligned (see `buffers`) |
| `L` (`TAG_LANE`) | parent to child: a lane opens or closes; `LANE` packs the lane number and 1 to open (its socket is sent along) or 0 to close |

**Messages.** Every message is a tuple whose first item is its kind.  The
protocol is symmetric: either side may send a REQUEST while it waits for a
REPLY, so the receive loop of each side also serves requests (callbacks,
streaming and the child asking its parent for module sources all ride on
this).

| kind | layout (index names) | meaning |
| --- | --- | --- |
| `REQUEST` | (`KIND`, `ID`, `OP`, *operands from `REQUEST_OPERANDS`) | run `op`; answer with a REPLY |
| `NESTED` | (`KIND`, `ID`, `OUTER`, `NESTED_OP`, *operands from `NESTED_OPERANDS`) | a request made while serving request `OUTER`: run it on the thread that waits for `OUTER` |
| `REPLY` | (`KIND`, `ID`, `HOW`, `PAYLOAD`) | the answer to request `ID` |
| `RELEASE` | (`KIND`, `IDS`) | one-way: the sender no longer needs these objects; from the parent, a negative id -r says the answer to request r has been read |
| `STOPPING` | (`KIND`,) | one-way, a served daemon to its clients: it stops on purpose |

A REPLY's `HOW` says what its `PAYLOAD` is:

| how | payload |
| --- | --- |
| `VALUE` | the value itself |
| `REF` | a reference to the child's object: (`REF_OID`, `REF_TYPE_KEY`, `REF_TYPE_INFO`), the type info None when the receiver was told it before |
| `PATH` | (callable,): the result is the target itself, to be reached by its path |
| `SAME` | the result is the very object the request targeted |
| `BASE` | the object the request's path starts from (a method returned self) |
| `ERROR` | an encoded exception: from the child (`EXC_MODULE`, `EXC_QUALNAME`, `EXC_MESSAGE`, `EXC_PICKLED`, `EXC_FRAMES`, `EXC_TRACEBACK`, `EXC_CAUSE`, `EXC_CONTEXT`); from the parent, the first four and the traceback text |

Type info, sent the first time a type is named: (`TYPE_MODULE`,
`TYPE_QUALNAME`, `TYPE_METHODS`, `TYPE_CALLABLE`).

**Request ids.** The parent's are positive, the child's negative.  The low
`LANE_BITS` bits of a parent's id name the lane its answer goes back on: each
thread of the parent that makes blocking calls has a lane of its own, a socket
that only the child writes to, so that the kernel wakes that very thread when
its answer comes (lane 0 is the channel itself).  The child sends the reply to
a request, the requests nested in it and the releases that go before them on
the request's lane.

**Objects by reference.** An object one side holds for the other travels
inside a `R` pickle as a persistent id:

| persistent id | stands for |
| --- | --- |
| ("ref", target) | the receiver's own object (a proxy sent back) |
| ("ref", oid, type key, type info) | the child's object, new to the parent: a proxy there |
| ("local", oid, callable, methods, truthy) | the parent's object (`by_ref`), new to the child |

**Start.** The first frame a child receives is the bootstrap bundle (see
`spawnproxy._bootstrap`); its first answer is the hello: a dict with the
child's pid, version and executable.
"""

import struct

# Message kinds: a message's item KIND.
REQUEST = 0
REPLY = 1
RELEASE = 2
NESTED = 3
STOPPING = 4

# The items of a message, by name.  Every message: KIND, and but for STOPPING, ID.
KIND = 0
ID = 1
OP = 2  # REQUEST: the operation; its operands follow (REQUEST_OPERANDS)
REQUEST_OPERANDS = 3
OUTER = 2  # NESTED: the id of the request it is nested in
NESTED_OP = 3
NESTED_OPERANDS = 4
HOW = 2  # REPLY: how the payload carries the result (VALUE ... ERROR)
PAYLOAD = 3
IDS = 1  # RELEASE: the list of object ids let go

# How a reply carries its result: a REPLY's item HOW.
VALUE = 0
REF = 1
PATH = 2
SAME = 3
BASE = 4
ERROR = 5

# The payload of a REF reply.
REF_OID = 0
REF_TYPE_KEY = 1
REF_TYPE_INFO = 2  # None when the receiver was told of the type before

# Type info.
TYPE_MODULE = 0
TYPE_QUALNAME = 1
TYPE_METHODS = 2
TYPE_CALLABLE = 3

# An encoded exception (the payload of an ERROR reply).
EXC_MODULE = 0
EXC_QUALNAME = 1
EXC_MESSAGE = 2
EXC_PICKLED = 3
EXC_FRAMES = 4
EXC_TRACEBACK = 5
EXC_CAUSE = 6
EXC_CONTEXT = 7

# Frame tags: the first payload byte.
TAG_PICKLE = b"P"
TAG_REFS = b"R"
TAG_DILL = b"D"
TAG_MEMFD = b"M"
TAG_BUFFERS = b"B"
TAG_LANE = b"L"

# Frames at least this large travel in a memfd rather than through the socket, and
# buffers at least this large out of band.
BIG_FRAME = 1 << 20

LANE_BITS = 16
LANE_MASK = (1 << LANE_BITS) - 1
LANE = struct.Struct("!IB")  # a TAG_LANE frame: lane number, 1 to open or 0 to close
