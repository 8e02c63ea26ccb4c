"""The benchmarked peers: one module each, all with the interface of `benchmarks.peers.base`."""

from __future__ import annotations

# name used on the command line -> (module, label in the reports)
PEERS: dict[str, tuple[str, str]] = {
    "raw_pipe": ("benchmarks.peers.raw_pipe", "raw Pipe echo"),
    "raw_pipe_fork": ("benchmarks.peers.raw_pipe_fork", "Pipe echo, fork"),
    "raw_socketpair": ("benchmarks.peers.raw_socketpair", "socketpair echo"),
    "spawnproxy": ("benchmarks.peers.spawnproxy_peer", "spawnproxy"),
    "managers": ("benchmarks.peers.managers_peer", "mp.managers"),
    "spawny": ("benchmarks.peers.spawny_peer", "spawny"),
    "rpyc": ("benchmarks.peers.rpyc_peer", "RPyC"),
    "pyro5": ("benchmarks.peers.pyro5_peer", "Pyro5"),
    "execnet": ("benchmarks.peers.execnet_peer", "execnet"),
}

BASELINE = "raw_pipe"
