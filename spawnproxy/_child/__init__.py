"""The child side: the code shipped to every child interpreter, as source.

Everything in this package keeps to the standard library and to syntax that
CPython 3.8 accepts; the parent imports parts of it (the protocol, the channel,
the network transports) and sends all of it to each child, where
`spawnproxy._bootstrap` loads the modules as the package `_spawnproxy_child`.
Importing a module here has no effect beyond defining its names: what
touches the whole process (threads, signal handlers, the at-fork hook)
happens when a child starts (`lifetime.main`, `stdio.main_stdio`).

The modules, in load order (each imports only modules above it; see
`spawnproxy._bootstrap.CHILD_MODULES`):

- the wire: `protocol` (message kinds, named layouts, the wire table),
  `buffers` (out-of-band buffers), `fdpassing` and `channel` (frames over a
  socket; memfds and descriptors passed along);
- what requests work on: `operators`, `table` (the objects the parent
  holds), `loader` (the root object from a definition), `heads` and `codec`
  (encoding replies, decoding requests, frames that fail to load);
- serving: `parent` (the parent's objects and errors), `outbox` (where
  frames go: the channel or a lane), `records` (the child's log records on
  its stderr), `ops` (the operations, `OPS`), `serve` (the `Child` and its
  loop), `lifetime` (a child process's entry point and watchdogs);
- run only when needed: `transports` (TLS, pipes, TCP) and `stdio` (a child
  reached through ssh); `handshake`, `addresses`, `listener` and `network`
  (a served daemon and its clients); `forwarder` (the child's `logging`,
  once its code imports it).
"""
