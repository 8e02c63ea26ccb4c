"""The child's logging (issue 19, part 2): records reach the parent as LogRecords, levels and all."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spawnproxy
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

TARGET = str(Path(__file__).parent / "targets" / "logs.py")


class Collect(logging.Handler):
    """Keep every record it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in list(self.records)]

    def named(self, message: str) -> logging.LogRecord | None:
        return next((record for record in list(self.records) if record.getMessage() == message), None)


def _env() -> dict[str, str]:
    # These machines set PYTHONUNBUFFERED=1: without removing it an output test proves nothing.
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


@pytest.fixture
def collect(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, Collect]]:
    """A logger of the test's own (to pass as `logger=`) and the handler that collects what reaches it."""
    logger = logging.getLogger(f"tests.logging.{request.node.name}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = Collect()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


def _child(logger: logging.Logger | None = None, **options: Any) -> Any:
    options.setdefault("env", _env())
    return spawnproxy.run_module("child_logs", module_path=TARGET, logger=logger, **options)


def _logs(mod: Any) -> list[str]:
    return spawnproxy.daemon_of(mod).logs  # type: ignore[no-any-return]


def test_a_record_keeps_its_level_name_time_and_message(collect: tuple[logging.Logger, Collect], warm: bool) -> None:
    """A child's warning arrives as a WARNING LogRecord under <logger>.<name>, with its time, pid and message."""
    logger, handler = collect
    mod = _child(logger, warm=warm)
    try:
        before = time.time()
        mod.warn("request %s took %d ms", "GET /", 12)
        after = time.time()
        assert wait_until(lambda: handler.named("request GET / took 12 ms") is not None)
        record = handler.named("request GET / took 12 ms")
        assert record is not None
        assert record.levelno == logging.WARNING and record.levelname == "WARNING"
        assert record.name == f"{logger.name}.backend"
        assert before - 1 <= record.created <= after + 1
        assert record.process == spawnproxy.daemon_of(mod).pid
        assert record.funcName == "warn" and record.filename == "logs.py"
        # Arrived as a record, not as a stderr line at WARNING on the logger itself.
        assert all(r.name != logger.name for r in handler.records)
    finally:
        mod.terminate_daemon()


def test_without_a_logger_records_go_under_spawnproxy_child() -> None:
    """Without logger=, a record goes to the logger spawnproxy.child.<name>, where the parent's handlers see it."""
    parent = logging.getLogger("spawnproxy.child")
    handler = Collect()
    parent.addHandler(handler)
    try:
        mod = _child()
        try:
            mod.warn("no logger given")
            mod.on_root(logging.ERROR, "on the child's root")
            assert wait_until(lambda: len(handler.records) >= 2)
            assert handler.named("no logger given").name == "spawnproxy.child.backend"  # type: ignore[union-attr]
            assert handler.named("on the child's root").name == "spawnproxy.child"  # type: ignore[union-attr]
        finally:
            mod.terminate_daemon()
    finally:
        parent.removeHandler(handler)


def test_exception_text_and_stack_come_formatted(collect: tuple[logging.Logger, Collect]) -> None:
    """log.exception() arrives with exc_text (no exception object), stack_info too; args that cannot pickle are fine."""
    logger, handler = collect
    mod = _child(logger)
    try:
        mod.fail("bad input")
        mod.with_stack("where am I")
        mod.unpicklable_args("a lock:")
        assert wait_until(lambda: len(handler.records) >= 3)
        failed = handler.named("failed: bad input")
        assert failed is not None and failed.levelno == logging.ERROR
        assert failed.exc_info is None
        assert failed.exc_text is not None
        assert "Traceback" in failed.exc_text and "ValueError: bad input" in failed.exc_text
        assert "ValueError: bad input" in logging.Formatter().format(failed)
        stacked = handler.named("where am I")
        assert stacked is not None and stacked.stack_info is not None and "with_stack" in stacked.stack_info
        assert any(m.startswith("a lock: <unlocked _thread.lock") for m in handler.messages())
    finally:
        mod.terminate_daemon()


def test_parent_levels_and_filters_apply(collect: tuple[logging.Logger, Collect]) -> None:
    """The parent's logger levels and handler filters apply to the child's records as to local ones."""
    logger, handler = collect
    logging.getLogger(f"{logger.name}.backend").setLevel(logging.ERROR)
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    mod = _child(logger)
    try:
        mod.warn("below the parent's level")
        mod.fail("secret")
        mod.fail("shown")
        assert wait_until(lambda: handler.named("failed: shown") is not None)
        assert handler.messages() == ["failed: shown"]
    finally:
        mod.terminate_daemon()
        logging.getLogger(f"{logger.name}.backend").setLevel(logging.NOTSET)


def test_the_childs_root_level_is_respected(collect: tuple[logging.Logger, Collect]) -> None:
    """Nothing below the child's own level is shipped: INFO only once the child's root is at INFO."""
    logger, handler = collect
    mod = _child(logger)
    try:
        mod.info("info at the default level")
        mod.warn("first warning")
        assert wait_until(lambda: handler.named("first warning") is not None)
        mod.set_root_level(logging.INFO)
        mod.debug("debug at INFO")
        mod.info("info at INFO")
        assert wait_until(lambda: handler.named("info at INFO") is not None)
        assert handler.messages() == ["first warning", "info at INFO"]
        assert not any("at the default level" in line or "debug at INFO" in line for line in _logs(mod))
    finally:
        mod.terminate_daemon()


def test_basic_config_in_the_child_gives_its_records_once(collect: tuple[logging.Logger, Collect]) -> None:
    """logging.basicConfig(level=INFO) in the child: INFO records arrive once, as records, not as stderr lines."""
    logger, handler = collect
    mod = _child(logger)
    try:
        mod.basic_config(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
        mod.info("configured")
        mod.basic_config(level=logging.DEBUG)  # a second call does nothing, as anywhere
        mod.debug("still at INFO")
        mod.warn("last")
        assert wait_until(lambda: handler.named("last") is not None)
        assert handler.messages() == ["configured", "last"]
        assert handler.records[0].levelno == logging.INFO
        assert [line for line in _logs(mod) if "configured" in line] == ["INFO backend: configured"]
        assert mod.root_handlers() == ["Forwarder"]
    finally:
        mod.terminate_daemon()


def test_basic_config_force_and_own_handlers(collect: tuple[logging.Logger, Collect]) -> None:
    """basicConfig(force=True) keeps forwarding; basicConfig(stream=sys.stdout) sends the child's logging there."""
    logger, handler = collect
    mod = _child(logger)
    try:
        mod.basic_config(level=logging.INFO, force=True)
        mod.info("forced")
        assert wait_until(lambda: handler.named("forced") is not None)
        mod.basic_config(force=True, stream=mod.sys.stdout, format="OWN %(message)s")
        mod.warn("to stdout")
        assert wait_until(lambda: "OWN to stdout" in handler.messages())
        assert handler.named("OWN to stdout").levelno == logging.INFO  # type: ignore[union-attr]
        assert handler.named("to stdout") is None
    finally:
        mod.terminate_daemon()


def test_with_no_handler_at_all_the_last_resort_sends_warnings(collect: tuple[logging.Logger, Collect]) -> None:
    """A child whose root has no handler left: logging.lastResort sends WARNING and above, as records."""
    logger, handler = collect
    mod = _child(logger)
    try:
        mod.without_root_handlers()
        mod.set_root_level(logging.DEBUG)
        mod.info("below the last resort's level")
        mod.warn("by the last resort")
        assert wait_until(lambda: handler.named("by the last resort") is not None)
        assert handler.messages() == ["by the last resort"]
        assert handler.records[0].name == f"{logger.name}.backend"
    finally:
        mod.terminate_daemon()


def test_a_record_from_a_background_thread_arrives_while_no_call_runs(
    collect: tuple[logging.Logger, Collect],
) -> None:
    """A thread of the child logs while the parent makes no call: the record arrives all the same."""
    logger, handler = collect
    mod = _child(logger)
    try:
        mod.later("from a thread", 0.2)
        assert wait_until(lambda: handler.named("from a thread") is not None, 5)
        record = handler.named("from a thread")
        assert record is not None and record.name == f"{logger.name}.backend"
        assert record.threadName not in ("MainThread", None) and not record.threadName.startswith("spawnproxy")
    finally:
        mod.terminate_daemon()


def test_the_last_records_before_the_child_dies_arrive(collect: tuple[logging.Logger, Collect], warm: bool) -> None:
    """A record logged just before os._exit arrives, and the DaemonDiedError quotes it."""
    logger, handler = collect
    mod = _child(logger, warm=warm)
    with pytest.raises(spawnproxy.DaemonDiedError, match="WARNING backend: last words"):
        mod.warn_and_exit("last words", 3)
    assert wait_until(lambda: handler.named("last words") is not None, 5)
    assert handler.named("last words").name == f"{logger.name}.backend"  # type: ignore[union-attr]


def test_with_the_root_logger_as_logger_the_childs_names_are_kept() -> None:
    """logger=logging.getLogger(): a child's logger keeps its own name in the parent, its root is the root."""
    root = logging.getLogger()
    handler = Collect()
    root.addHandler(handler)
    try:
        mod = _child(root)
        try:
            mod.warn("named")
            mod.on_root(logging.ERROR, "on the root")
            assert wait_until(lambda: handler.named("on the root") is not None)
            assert handler.named("named").name == "backend"  # type: ignore[union-attr]
            assert handler.named("on the root").name == "root"  # type: ignore[union-attr]
        finally:
            mod.terminate_daemon()
    finally:
        root.removeHandler(handler)


def test_logs_say_which_stream_each_line_came_from(collect: tuple[logging.Logger, Collect]) -> None:
    """.logs holds str entries whose .stream is stdout, stderr or logging."""
    logger, handler = collect
    mod = _child(logger)
    try:
        mod.say("to out", "stdout")
        mod.say("to err", "stderr")
        mod.warn("a record")
        assert wait_until(lambda: len(_logs(mod)) >= 3)
        logs = {str(line): line.stream for line in _logs(mod)}  # type: ignore[attr-defined]
        assert logs == {"to out": "stdout", "to err": "stderr", "WARNING backend: a record": "logging"}
        assert all(type(line) is not str and isinstance(line, str) for line in _logs(mod))
    finally:
        mod.terminate_daemon()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_flood_of_records_is_bounded(collect: tuple[logging.Logger, Collect]) -> None:
    """20,000 records from a thread: calls answered meanwhile, every record forwarded, .logs bounded."""
    logger, handler = collect
    mod = _child(logger, logs_maxlen=100)
    try:
        mod.start_flood(20_000)
        slowest = 0.0
        calls = 0
        while not wait_until(lambda: len(handler.records) >= 20_000, 0.01):
            started = time.monotonic()
            assert mod.ping(calls) == calls
            slowest = max(slowest, time.monotonic() - started)
            calls += 1
            assert calls < 100_000
        assert slowest < 1.0
        assert handler.messages()[-1] == "record 19999"
        assert len(_logs(mod)) == 100
        mod.warn("x" * (1 << 20))  # a message of 1 MiB: cut to a line's bound, like a line
        assert wait_until(lambda: handler.records[-1].getMessage().startswith("xxx"))
        message = handler.records[-1].getMessage()
        assert 60_000 < len(message) <= 64 * 1024 and message.endswith("[truncated]")
    finally:
        mod.terminate_daemon()


def test_records_from_each_child_version(child_python: str, collect: tuple[logging.Logger, Collect]) -> None:
    """Children of CPython 3.8-3.13 forward their records with level and exception text."""
    logger, handler = collect
    mod = _child(logger, python_exe=child_python)
    try:
        mod.basic_config(level=logging.INFO)
        mod.info("hello")
        mod.fail("oops")
        assert wait_until(lambda: handler.named("failed: oops") is not None, 5)
        assert handler.named("hello").levelno == logging.INFO  # type: ignore[union-attr]
        assert "ValueError: oops" in handler.named("failed: oops").exc_text  # type: ignore[union-attr,operator]
    finally:
        mod.terminate_daemon()


def test_records_through_a_launcher(collect: tuple[logging.Logger, Collect]) -> None:
    """Behind a launcher (its stdio carries the child's output), records keep their level too."""
    logger, handler = collect
    mod = _child(logger, launcher=["env", "-u", "PYTHONUNBUFFERED"], env=None)
    try:
        mod.fail("behind a launcher")
        mod.say("a plain line", "stderr")
        assert wait_until(lambda: handler.named("a plain line") is not None, 5)
        record = handler.named("failed: behind a launcher")
        assert record is not None and record.levelno == logging.ERROR and "ValueError" in (record.exc_text or "")
        assert handler.named("a plain line").levelno == logging.WARNING  # type: ignore[union-attr]
    finally:
        mod.terminate_daemon()


def test_a_detached_daemons_log_file_gets_its_records_at_its_own_levels(tmp_path: Path) -> None:
    """A detached daemon's records land in its log file with level and name, down to the child's own level."""
    log_file = tmp_path / "daemon.log"
    script = "import logging\nlogging.basicConfig(level=logging.DEBUG)\nlog = logging.getLogger('backend')\n"
    script += "def work():\n    log.debug('a detail')\n    log.info('a step')\n"
    server = spawnproxy.serve(
        spawnproxy.ScriptDefinition(script),
        detach=True,
        state_file=tmp_path / "state.json",
        log_file=log_file,
        env=_env(),
    )
    try:
        spawnproxy.connect(server.address, authkey=server.authkey).work()
        assert wait_until(lambda: "a step" in log_file.read_text(), 5)
        text = log_file.read_text()
        assert "spawnproxy.child.backend DEBUG a detail" in text
        assert "spawnproxy.child.backend INFO a step" in text
    finally:
        server.terminate()


def test_a_child_that_never_logs_does_not_load_logging() -> None:
    """A child whose code does not import logging does not import it either (no start-up cost)."""
    mod = spawnproxy.run_script("import sys")
    try:
        assert "logging" not in mod.sys.modules
    finally:
        mod.terminate_daemon()


def test_a_record_inside_an_unfinished_line_is_still_a_record(collect: tuple[logging.Logger, Collect]) -> None:
    """A record logged while a stderr line has no newline yet (a progress bar) arrives as a record."""
    logger, handler = collect
    mod = _child(logger)
    try:
        mod.warn_inside_a_line("50%|#####", "during progress", " 100%")
        assert wait_until(lambda: handler.named(" 100%") is not None)
        assert [(r.name, r.getMessage()) for r in handler.records] == [
            (logger.name, "50%|#####"),
            (f"{logger.name}.backend", "during progress"),
            (logger.name, " 100%"),
        ]
    finally:
        mod.terminate_daemon()


def test_records_after_find_spec_of_logging(collect: tuple[logging.Logger, Collect]) -> None:
    """A child that looks logging up (importlib.util.find_spec) before importing it forwards its records."""
    logger, handler = collect
    script = "import importlib.util\nimportlib.util.find_spec('logging')\nimport logging\n"
    script += "def warn(message):\n    logging.getLogger('late').warning(message)\n"
    mod = spawnproxy.run_script(script, logger=logger, env=_env())
    try:
        mod.warn("looked up first")
        assert wait_until(lambda: handler.named("looked up first") is not None)
        assert handler.named("looked up first").name == f"{logger.name}.late"  # type: ignore[union-attr]
    finally:
        mod.terminate_daemon()


def test_a_line_that_only_looks_like_a_record_stays_a_line(collect: tuple[logging.Logger, Collect]) -> None:
    """Stderr lines with the record mark but no record (bad JSON, a list, NaN, deep nesting) stay lines."""
    logger, handler = collect
    bad = [
        "not json",
        "[]",
        '{"name": "a", "levelno": 30, "message": "m", "created": NaN}',
        '{"name": "a", "levelno": 30, "message": "m", "created": Infinity}',
        "[" * 50_000,  # deeper than the recursion limit, shorter than a line
    ]
    mod = _child(logger)
    try:
        for line in bad:
            mod.say("\x1eL" + line, "stderr")
        mod.warn("still a record")
        assert wait_until(lambda: handler.named("still a record") is not None)
        lines = [r for r in handler.records if r.name == logger.name]
        assert [r.getMessage() for r in lines] == ["\x1eL" + line for line in bad]
        assert all(r.levelno == logging.WARNING for r in lines)
    finally:
        mod.terminate_daemon()
