"""Functions that pool tests run in children (importable by the parent and the child alike)."""

import os
import time


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def fail(x):
    raise ValueError("bad item %r" % (x,))


def fail_at(x, bad):
    if x == bad:
        raise KeyError(x)
    return x


def die(code):
    os._exit(code)


def pid():
    return os.getpid()
