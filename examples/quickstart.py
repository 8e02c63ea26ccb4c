"""The main example: run a script in a child interpreter and use it through proxies."""

import spawnproxy

SCRIPT = """
from collections import OrderedDict

odct = OrderedDict()
odct['a'] = 1
foo = "hello world"
items = [1, 2, 3]

def say_hello(who):
    return "hello %s" % who

print(say_hello("process"))
"""


def main() -> None:
    mod = spawnproxy.run_script(SCRIPT)
    daemon = spawnproxy.daemon_of(mod)
    print("child pid:", daemon.pid, "python:", ".".join(map(str, daemon.python_version)))
    print(mod.odct)
    assert mod.foo == "hello world"  # first-level attributes are proxies...
    print(type(mod.foo).__name__, mod.foo)
    greeting = mod.say_hello("earthling")  # ...results of calls are plain values
    print(type(greeting).__name__, greeting)
    mod.items.append(4)  # methods run in the child
    print("items in the child:", mod.items)
    mod.terminate_daemon()
    print("alive after terminate_daemon():", daemon.is_alive())


if __name__ == "__main__":
    main()
