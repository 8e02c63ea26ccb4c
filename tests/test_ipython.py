"""IPython and Jupyter: TAB completion, `?`/`??`, `help()` and rich display of remote objects.

IPython's own objects run in-process (`InteractiveShell`, its `Completer`, `object_inspect`,
`DisplayFormatter`); Jupyter is a real ipykernel the test starts with `jupyter_client`.
"""

from __future__ import annotations

import pydoc
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spawnproxy
from tests.conftest import run_python

IPython = pytest.importorskip("IPython")
from IPython.core.completer import provisionalcompleter  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from IPython.utils.capture import capture_output  # noqa: E402

pytestmark = pytest.mark.timeout(60)

NOTEBOOK = "tests.targets.notebook"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shell() -> Iterator[Any]:
    """IPython's shell, with its default settings and spawnproxy's extension loaded."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "spawnproxy")
    yield ip
    ip.run_line_magic("unload_ext", "spawnproxy")


@pytest.fixture
def mod(shell: Any) -> Iterator[Any]:
    """tests/targets/notebook.py in a child, as `mod` in the shell's namespace."""
    proxy = spawnproxy.run_module(NOTEBOOK)
    shell.user_ns["mod"] = proxy
    yield proxy
    shell.user_ns.pop("mod", None)
    proxy.terminate_daemon()


def complete(shell: Any, line: str) -> list[str]:
    """What TAB at the end of `line` offers, as the text the line ends with once chosen."""
    with provisionalcompleter():
        found = shell.Completer.completions(line, len(line))
        return [line[: c.start] + c.text for c in found]


def plain(text: str) -> str:
    """`text` without the terminal colours IPython's inspector adds."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_defaults_are_the_ones_the_issue_names(shell: Any) -> None:
    """The shell under test completes with IPython's defaults: jedi on, evaluation 'limited'."""
    assert shell.Completer.use_jedi is True
    assert shell.Completer.evaluation == "limited"


def test_tab_completes_a_remote_attribute(shell: Any, mod: Any) -> None:
    """`mod.mo<TAB>` offers `mod.model`, with jedi on."""
    assert "mod.model" in complete(shell, "mod.mo")


def test_tab_completes_nested_remote_attributes(shell: Any, mod: Any) -> None:
    """`mod.model.fi<TAB>` offers `mod.model.fit`: the nested object is read in the child."""
    assert complete(shell, "mod.model.fi") == ["mod.model.fit"]
    assert complete(shell, "x = mod.model.fo") == ["x = mod.model.forget"]


def test_tab_completes_without_jedi_too(shell: Any, mod: Any) -> None:
    """With `Completer.use_jedi = False` nested remote attributes complete as well."""
    shell.Completer.use_jedi = False
    try:
        assert complete(shell, "mod.model.fi") == ["mod.model.fit"]
    finally:
        shell.Completer.use_jedi = True


def test_children_of_each_version_answer_completion_source_help_and_display(shell: Any, child_python: str) -> None:
    """What a child answers for TAB, `??`, `help()` and display works in children of CPython 3.8-3.13."""
    proxy = spawnproxy.run_module("notebook", str(ROOT / "tests" / "targets" / "notebook.py"), python_exe=child_python)
    shell.user_ns["old"] = proxy
    try:
        assert complete(shell, "old.model.fi") == ["old.model.fit"]
        assert "def fit(self, x, epochs=1):" in shell.object_inspect("old.model.fit", detail_level=1)["source"]
        with capture_output() as captured:
            shell.run_cell("help(old.model)")
        assert "Fit the model to x." in captured.stdout
        assert list(_formats(shell, proxy.claims)[0]) == ["text/plain"]
    finally:
        shell.user_ns.pop("old", None)
        proxy.terminate_daemon()


def test_tab_hides_underscore_names_until_asked(shell: Any, mod: Any) -> None:
    """`mod.model.<TAB>` offers public names only, `mod.model._<TAB>` the private ones too."""
    public = complete(shell, "mod.model.")
    assert "mod.model.fit" in public
    assert not [name for name in public if name.startswith("mod.model._")]
    assert "mod.model.__class__" in complete(shell, "mod.model._")


def test_tab_reads_nothing_remote_when_evaluation_forbids_it(shell: Any, mod: Any) -> None:
    """With `Completer.evaluation = 'minimal'` completion reads no remote attribute."""
    shell.Completer.evaluation = "minimal"
    try:
        assert "mod.model.fit" not in complete(shell, "mod.model.fi")
    finally:
        shell.Completer.evaluation = "limited"


def test_tab_does_not_freeze_on_a_busy_child(shell: Any, mod: Any) -> None:
    """A child that takes seconds to answer a completion's read gives nothing new, at once."""
    started = time.monotonic()
    assert complete(shell, "mod.slow.la") in ([], ["mod.slow.la"])
    assert time.monotonic() - started < 1.5


def test_pinfo_shows_the_remote_signature_and_docstring(shell: Any, mod: Any) -> None:
    """`mod.func?` shows the remote function's signature and docstring."""
    info = shell.object_inspect("mod.func", detail_level=0)
    assert info["definition"] == "mod.func(a, b=2)"
    assert info["docstring"] == "Add a and b."


def test_pinfo2_shows_the_remote_source(shell: Any, mod: Any) -> None:
    """`mod.model.fit??` shows the child's source of the method and its file, as IPython does locally."""
    from tests.targets import notebook

    shell.user_ns["local"] = notebook.model
    info = shell.object_inspect("mod.model.fit", detail_level=1)
    local = shell.object_inspect("local.fit", detail_level=1)
    assert "def fit(self, x, epochs=1):" in info["source"]
    assert (info["source"], info["file"], info["docstring"]) == (local["source"], local["file"], local["docstring"])
    assert (info["type_name"], info["definition"]) == (local["type_name"], "mod.model.fit(x, epochs=1)")
    text = plain(shell.object_inspect_text("mod.model", detail_level=1))
    assert "class Model:" in text  # an instance: its class's source, as IPython shows locally
    assert "_sp_" not in text and "spawnproxy" not in text


def test_pinfo2_without_remote_source_shows_no_local_one(shell: Any, mod: Any) -> None:
    """`??` of a remote object that has no source shows none, and none of spawnproxy's."""
    info = shell.object_inspect("mod.sqrt", detail_level=1)
    assert (info["source"], info["file"]) == (None, None)
    assert "spawnproxy" not in plain(shell.object_inspect_text("mod.sqrt", detail_level=1))


def test_help_documents_the_remote_instance(shell: Any, mod: Any) -> None:
    """`help(instance_proxy)` documents the remote class: its name, methods and docstrings."""
    with capture_output() as captured:
        shell.run_cell("help(mod.model)")
    text = captured.stdout
    assert "Help on Model in module tests.targets.notebook object" in text
    assert "fit(self, x, epochs=1)" in text
    assert "Fit the model to x." in text
    assert "ObjectProxy" not in text


def test_help_of_local_objects_is_unchanged(shell: Any) -> None:
    """`help()` of a local object prints what pydoc renders for it."""
    with capture_output() as captured:
        shell.run_cell("help(len)")
    assert pydoc.render_doc(len, "Help on %s:", renderer=pydoc.plaintext).strip() in captured.stdout


def _formats(shell: Any, obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    formatter = shell.display_formatter
    active = formatter.active_types
    formatter.active_types = list(formatter.formatters)  # every mime type, as a notebook's kernel
    try:
        return formatter.format(obj)  # type: ignore[no-any-return]
    finally:
        formatter.active_types = active


def test_a_remote_dataframe_renders_as_its_table(shell: Any, mod: Any) -> None:
    """A remote pandas DataFrame gives the same mime types as a local one, its HTML table included."""
    pandas = pytest.importorskip("pandas")
    local = pandas.DataFrame({"a": [1, 2], "b": [3, 4]})
    mod.make_frame()
    assert spawnproxy.is_proxy(mod.df)
    data, _ = _formats(shell, mod.df)
    assert sorted(data) == sorted(_formats(shell, local)[0])
    assert data["text/html"] == local._repr_html_()
    assert data["text/plain"] == repr(local)


def test_a_remote_mime_bundle_is_shown_as_the_local_one(shell: Any, mod: Any) -> None:
    """A remote `_repr_mimebundle_` gives the same data as locally, its text/plain included."""
    from tests.targets import notebook

    assert _formats(shell, mod.bundled) == _formats(shell, notebook.bundled)
    assert _formats(shell, mod.bundled)[0]["text/plain"] == "bundled text"


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the requests and calls every session sends from now on."""
    from spawnproxy import _session

    sent: list[str] = []
    request, call = _session.Session.request, _session.Session.call

    def counted_request(self: Any, op: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(op if op != "op" else f"op {args[0][1]}")
        return request(self, op, *args, **kwargs)

    def counted_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append("call")
        return call(self, *args, **kwargs)

    monkeypatch.setattr(_session.Session, "request", counted_request)
    monkeypatch.setattr(_session.Session, "call", counted_call)
    return sent


def test_displaying_a_proxy_asks_the_child_little(shell: Any, mod: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """One display of a remote DataFrame costs a handful of round trips, not two per mime type."""
    pytest.importorskip("pandas")
    mod.make_frame()
    frame = mod.df
    sent = _counting(monkeypatch)
    _formats(shell, frame)
    # IPython's own check of `_ipython_display_` (the canary, then the method), which display
    # methods the frame has (one request), the two the formatters call (_repr_html_,
    # _repr_latex_) and the plain repr.
    assert sorted(sent) == sorted(["getattr", "getattr", "hooks", "call", "call", "op repr"]), sent


def test_a_proxy_without_rich_reprs_has_none(shell: Any, mod: Any) -> None:
    """A remote object with no `_repr_*_` shows as text only."""
    data, _ = _formats(shell, mod.model)
    assert list(data) == ["text/plain"]
    assert data["text/plain"].startswith("<tests.targets.notebook.Model object")


def test_an_object_claiming_every_attribute_is_not_taken_for_rich(shell: Any, mod: Any) -> None:
    """A remote object that answers IPython's canary attribute shows as text only, as locally."""
    data, _ = _formats(shell, mod.claims)
    assert list(data) == ["text/plain"]


def test_unloading_the_extension_removes_it(shell: Any, mod: Any) -> None:
    """`%unload_ext spawnproxy` takes completion and display back to IPython's own."""
    shell.run_line_magic("unload_ext", "spawnproxy")
    try:
        assert "mod.model.fit" not in complete(shell, "mod.model.fi")
    finally:
        shell.run_line_magic("load_ext", "spawnproxy")
    assert complete(shell, "mod.model.fi") == ["mod.model.fit"]


def test_importing_spawnproxy_inside_ipython_installs_it() -> None:
    """`import spawnproxy` in a running IPython loads the extension (completion works at once)."""
    code = (
        "from IPython.testing.globalipapp import start_ipython\n"
        "from IPython.core.completer import provisionalcompleter\n"
        "ip = start_ipython()\n"
        "ip.run_cell('import spawnproxy; mod = spawnproxy.run_module(\"tests.targets.notebook\")')\n"
        "with provisionalcompleter():\n"
        "    print([c.text for c in ip.Completer.completions('mod.model.fi', 12)])\n"
        "print('spawnproxy' in ip.extension_manager.loaded)\n"
        "ip.run_cell('mod.terminate_daemon()')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['fit']", "True"]


def test_importing_spawnproxy_does_not_import_ipython() -> None:
    """Outside IPython, `import spawnproxy` imports neither IPython nor spawnproxy's glue for it."""
    result = run_python("import sys, spawnproxy; print(sorted(m for m in sys.modules if 'ipython' in m.lower()))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_jupyter_kernel_completes_inspects_and_renders() -> None:
    """In a Jupyter kernel: complete_request, inspect_request (`??`) and a DataFrame's HTML output."""
    pytest.importorskip("ipykernel")
    pytest.importorskip("pandas")
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", cwd=str(ROOT))
    try:

        def execute(code: str) -> list[dict[str, Any]]:
            msg_id = client.execute(code)
            outputs = []
            while True:
                msg = client.get_iopub_msg(timeout=30)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    return outputs
                outputs.append(msg)

        def reply(msg_id: str) -> dict[str, Any]:
            while True:
                msg = client.get_shell_msg(timeout=30)
                if msg["parent_header"].get("msg_id") == msg_id:
                    return msg["content"]  # type: ignore[no-any-return]

        execute(f"import spawnproxy\nmod = spawnproxy.run_module({NOTEBOOK!r})")
        for line, wanted in (("mod.mo", "model"), ("mod.model.fi", "fit")):
            content = reply(client.complete(line, len(line)))
            assert content["status"] == "ok"
            completed = [line[: content["cursor_start"]] + match for match in content["matches"]]
            assert line.rsplit(".", 1)[0] + "." + wanted in completed
        content = reply(client.inspect("mod.model.fit", len("mod.model.fit"), detail_level=1))
        assert content["found"]
        assert "def fit(self, x, epochs=1):" in plain(content["data"]["text/plain"])
        execute("mod.make_frame()")
        outputs = execute("mod.df")
        results = [m["content"]["data"] for m in outputs if m["msg_type"] == "execute_result"]
        assert results and "<table" in results[0]["text/html"]
        execute("mod.terminate_daemon()")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
