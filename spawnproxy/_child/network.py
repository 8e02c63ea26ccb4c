"""A served daemon: its listener, and the child that serves each network client.

Shipped to the child as source (see `_bootstrap`) but run there only in a
child told to listen (`ops.op_listen` loads it, with the modules it needs):
standard library only, CPython 3.8 syntax.  Uses `addresses`, `listener`,
`transports`, `serve`, `ops` and `lifetime`.

- `listen`: the work of the "listen" operation: bind, then accept clients.
- `Listener`: a served daemon's listening sockets; their handshakes run in
  one selector loop (`listener.AcceptLoop`), and each authenticated client
  gets a thread and a `ClientChild` of its own (its own object table, so its
  references are released when it disconnects) sharing the root object.
- `CLIENT_OPS`: what a client may ask: a plain child's operations, and
  "root" and "stop".
"""

import atexit
import os
import sys
import threading
import time
from _weakrefset import WeakSet  # what threading uses (see outbox)

from . import protocol
from .addresses import bind, unlink_sockets
from .lifetime import flush_and_exit, hello
from .listener import AcceptLoop, describe_peer
from .ops import OPS, op_load
from .serve import Child
from .transports import open_channel

# The clients this daemon serves: told when it stops on purpose.
_clients = WeakSet()


def op_root(child):
    """The first request of a network client: the root object, as `load` describes it."""
    return op_load(child, ("object", child.root))


def op_stop(child):
    """End the daemon (asked by a client): answer first, then exit."""

    def stop():
        time.sleep(0.05)
        say_stopping()
        unlink_sockets()
        flush_and_exit()

    threading.Thread(target=stop, name="spawnproxy-stop", daemon=True).start()
    return protocol.VALUE, os.getpid()


CLIENT_OPS = dict(OPS, root=op_root, stop=op_stop)


class ClientChild(Child):
    """Serve one network client: its own object table, the daemon's root shared."""

    def __init__(self, channel, root):
        Child.__init__(self, channel, CLIENT_OPS)
        self.root = root
        _clients.add(self)

    def close(self):
        _clients.discard(self)
        Child.close(self)


def listen(child, config):
    """Start accepting clients; answer with the address actually bound (see ops.op_listen)."""
    listener = Listener(child.table.get(config["root"]), config)  # its accept thread keeps it
    atexit.register(say_stopping)  # its parent ends it on purpose: the daemon is being stopped
    return protocol.VALUE, listener.address


def say_stopping():
    """Tell each client that the daemon stops on purpose (it did not crash); bounded, best effort."""
    for child in list(_clients):
        codec = child.codec
        if codec is not None:  # (None: that client has just gone)
            # A client that is gone, or stuck, learns of the end as of a crash.
            child.outbox.try_send(*codec.dumps((protocol.STOPPING,)), wait=0.1, deadline=time.monotonic() + 0.2)


class Listener:
    """Accept clients on one address, each in a thread of its own."""

    def __init__(self, root, config):
        self.root = root
        self.authkey = config["authkey"]
        self.timeout = config.get("handshake_timeout", 1.0)
        self.keepalive = config.get("keepalive", 10)
        self.context = None
        if config.get("certfile"):
            import ssl

            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            # Explicit: before Python 3.10 the floor is whatever OpenSSL's defaults say.
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(config["certfile"], config.get("keyfile") or None)
            if config.get("cafile"):
                # A CA for client certificates: clients must then present one it signed.
                context.load_verify_locations(config["cafile"])
                context.verify_mode = ssl.CERT_REQUIRED
            self.context = context
        # Several sockets for `localhost` (127.0.0.1 and ::1), one otherwise.
        self.socks, self.address = bind(config["address"])
        self.sock = self.socks[0]
        AcceptLoop(self.socks, self.authkey, self.timeout, self.context, self._start_client, _note)

    def _start_client(self, conn, peer):
        """A peer passed the handshake: serve it in a thread of its own."""
        threading.Thread(target=self._serve, args=(conn, peer), name="spawnproxy-client", daemon=True).start()

    def _serve(self, conn, peer):
        try:
            channel = open_channel(conn, self.keepalive)
        except OSError as exc:  # the peer reset meanwhile: only it is affected
            conn.close()
            _note("client %s ended with %s: %s" % (describe_peer(peer), type(exc).__name__, exc))
            return
        child = ClientChild(channel, self.root)
        try:
            channel.send(*child.codec.dumps(("hello", hello())))
            child.serve()
        except BaseException as exc:
            # However the client went (reset, killed, keepalive timeout), only it is affected.
            if not isinstance(exc, (SystemExit, OSError, EOFError)):
                _note("client %s ended with %s: %s" % (describe_peer(peer), type(exc).__name__, exc))
        finally:
            channel.close()
            # Its references go with it: the objects only it held are freed now.
            child.close()


def _note(text):
    try:
        sys.stderr.write("spawnproxy daemon %d: %s\n" % (os.getpid(), text))
    except Exception:
        pass
