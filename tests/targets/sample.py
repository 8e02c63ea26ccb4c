"""Objects that test children load (importable by the parent and the child alike)."""

import threading
import time


class Point:
    """A small value type: picklable, comparable, hashable."""

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self):
        return hash((self.x, self.y))

    def __repr__(self):
        return f"Point({self.x}, {self.y})"


class Service:
    """A stateful object with the kinds of members tests poke at."""

    value = 1

    def __init__(self, start=0):
        self.count = start
        self.lock = threading.Lock()
        self.items = []

    def add(self, a, b=0):
        """Add two numbers."""
        return a + b

    def noop(self):
        return None

    def bump(self, by=1):
        self.count += by
        return self.count

    def echo(self, x):
        return x

    def apply(self, func, *args, **kwargs):
        return func(*args, **kwargs)

    def make_lock(self):
        return threading.Lock()

    def point(self, x, y):
        return Point(x, y)

    def chain(self):
        return self

    def numbers(self, n):
        yield from range(n)

    def fail(self, message="boom"):
        raise ValueError(message)

    def slow(self, seconds):
        time.sleep(seconds)
        return seconds

    def identity_of(self, obj):
        return id(obj)

    def is_same(self, a, b):
        return a is b

    def type_name(self, obj):
        return type(obj).__name__


class Counter:
    """A context manager that counts how often it was entered and left."""

    def __init__(self):
        self.entered = 0
        self.exited = 0
        self.last_exc = None

    def __enter__(self):
        self.entered += 1
        return self

    def __exit__(self, exc_type, exc, tb):
        self.exited += 1
        self.last_exc = None if exc_type is None else exc_type.__name__
        return False
