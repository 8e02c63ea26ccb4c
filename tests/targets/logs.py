"""A child that logs (tests/test_logging.py): loaded from its path, by children of every version (3.8 syntax)."""

import logging
import os
import sys
import threading
import time

log = logging.getLogger("backend")


def warn(message, *args):
    log.warning(message, *args)


def info(message):
    log.info(message)


def debug(message):
    log.debug(message)


def on_root(level, message):
    logging.log(level, message)


def fail(message):
    try:
        raise ValueError(message)
    except ValueError:
        log.exception("failed: %s", message)


def with_stack(message):
    log.warning(message, stack_info=True)


def unpicklable_args(message):
    log.warning(message + " %r", threading.Lock())


def set_root_level(level):
    logging.getLogger().setLevel(level)


def basic_config(**kwargs):
    logging.basicConfig(**kwargs)


def without_root_handlers():
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def root_handlers():
    return [type(handler).__name__ for handler in logging.getLogger().handlers]


def later(message, delay):
    """Log from a thread of the child's own, once no call runs any more."""

    def run():
        time.sleep(delay)
        log.warning(message)

    threading.Thread(target=run).start()


def warn_and_exit(message, code):
    log.warning(message)
    os._exit(code)


def flood(count):
    for i in range(count):
        log.warning("record %d", i)
    return count


def start_flood(count):
    threading.Thread(target=flood, args=(count,)).start()


def say(text, stream):
    print(text, file=sys.stdout if stream == "stdout" else sys.stderr)


def ping(value):
    return value


def warn_inside_a_line(before, message, after):
    """Log while a line written straight to the descriptor (a progress bar) has no newline yet."""
    os.write(2, before.encode())
    log.warning(message)
    os.write(2, after.encode() + b"\n")
