"""Keep a crash-prone extension in a child: a segfault there is an exception here."""

import spawnproxy

CRASHY = """
import ctypes

def stable(x):
    return x + 1

def crash():
    ctypes.string_at(0)  # reads address 0: a segfault
"""


def main() -> None:
    mod = spawnproxy.run_script(CRASHY)
    print("stable:", mod.stable(1))
    try:
        mod.crash()
    except spawnproxy.DaemonDiedError as err:
        print("the child died, the parent did not:", str(err).splitlines()[0])
    mod = spawnproxy.run_script(CRASHY)  # start a fresh one and carry on
    print("stable again:", mod.stable(2))
    mod.terminate_daemon()


if __name__ == "__main__":
    main()
