"""Benchmarks of spawnproxy against its peers (not part of the installed package)."""
