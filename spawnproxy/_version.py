"""The version, in one place: setup.cfg and `spawnproxy.__version__` read it."""

__version__ = "0.1.0"
