"""The child side: the code shipped to every child interpreter, as source.

Everything in this package keeps to the standard library and to syntax that
CPython 3.8 accepts; the parent imports parts of it (the protocol, the channel,
the network transports) and sends all of it to each child, where
`spawnproxy._bootstrap` loads the modules as the package `_spawnproxy_child`.
Importing a module here has no effect beyond defining its names.
"""
