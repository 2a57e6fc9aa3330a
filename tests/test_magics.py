"""The magics on a real IPython InteractiveShell with the extension loaded and the real tiny exported model.

A plain InteractiveShell has no kernel, so answers print as text, blocking (what terminal IPython
does); the widget paths are reached by telling `output_mode.detect` which front end is listening.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from traitlets import TraitError

from conftest import DisplayRecorder, shapes_picture
from mvlm_magic.notebook import load, output_mode
from mvlm_magic.notebook.ask import ANSWER_VARIABLE
from mvlm_magic.notebook.magics import MvlmMagics
from mvlm_magic.widgets.messages import text_markdown

LONG = 1500


@pytest.fixture(scope="module")
def ip(tmp_path_factory, exported, cache_dir):
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    os.environ["IPYTHONDIR"] = str(tmp_path_factory.mktemp("ipython"))
    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file per shell
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "mvlm_magic")
    shell.run_line_magic("config", f"MvlmMagics.cache_dir = {str(cache_dir)!r}")
    shell.user_ns.update(export_folder=str(exported("v2", "fp32")))
    yield shell
    shell.run_line_magic("unload_ext", "mvlm_magic")


@pytest.fixture
def magics(ip) -> MvlmMagics:
    magics = ip.magics_manager.registry["MvlmMagics"]
    if magics.engine is None:
        ip.run_line_magic("mvlm_load", "{export_folder} --precision f32")
    magics.set_engine(magics.engine)  # each test starts a fresh conversation
    ip.user_ns.pop(ANSWER_VARIABLE, None)
    ip.user_ns.update(img=shapes_picture(seed=1), other=shapes_picture(seed=2))
    return magics


def run(ip, capsys, source: str):
    """Run a cell; return (stdout, stderr)."""
    ip.run_cell(source)
    captured = capsys.readouterr()
    return captured.out, captured.err


def assert_one_line_error(ip, capsys, source: str, message: str) -> None:
    out, err = run(ip, capsys, source)
    assert err.strip().startswith("UsageError: ") and message in err, err
    assert "Traceback" not in err + out and len(err.strip().splitlines()) == 1, err


# --- loading the extension ------------------------------------------------------------------------


def test_load_ext_is_light_idempotent_and_unloads_cleanly(tmp_path):
    code = textwrap.dedent("""
        import sys
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config
        config = Config()
        config.HistoryManager.enabled = False
        config.MvlmMagics.device = "AUTO"                      # as ipython_config.py would set it
        ip = InteractiveShell.instance(config=config)
        ip.run_line_magic("load_ext", "mvlm_magic")
        heavy = [m for m in sys.modules if m.split(".")[0] in ("torch", "openvino", "transformers", "nncf")]
        assert not heavy, heavy
        magics = ip.magics_manager.registry["MvlmMagics"]
        assert magics.device == "AUTO"
        ip.run_line_magic("load_ext", "mvlm_magic")             # harmless: "already loaded"
        ip.run_line_magic("reload_ext", "mvlm_magic")
        assert ip.magics_manager.registry["MvlmMagics"] is not magics
        assert sum(type(c).__name__ == "MvlmMagics" for c in ip.configurables) == 1
        assert "mvlm_ask" in ip.magics_manager.magics["cell"]
        ip.run_line_magic("unload_ext", "mvlm_magic")
        assert "mvlm_ask" not in ip.magics_manager.magics["cell"]
        assert "mvlm_load" not in ip.magics_manager.magics["line"]
        assert not any(type(c).__name__ == "MvlmMagics" for c in ip.configurables)
        png = ip.display_formatter.formatters["image/png"]
        assert "PIL.Image.Image" not in png, "the display hook is still installed"
        ip.run_line_magic("load_ext", "mvlm_magic")
        assert "mvlm_ask" in ip.magics_manager.magics["cell"]
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "IPYTHONDIR": str(tmp_path)})
    assert run.stdout.strip().endswith("ok"), run.stdout + run.stderr
    assert "already loaded" in run.stdout


def test_config_lists_the_settings_and_they_apply(ip, magics, capsys):
    out, _ = run(ip, capsys, "%config MvlmMagics")
    for trait in ("cache_dir", "default_model", "device", "compression", "max_new_tokens", "temperature", "top_p",
                  "update_rate", "blocking", "prepare_pictures"):
        assert f"MvlmMagics.{trait}" in out
    ip.run_line_magic("config", "MvlmMagics.max_new_tokens = 5")
    try:
        run(ip, capsys, "%%mvlm_ask img\nWhat is this?")
        assert len(ip.user_ns[ANSWER_VARIABLE].token_ids) == 5
    finally:
        ip.run_line_magic("config", "MvlmMagics.max_new_tokens = 256")


def test_compression_setting_takes_labels_and_rejects_nonsense(magics):
    magics.compression = "int4-sym-g128-r1"
    try:
        with pytest.raises(TraitError, match="cannot read compression 'int4-x'"):
            magics.compression = "int4-x"
        assert magics.compression == "int4-sym-g128-r1"
    finally:
        magics.compression = "int4"


def test_help_text_covers_every_option(ip, capsys):
    load_help = ip.find_line_magic("mvlm_load").__doc__
    for option in ("--device", "--compression", "--group-size", "--ratio", "--list", "--delete", "model"):
        assert option in load_help
    ask_help = ip.find_cell_magic("mvlm_ask").__doc__
    for option in ("--max-new-tokens", "--temperature", "--top-p", "--top-k", "--seed", "--new", "--blocking",
                   "image", "_mvlm_answer", "{name}"):
        assert option in ask_help
    out, _ = run(ip, capsys, "%mvlm_load?")
    assert "--group-size" in out
    out, _ = run(ip, capsys, "%%mvlm_ask?")
    assert "--max-new-tokens" in out and "%%mvlm_ask [--each-line]" in out  # a cell magic's usage line


def test_misused_magics_get_our_one_line_help_not_the_inspector(ip, magics, capsys):
    # One %, ending in `?`: IPython would look up `flower` in its object inspector.
    out, err = run(ip, capsys, "%mvlm_ask What colour is the flower?")
    assert "Object `flower` not found" not in out + err and "is a cell magic" in err, out + err
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1
    # An empty cell: IPython would suggest the line magic, which is wrong here.
    for cell in ("%%mvlm_ask", "%%mvlm_ask img\n\n"):
        out, err = run(ip, capsys, cell)
        assert "write it on the lines below %%mvlm_ask" in err and "Did you mean" not in err, err
    out, _ = run(ip, capsys, "%mvlm_ask?")  # the name alone is still help
    assert "--max-new-tokens" in out


# --- %mvlm_load -----------------------------------------------------------------------------------


def test_load_says_a_cached_export_was_only_compiled_and_lists_the_cache(ip, magics, capsys, monkeypatch):
    out, err = run(ip, capsys, "%mvlm_load {export_folder} --precision f32")
    assert "cached export, compiled only" in out and "[compile 100%]" in out, out + err
    assert out.count(" is ready in ") == 1, out  # one "ready" line
    assert magics.engine is not None and magics.session is None
    out, _ = run(ip, capsys, "%mvlm_load --list")
    key = ip.user_ns["export_folder"].rsplit("/", 1)[-1]
    assert key in out and "MB" in out and "fp32" in out
    display = DisplayRecorder()  # in a notebook: a table (its long cells would wrap as text), the text beside it
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.DISPLAY)
    monkeypatch.setattr(load, "display", display)
    run(ip, capsys, "%mvlm_load --list")
    [shown] = display.shown
    assert shown["text/plain"] == out.rstrip("\n"), shown
    rows = [line for line in shown["text/markdown"].splitlines() if line.startswith("| ")]
    assert rows[0] == "| export | model | weights | operations here | size |"
    assert any(text_markdown(key) in row for row in rows[1:]), rows


def test_delete_removes_a_cached_export(ip, magics, capsys, tmp_path, cache_dir):
    import shutil

    copy = tmp_path / "cache" / "copy--fp32--0"
    shutil.copytree(ip.user_ns["export_folder"], copy)
    ip.run_line_magic("config", f"MvlmMagics.cache_dir = {str(tmp_path / 'cache')!r}")
    try:
        out, _ = run(ip, capsys, "%mvlm_load --list")
        assert copy.name in out
        out, _ = run(ip, capsys, f"%mvlm_load --delete {copy.name}")
        assert "deleted" in out and not copy.exists()
        assert_one_line_error(ip, capsys, f"%mvlm_load --delete {copy.name}", "no cached export")
    finally:
        ip.run_line_magic("config", f"MvlmMagics.cache_dir = {str(cache_dir)!r}")


def test_load_without_a_model_and_without_a_bundled_one_says_so(ip, magics, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("mvlm_magic.demo.BUNDLED_DIR", tmp_path / "no-bundled-model")
    assert_one_line_error(ip, capsys, "%mvlm_load", "no bundled model")
    assert_one_line_error(ip, capsys, "%mvlm_load /no/such/folder", "")
    assert_one_line_error(ip, capsys, "%mvlm_load {export_folder} --device NOPE", "unknown device")


def test_load_alone_in_a_widget_front_end_shows_the_panel(ip, magics, capsys, monkeypatch):
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.WIDGET)
    engine = magics.engine
    run(ip, capsys, "%mvlm_load")
    panel = magics.panel
    assert panel is not None and magics.engine is engine  # nothing loaded until Load is clicked
    assert panel.model.value == "nano"  # the bundled model by its name, not its folder
    panel.model.value = ip.user_ns["export_folder"]
    panel.loader_options["precision"] = "f32"
    panel.load_button.click()
    assert panel.wait(timeout=120) is not None and not panel.error_message
    assert magics.engine is panel.engine and "cached export" in panel.message.value


def test_load_with_a_model_in_a_widget_front_end_shows_progress_without_controls(ip, magics, capsys, monkeypatch):
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.WIDGET)
    shown = DisplayRecorder()
    monkeypatch.setattr(load, "display", shown)
    out, _ = run(ip, capsys, "%mvlm_load {export_folder} --precision f32")
    panel = magics.panel
    assert magics.engine is panel.engine and panel.children[0].layout.display == "none"
    # the panel gives way to its "ready" line, which a saved notebook keeps without the kernel (no widget)
    assert shown.shown == [panel] and shown.updates == [{"text/plain": f"✓ {panel.ready}",
                                                         "text/markdown": text_markdown(f"✓ {panel.ready}")}]
    assert panel.bars["compile"].bar.value == 1.0 and panel.bars["compile"].elapsed.value.endswith(" s")
    assert "is ready in" in panel.message.value and "cached export, compiled only" in panel.message.value
    assert "is ready" not in out  # the panel's line is the one "ready" line


def test_load_alone_uses_the_configured_default_model_where_no_panel_can_be_used(ip, magics, capsys):
    ip.run_line_magic("config", f"MvlmMagics.default_model = {ip.user_ns['export_folder']!r}")
    try:
        engine = magics.engine
        out, err = run(ip, capsys, "%mvlm_load")
        assert not err and "is ready" in out and magics.engine is not engine
    finally:
        ip.run_line_magic("config", "MvlmMagics.default_model = ''")


# --- %%mvlm_ask: errors ---------------------------------------------------------------------------


def test_ask_errors_are_one_line(ip, magics, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    ip.user_ns.update(number=3, notes=str(tmp_path / "notes.txt"))
    engine = magics.engine
    magics.engine = None
    try:
        assert_one_line_error(ip, capsys, "%%mvlm_ask img\nWhat is this?", "no model loaded")
    finally:
        magics.engine = engine
    magics.last_image.image = None
    assert_one_line_error(ip, capsys, "%%mvlm_ask\nWhat is this?", "no image displayed yet")
    assert_one_line_error(ip, capsys, "%%mvlm_ask nothing_here\nWhat is this?", "unknown variable 'nothing_here'")
    assert_one_line_error(ip, capsys, "%%mvlm_ask number\nWhat is this?", "not a picture")
    assert_one_line_error(ip, capsys, "%%mvlm_ask notes\nWhat is this?", "not a readable picture")
    assert_one_line_error(ip, capsys, f"%%mvlm_ask {tmp_path}/missing.png\nWhat is this?", "does not exist")
    assert_one_line_error(ip, capsys, "%%mvlm_ask img\n   \n", "the question is empty")
    assert_one_line_error(ip, capsys, "%mvlm_ask img", "is a cell magic")
    assert_one_line_error(ip, capsys, "%%mvlm_ask img --temperature -1\nWhat?", "temperature must be >= 0")
    assert_one_line_error(ip, capsys, "%%mvlm_ask img --max-new-tokens many\nWhat?", "invalid int value")
    assert ANSWER_VARIABLE not in ip.user_ns


# --- %%mvlm_ask: pictures, answers, conversations -------------------------------------------------


def test_ask_about_the_last_displayed_image(ip, magics, capsys):
    run(ip, capsys, "from IPython.display import display\ndisplay(img)")
    assert magics.last_image.image is ip.user_ns["img"]
    out, err = run(ip, capsys, "%%mvlm_ask --max-new-tokens 6\nWhat is this?")
    answer = ip.user_ns[ANSWER_VARIABLE]
    assert not err and answer.question == "What is this?" and len(answer.token_ids) == 6
    assert answer.text in out and "tokens/s" in out and "max tokens reached" in out
    run(ip, capsys, "other")  # a cell's value is displayed too
    assert magics.last_image.image is ip.user_ns["other"]


def test_a_displayed_picture_is_prepared_before_its_question(ip, magics, capsys):
    engine = magics.engine
    engine.forget_pictures()
    ip.user_ns["shown"] = shapes_picture(seed=40)
    run(ip, capsys, "shown")  # the cell's value is displayed: its picture is made ready in the background
    preparation = engine.preparing
    assert preparation.image is ip.user_ns["shown"] and preparation.wait(60) and preparation.prefix
    out, err = run(ip, capsys, "%%mvlm_ask --max-new-tokens 4\nWhat is this?")
    timings = ip.user_ns[ANSWER_VARIABLE].timings
    assert not err and timings.picture_ready and timings.image_encode_ms == 0 and "picture prepared" in out
    assert timings.prefill_tokens < 144  # the question, not the picture

    ip.run_line_magic("config", "MvlmMagics.prepare_pictures = False")
    try:
        ip.user_ns["unprepared"] = shapes_picture(seed=41)
        latest = engine.preparing
        run(ip, capsys, "unprepared")
        assert engine.preparing is latest  # nothing started
        run(ip, capsys, "%%mvlm_ask --max-new-tokens 4\nWhat is this?")
        assert not ip.user_ns[ANSWER_VARIABLE].timings.picture_ready
    finally:
        ip.run_line_magic("config", "MvlmMagics.prepare_pictures = True")


@pytest.mark.parametrize("kind", ["pil", "array", "grey_array", "path", "bytes", "file"])
def test_ask_about_a_variable_or_a_file(ip, magics, capsys, tmp_path, kind):
    picture = ip.user_ns["img"]
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    picture.save(tmp_path / "picture.png")
    values = {"pil": picture, "array": np.asarray(picture), "grey_array": np.asarray(picture.convert("L")),
              "path": str(tmp_path / "picture.png"), "bytes": buffer.getvalue()}
    line = str(tmp_path / "picture.png") if kind == "file" else "value"
    ip.user_ns["value"] = values.get(kind)
    out, err = run(ip, capsys, f"%%mvlm_ask {line} --max-new-tokens 4\nWhat is this?")
    assert not err, err
    assert len(ip.user_ns[ANSWER_VARIABLE].token_ids) == 4
    assert magics.session.image.size == picture.size


def test_follow_ups_continue_and_new_pictures_or_new_start_over(ip, magics, capsys):
    run(ip, capsys, "%%mvlm_ask img --max-new-tokens 4\nWhat is this?")
    first = magics.session
    run(ip, capsys, "import numpy as np\nsame = np.asarray(img)")
    run(ip, capsys, "%%mvlm_ask same --max-new-tokens 4\nAnd then?")  # the same pixels as another object
    assert magics.session is first and len(first.history) == 2
    assert [q for q, _ in first.history] == ["What is this?", "And then?"]

    run(ip, capsys, "%%mvlm_ask img --max-new-tokens 4 --new\nWhat is this?")
    assert magics.session is not first and len(magics.session.history) == 1
    second = magics.session
    run(ip, capsys, "%%mvlm_ask other --max-new-tokens 4\nWhat is this?")
    assert magics.session is not second and len(magics.session.history) == 1

    out, _ = run(ip, capsys, "%mvlm_reset")
    assert "conversation cleared" in out and magics.session is None
    run(ip, capsys, "%%mvlm_ask other --max-new-tokens 4\nWhat is this?")
    assert len(magics.session.history) == 1


def test_question_expands_names_from_the_namespace(ip, magics, capsys):
    ip.user_ns["thing"] = "the circle"
    run(ip, capsys, "%%mvlm_ask img --max-new-tokens 2\nWhat colour is {thing}? Not {unknown}, {{literal}}.")
    assert ip.user_ns[ANSWER_VARIABLE].question == "What colour is the circle? Not {unknown}, {literal}."


def test_sampling_options_reach_the_engine(ip, magics, capsys):
    cell = "%%mvlm_ask img --max-new-tokens 8 --temperature 0.9 --top-p 0.8 --top-k 5 --seed 3 --new\nWhat?"
    run(ip, capsys, cell)
    first = ip.user_ns[ANSWER_VARIABLE].token_ids
    run(ip, capsys, cell)
    assert ip.user_ns[ANSWER_VARIABLE].token_ids == first  # seeded sampling repeats


def test_show_tokens_prints_each_token_with_its_probability_and_keeps_them(ip, magics, capsys):
    out, err = run(ip, capsys, "%%mvlm_ask img --max-new-tokens 5 --show-tokens\nWhat is this?")
    answer = ip.user_ns[ANSWER_VARIABLE]
    assert not err and len(answer.tokens) == len(answer.token_ids) == 5
    table = out.strip().splitlines()[-5:]  # one line per token after the stats line
    for line, token in zip(table, answer.tokens):
        assert f"{token.probability:.2f}  [" in line and " | " in line, line
    assert len(answer.tokens[0].alternatives) == 5  # answer.tokens[0].alternatives, for exercises


# --- %%mvlm_ask in front ends with widgets --------------------------------------------------------


def test_without_a_widget_front_end_the_widget_runs_blocking_with_a_text_form(ip, magics, capsys, monkeypatch):
    from mvlm_magic.widgets import AnswerView

    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.DISPLAY)
    ip.run_line_magic("config", "MvlmMagics.font_scale = 1.5")  # a presentation size for the answer text
    try:
        out, err = run(ip, capsys, "%%mvlm_ask img --max-new-tokens 6\nWhat is this?")
    finally:
        ip.run_line_magic("config", "MvlmMagics.font_scale = 1.0")
    view = magics.view
    assert isinstance(view, AnswerView) and view.done.is_set() and not err
    assert view.font_scale == 1.5 and "var(--jp-content-font-size1,14px) * 1.5)" in view.answer_box.value
    answer = ip.user_ns[ANSWER_VARIABLE]
    assert view.answer is answer and view.text == answer.text
    assert view.thumbnail.value and "tokens/s" in view.stats.value
    assert answer.text in view.plain_text() and "tokens/s" in view.plain_text()


def test_show_tokens_tints_the_finished_answer_in_the_widget_and_its_saved_copy(ip, magics, capsys, monkeypatch):
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.DISPLAY)
    run(ip, capsys, "%%mvlm_ask img --max-new-tokens 6 --show-tokens\nWhat is this?")
    view, answer = magics.view, ip.user_ns[ANSWER_VARIABLE]
    assert view.show_tokens and len(answer.tokens) == 6
    for html_text in (view.answer_box.value, view.static_copy()["text/markdown"]):
        assert html_text.count("<span title=") == 6 and "background-color:rgba(255,140,0," in html_text
        assert f"p {answer.tokens[0].probability:.2f}" in html_text and "hover a token" in html_text


def test_in_a_widget_front_end_the_answer_streams_in_the_background_and_stop_works(ip, magics, capsys, monkeypatch):
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.WIDGET)
    started = time.monotonic()
    run(ip, capsys, f"%%mvlm_ask img --max-new-tokens {LONG}\nDescribe the picture.")
    assert time.monotonic() - started < 2.0  # the cell returned while the answer streams
    view = magics.view
    deadline = time.monotonic() + 30
    while not view.text and time.monotonic() < deadline:
        time.sleep(0.005)
    assert view.streaming and ANSWER_VARIABLE not in ip.user_ns
    view.stop_button.click()
    answer = view.wait(timeout=30)
    assert answer.finish_reason == "stopped" and len(answer.token_ids) < LONG
    assert ip.user_ns[ANSWER_VARIABLE] is answer


def test_stream_pace_paces_the_widget_where_someone_watches_and_reaches_every_view(ip, magics, capsys, monkeypatch):
    from mvlm_magic.widgets import AnswerView, AskPanel

    ip.run_line_magic("config", "MvlmMagics.stream_pace = 8")  # a teacher's setting: a class reads along
    try:
        assert AnswerView.default_pace == 8 and AskPanel(magics.engine).pace is None  # the panel's views follow it
        monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.WIDGET)
        run(ip, capsys, f"%%mvlm_ask img --new --max-new-tokens {LONG}\nDescribe the picture.")
        view = magics.view
        time.sleep(1.0)
        assert view.pace == 8 and view.streaming and len(view.text) > 0
        started = time.monotonic()
        view.stop_button.click()
        answer = view.wait(timeout=5)
        assert time.monotonic() - started < 0.5 and answer.finish_reason == "stopped"
        assert len(answer.token_ids) <= 8 * 1.0 + 3, len(answer.token_ids)
        monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.DISPLAY)  # no one watches (nbclient)
        run(ip, capsys, "%%mvlm_ask img --max-new-tokens 24\nDescribe the picture.")
        assert magics.view.pace == 0 and magics.view.done.is_set()
    finally:
        ip.run_line_magic("config", "MvlmMagics.stream_pace = 0")
    assert AnswerView.default_pace == 0 and AnswerView().pace == 0


def test_blocking_flag_and_setting_finish_the_answer_before_the_cell_returns(ip, magics, capsys, monkeypatch):
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.WIDGET)
    run(ip, capsys, "%%mvlm_ask img --max-new-tokens 5 --blocking\nWhat is this?")
    assert magics.view.done.is_set() and len(ip.user_ns[ANSWER_VARIABLE].token_ids) == 5
    ip.run_line_magic("config", "MvlmMagics.blocking = True")
    try:
        run(ip, capsys, "%%mvlm_ask img --max-new-tokens 3\nAnd?")
        assert magics.view.done.is_set() and len(ip.user_ns[ANSWER_VARIABLE].token_ids) == 3
    finally:
        ip.run_line_magic("config", "MvlmMagics.blocking = 'auto'")


def test_a_second_ask_waits_its_turn(ip, magics, capsys, monkeypatch):
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.WIDGET)
    run(ip, capsys, f"%%mvlm_ask img --max-new-tokens {LONG}\nDescribe the picture.")
    first = magics.view
    run(ip, capsys, "%%mvlm_ask img --max-new-tokens 4\nAnd then?")
    second = magics.view
    deadline = time.monotonic() + 10
    while "waiting" not in second.stats.value and time.monotonic() < deadline:
        time.sleep(0.005)
    assert "waiting for the answer above" in second.stats.value and not second.text
    first.stop()
    assert second.wait(timeout=30) is not None and first.done.is_set()
    assert len(second.answer.token_ids) == 4
    assert [q for q, _ in magics.session.history] == ["Describe the picture.", "And then?"]  # in order


def start_long_answers(ip, capsys, magics, count: int = 2):
    """A long answer streaming in the background and `count - 1` more waiting their turn behind it."""
    views = []
    for i in range(count):
        run(ip, capsys, f"%%mvlm_ask img --max-new-tokens {LONG}\nDescribe the picture, part {i + 1}.")
        views.append(magics.view)
    deadline = time.monotonic() + 30
    while not views[0].text and time.monotonic() < deadline:
        time.sleep(0.005)
    assert views[0].streaming and not views[0].done.is_set()
    return views


def assert_stopped_and_the_next_answer_is_prompt(ip, capsys, magics, views) -> None:
    assert all(view.done.wait(timeout=2) for view in views)  # stopped within a token, not after LONG of them
    assert [view.answer.finish_reason for view in views] == ["stopped"] * len(views)
    assert len(views[0].answer.token_ids) < LONG and not views[1].answer.token_ids  # the queued one never began
    asked = time.monotonic()
    run(ip, capsys, "%%mvlm_ask img --max-new-tokens 4 --blocking\nWhat is this?")
    assert time.monotonic() - asked < 5 and ip.user_ns[ANSWER_VARIABLE] is magics.view.answer  # no waiting


def test_loading_a_model_stops_the_answers_in_progress_first(ip, magics, capsys, monkeypatch):
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.WIDGET)
    views = start_long_answers(ip, capsys, magics)
    engine = magics.engine
    run(ip, capsys, "%mvlm_load {export_folder} --precision f32")
    assert all(view.done.is_set() for view in views)  # stopped before the load, so it did not compete with them
    assert magics.engine is not engine
    assert_stopped_and_the_next_answer_is_prompt(ip, capsys, magics, views)


def test_pressing_load_in_the_panel_stops_the_answers_in_progress(ip, magics, capsys, monkeypatch):
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.WIDGET)
    run(ip, capsys, "%mvlm_load")
    panel = magics.panel
    panel.model.value = ip.user_ns["export_folder"]
    panel.loader_options["precision"] = "f32"
    views = start_long_answers(ip, capsys, magics)
    panel.load_button.click()
    assert panel.wait(timeout=120) is not None and not panel.error_message and magics.engine is panel.engine
    assert_stopped_and_the_next_answer_is_prompt(ip, capsys, magics, views)
