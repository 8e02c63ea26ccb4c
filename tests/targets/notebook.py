"""What the IPython and Jupyter tests reach through proxies (tests/test_ipython.py)."""

import time
from math import sqrt  # noqa: F401  (a builtin: no source anywhere)


class Model:
    """A model that learns nothing."""

    def fit(self, x, epochs=1):
        """Fit the model to x."""
        return x

    def forget(self):
        return None


model = Model()


def func(a, b=2):
    """Add a and b."""
    return a + b


class Claims:
    """Answers every attribute, as mocks do: IPython must not take it for having rich reprs."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: "<b>claimed</b>"


claims = Claims()


class SlowDir:
    """A dir() that keeps the child busy."""

    def __dir__(self):
        time.sleep(3)
        return ["late"]


slow = SlowDir()


df = None  # the root's attributes are proxies (reached by path): `mod.df` stays in the child


def make_frame():
    """Make `df` a small pandas DataFrame (pandas imported here, in the child, only when asked)."""
    global df
    import pandas

    df = pandas.DataFrame({"a": [1, 2], "b": [3, 4]})


class Bundled:
    """Gives its own mime bundle, text/plain included."""

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": "bundled text", "text/markdown": "**bundled**"}


bundled = Bundled()
