"""The widgets, driven the way a student drives them: click the buttons, then read the widget state.

The answers come from the real tiny exported model (noise, but real tokens streamed by the real
engine); only the throttling test uses a synthetic stream, to get many chunks at a known pace.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from conftest import shapes_picture
from mvlm_magic.printing import answer_stats
from mvlm_magic.runtime.chat import Timings
from mvlm_magic.runtime.confidence import TokenChoice
from mvlm_magic.widgets import AnswerView, AskPanel, LoadPanel
from mvlm_magic.widgets.ask_panel import HISTORY_THUMBNAIL, SUBMIT
from mvlm_magic.widgets.confidence import tokens_html, tokens_markdown
from mvlm_magic.widgets.messages import text_markdown
from mvlm_magic.widgets.thumbnail import thumbnail_png

LONG = 1500  # more tokens than any test waits for: only Stop (or a bug) ends these answers early


def wait_until(condition, timeout=30.0, step=0.005):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(step)


def png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny(engine):
    return engine("v2", "fp32", "f32")


# --- packaging ------------------------------------------------------------------------------------


def test_installed_as_mvlm_magic_widgets_and_free_of_model_code(tmp_path):
    # A student's own widgets.py next to the notebook must neither shadow nor break the package.
    (tmp_path / "widgets.py").write_text("raise RuntimeError('the student widgets module was imported')\n")
    code = textwrap.dedent("""
        import sys
        import mvlm_magic.widgets as w
        assert w.__name__ == "mvlm_magic.widgets" and "widgets" not in sys.modules
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("openvino", "torch", "transformers", "numpy")
                       or m.startswith(("mvlm_magic.runtime", "mvlm_magic.model", "mvlm_magic.loader")))
        assert not heavy, heavy
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "ok", run.stderr


# --- AnswerView -----------------------------------------------------------------------------------


def test_answer_view_blocking_shows_the_whole_answer_and_stats(tiny, picture):
    view = AnswerView(image=picture, question="What is this?")
    assert view.thumbnail.value and view.thumbnail.layout.display != "none"
    assert 'alt="the picture asked about"' in view.thumbnail.value
    assert view.stop_button.disabled and view.stop_button.layout.display == "none"  # nothing to stop yet
    view.stream(tiny.new_chat(picture).ask("What is this?", max_new_tokens=12), blocking=True)
    assert view.done.is_set() and view.answer is not None
    assert view.text == view.answer.text and len(view.answer.token_ids) == 12
    assert view.answer.timings.summary() in view.stats.value
    assert "tokens/s" in view.stats.value and "max tokens reached" in view.stats.value
    assert view.stop_button.disabled and view.stop_button.layout.display == "none"  # gone once the answer ended
    assert "Q: What is this?" in view._repr_mimebundle_()["text/plain"]
    assert 'aria-live="polite"' in view.answer_box.value  # a screen reader reads the answer as it grows


def test_answer_view_streams_in_a_thread_and_stop_really_stops(tiny, picture):
    view = AnswerView(image=picture)
    stream = tiny.new_chat(picture).ask("Describe the picture.", max_new_tokens=LONG)
    started = time.monotonic()
    assert view.stream(stream) is view
    assert time.monotonic() - started < 1.0  # returned at once; generation goes on in the background
    wait_until(lambda: view.text)  # the first chunk has arrived
    assert view.streaming and not view.stop_button.disabled and view.stop_button.layout.display != "none"
    view.stop_button.click()
    answer = view.wait(timeout=30)
    assert answer is not None and answer.finish_reason == "stopped"
    assert 0 < len(answer.token_ids) < LONG
    assert view.text == answer.text
    assert "stopped" in view.stats.value and view.stop_button.disabled and not view.error
    assert view.stop_button.layout.display == "none"


def test_stop_and_the_status_sit_above_the_answer_so_they_never_move():
    view = AnswerView(question="q")
    body = view.children[1]
    controls = next(child for child in body.children if view.stop_button in getattr(child, "children", ()))
    assert view.stats in controls.children
    assert body.children.index(controls) < body.children.index(view.answer_box)  # the text grows below them


def test_font_scale_enlarges_the_answer_text():
    normal, large = AnswerView(), AnswerView(font_scale=1.5)
    for view in (normal, large):
        view.stream(FastStream(chunks=3), blocking=True)
    assert "var(--jp-content-font-size1,14px) * 1)" in normal.answer_box.value  # the notebook's own text size
    assert "var(--jp-content-font-size1,14px) * 1.5)" in large.answer_box.value
    assert "font-size:150%" in large.static_copy()["text/markdown"]


@dataclass
class FakeAnswer:
    question: str
    text: str
    finish_reason: str
    timings: Timings = field(default_factory=Timings)


class FastStream:
    """Many tiny chunks at a steady pace: the widget must not forward every one."""

    def __init__(self, chunks=2000, pause=0.0005):
        self.chunks, self.pause, self.stopped, self.sent = chunks, pause, threading.Event(), ""

    def __iter__(self):
        for i in range(self.chunks):
            if self.stopped.is_set():
                return
            time.sleep(self.pause)
            self.sent += f"{i % 10}"
            yield f"{i % 10}"

    def stop(self):
        self.stopped.set()

    def result(self):
        return FakeAnswer("q", self.sent, "stopped" if self.stopped.is_set() else "max_new_tokens")


def test_answer_view_throttles_updates_and_the_final_text_lands():
    view = AnswerView(rate=25)
    values = []
    view.answer_box.observe(lambda change: values.append(change["new"]), names="value")
    stream = FastStream()
    started = time.monotonic()
    view.stream(stream, blocking=True)
    elapsed = time.monotonic() - started
    assert len(stream.sent) == 2000
    assert 2 <= len(values) <= 25 * elapsed + 2, (len(values), elapsed)  # ~25/s plus the final one
    assert view.text == stream.sent and stream.sent in values[-1]


def test_answer_view_shows_errors_as_one_line():
    class Broken(FastStream):
        def __iter__(self):
            yield "partial "
            raise RuntimeError("the device went away\nwith a long second line")

    view = AnswerView()
    view.stream(Broken())
    view.wait(timeout=10)
    assert view.error == "RuntimeError: the device went away"
    assert "second line" not in view.stats.value and view.text == "partial "
    with pytest.raises(RuntimeError):
        AnswerView().stream(Broken(), blocking=True)  # blocking mode also raises, for the caller to report
    assert rendered_text(view.static_copy()["text/markdown"]).endswith("⚠ RuntimeError: the device went away")
    assert "var(--jp-error-color1" in view.stats.value  # the theme's error colour, readable on dark and light


# --- the static copy a saved notebook keeps -----------------------------------------------------------


class Handle:
    """A display handle's plumbing (the real one is tested in a kernel: tests/test_jupyter_kernel.py)."""

    def __init__(self):
        self.updates = []

    def update(self, obj, **kwargs):
        self.updates.append((obj, kwargs))


def rendered_text(markdown: str, between: str = "\n") -> str:
    """What a reader sees: the Markdown rendered by nbconvert's renderer (mistune), as text (`between`: what
    joins the text of two elements)."""
    from bs4 import BeautifulSoup
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    return BeautifulSoup(markdown2html_mistune(markdown), "html.parser").get_text(between).strip()


def test_the_answer_ends_as_a_static_copy_of_markdown_text_and_thumbnail(tiny, picture):
    handle = Handle()
    view = AnswerView(image=picture, question="What is this?")
    view.stream(tiny.new_chat(picture).ask("What is this?", max_new_tokens=6), display_handle=handle)
    assert view.wait(timeout=60) is not None
    assert len(handle.updates) == 1  # no per-token display updates where a widget renders
    bundle, options = handle.updates[0]
    assert options == {"raw": True} and set(bundle) == {"text/markdown", "text/plain", "image/png"}
    assert base64.b64decode(bundle["image/png"]) == view.png
    stats = answer_stats(view.answer)
    assert bundle["text/plain"] == f"Q: What is this?\n{view.text}\n[{stats}]"
    markdown = bundle["text/markdown"]
    assert 'alt="the picture asked about"' in markdown and markdown.count("base64,") == 1
    assert text_markdown(view.text) in markdown and f"*{text_markdown(stats)}*" in markdown


def test_text_updates_send_each_refresh_for_clients_without_widgets():
    handle = Handle()
    view = AnswerView(rate=0)  # every chunk is a refresh
    view.stream(FastStream(chunks=5), blocking=True, display_handle=handle, text_updates=True)
    widget = "application/vnd.jupyter.widget-view+json"
    # 5 chunks, the final text (the widget with its text form), then the copy
    assert [widget in bundle for bundle, _ in handle.updates] == [True] * 6 + [False]
    assert all(options == {"raw": True} for _, options in handle.updates)
    assert handle.updates[2][0]["text/plain"] == "012" and "01234" in handle.updates[-1][0]["text/markdown"]


class Published:
    """IPython's display publisher, recorded: each display and update with its display id."""

    def __init__(self, shell):
        self.shell, self.messages = shell, []

    def __enter__(self):
        self.publish, self.shell.display_pub.publish = self.shell.display_pub.publish, self.record
        return self.messages

    def __exit__(self, *exc):
        self.shell.display_pub.publish = self.publish

    def record(self, data, metadata=None, transient=None, update=False, **kwargs):
        self.messages.append(("update" if update else "display", (transient or {}).get("display_id"), data))


def test_a_view_displayed_from_python_ends_as_its_static_copy_whoever_displayed_it(tiny, picture):
    """display(view), or the view as a cell's last line, not only the magics: the view shows itself under a display
    id of its own, so its output becomes the static copy when the answer ends (issue 14: "Loading widget...")."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display

    shell = InteractiveShell.instance()
    widget = "application/vnd.jupyter.widget-view+json"
    with Published(shell) as messages:
        view = AnswerView(image=picture)
        display(view)
        shell.displayhook(view)  # the same view as a cell's last line: a second output with the same id
        view.stream(tiny.new_chat(picture).ask("What is this?", max_new_tokens=6))
        assert view.wait(timeout=60) is not None
        shell.displayhook(view)  # displayed again after its end: the static copy at once
    (kind1, id1, shown1), (kind2, id2, shown2), (kind3, id3, copy), (kind4, _, late) = messages
    assert (kind1, kind2, kind3, kind4) == ("display", "display", "update", "display"), messages
    assert id1 and id1 == id2 == id3 and widget in shown1 and widget in shown2
    assert set(copy) == {"text/markdown", "text/plain", "image/png"} and late == copy
    assert text_markdown(view.text) in copy["text/markdown"] and view.text in copy["text/plain"]
    assert AnswerView()._repr_mimebundle_()[widget]  # inside a box it is a widget as before


# --- pacing: a class can read along and press Stop ----------------------------------------------------


def test_a_paced_view_shows_at_most_pace_tokens_a_second_and_stop_ends_the_wait_at_once():
    stream = FastStream(chunks=LONG, pause=0)  # a model far faster than anyone reads
    view = AnswerView(pace=20, rate=0)
    started = time.monotonic()
    view.stream(stream)
    time.sleep(0.5)
    shown = len(view.text)
    assert 5 <= shown <= 12, shown  # ~10 in 0.5 s at 20 a second (the first at once)
    slow = AnswerView(pace=0.5)  # one token every 2 s: Stop lands in the middle of a wait
    slow.stream(FastStream(chunks=LONG, pause=0))
    wait_until(lambda: slow.text)
    time.sleep(0.2)
    stopped = time.monotonic()
    slow.stop()
    view.stop()
    assert slow.wait(timeout=5) is not None and view.wait(timeout=5) is not None
    assert time.monotonic() - stopped < 0.3  # not the rest of the 2 s wait
    assert slow.answer.finish_reason == view.answer.finish_reason == "stopped" and len(slow.text) <= 2
    assert len(view.text) <= 20 * (time.monotonic() - started) + 2 and not slow.streaming


class TimedStream(FastStream):
    """Times its answer as the engine does: decode time is the wall time from the first chunk to the end."""

    def __iter__(self):
        started = time.monotonic()
        yield from super().__iter__()
        self.decode_ms = (time.monotonic() - started) * 1000

    def result(self):
        answer = super().result()
        answer.timings.new_tokens, answer.timings.decode_ms = len(self.sent), self.decode_ms
        return answer


def test_the_time_a_pace_holds_back_is_not_counted_as_the_models():
    stream = TimedStream(chunks=6, pause=0.001)
    view = AnswerView(pace=20)  # 6 chunks: 5 waits of 50 ms
    view.stream(stream, blocking=True)
    assert view.text == "012345" and view.answer.timings.new_tokens == 6
    assert stream.decode_ms >= 250 and view.answer.timings.decode_ms < 150, (stream.decode_ms, view.answer.timings)


def test_the_default_pace_reaches_views_made_without_one_as_the_ask_panels(tiny, picture, monkeypatch):
    monkeypatch.setattr(AnswerView, "default_pace", 8.0)
    assert AnswerView().pace == 8.0 and AnswerView(pace=0).pace == 0.0
    panel = AskPanel(tiny, image=picture, max_new_tokens=LONG)
    view = panel.ask("What is this?")
    assert view.pace == 8.0
    wait_until(lambda: len(view.text) > 0)
    time.sleep(0.5)
    assert view.streaming and len(view.answer_box.value) > 0  # 8 tokens a second: still going after 0.5 s
    panel.stop_button.click()
    assert view.wait(timeout=5) is not None and view.answer.finish_reason == "stopped"
    assert view.answer.timings.new_tokens <= 8 * 1.5, view.answer.timings.new_tokens
    assert AskPanel(tiny, pace=3).pace == 3


@pytest.mark.parametrize("text", [
    "*bold* _it_ `code` [link](http://x) <b>tag</b> &amp; $x^2$ \\ | a | b |",
    "# heading\n1. item\n- item\n> quote\n    four spaces\n\n\nthree lines later ~~struck~~",
])
def test_answer_text_renders_verbatim_as_markdown(text):
    seen = rendered_text(text_markdown(text))
    assert seen.split("\n") == [line.replace(" " * 4, "\u00a0" * 4) for line in text.split("\n") if line]


def test_tinted_tokens_read_as_the_answer_and_wrap_between_words():
    # `--show-tokens`: each token a span; its leading space a plain one (where the line may wrap), not a no-break
    # space (the saved answer was once one line running past the cell's edge); an indent after a line break kept
    tokens = [TokenChoice(i, text, 0.9) for i, text in enumerate([" A", " small", " *star*.", "\n", "  x", " y"])]
    markdown, live = tokens_markdown(tokens), tokens_html(tokens)
    # verbatim, with no leading space (the answer's text is stripped); the line break a <br>, which has no text
    assert rendered_text(markdown, between="") == "A small *star*.\u00a0\u00a0x y"
    assert "\u00a0" not in markdown.split("<br>")[0] and markdown.count("<span title=") == 6
    assert ">A</span>" in live and "> small</span>" in live  # the live box keeps spaces (pre-wrap) and wraps


def test_a_second_view_waits_its_turn_visibly():
    turn = threading.Lock()
    first, second = AnswerView(), AnswerView()
    slow = FastStream(chunks=400, pause=0.002)
    first.stream(slow, lock=turn)
    wait_until(lambda: first.text)
    second.stream(FastStream(chunks=5), lock=turn)
    wait_until(lambda: "waiting" in second.stats.value, timeout=5)
    assert not second.text  # nothing interleaves while the first answer runs
    first.stop()
    assert second.wait(timeout=10) is not None and second.text == "01234"


# --- LoadPanel ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_load_panel_exports_compiles_and_fills_each_stage(checkpoint, tmp_path):
    from mvlm_magic.loader import load_engine

    loaded = []
    panel = LoadPanel(load_engine, models=["mobilevlm-v2-1.7b"], default_model=str(checkpoint("v2")),
                      devices=["CPU", "AUTO"], loader_options={"cache_dir": tmp_path, "precision": "f32"})
    panel.on_loaded.append(loaded.append)
    panel.compression.value = "int8"
    panel.load_button.click()
    assert panel.loading and panel.load_button.disabled
    engine = panel.wait(timeout=240)
    assert engine is not None and loaded == [engine] and not panel.error_message
    for stage in ("convert", "compress", "compile"):
        assert panel.bars[stage].bar.value == 1.0 and panel.bars[stage].bar.bar_style == "success"
        assert panel.bars[stage].elapsed.value.endswith(" s")
    assert panel.bars["download"].elapsed.value == "not needed"  # a local folder
    assert "ready" in panel.message.value and "cached" not in panel.message.value
    assert not panel.load_button.disabled

    panel.load_button.click()  # the same model again: the export is reused, only compiled
    assert panel.wait(timeout=120) is not None
    assert "cached export, compiled only" in panel.message.value
    assert panel.bars["convert"].elapsed.value == "not needed"


def test_load_panel_shows_errors_as_one_line(tmp_path):
    from mvlm_magic.loader import load_engine

    panel = LoadPanel(load_engine, models=[], default_model=str(tmp_path / "no-such-model"), devices=["CPU"],
                      loader_options={"cache_dir": tmp_path})
    panel.load_button.click()
    assert panel.wait(timeout=60) is None
    assert panel.error_message and "\n" not in panel.error_message and "Traceback" not in panel.error.value
    assert not panel.load_button.disabled

    def exploding(model, **options):
        options["progress"]("compile", None, "compiling")
        raise RuntimeError("Exception from src/inference/src/core.cpp:100:\n[ GENERAL_ERROR ] details")

    panel = LoadPanel(exploding, models=[], default_model="x", devices=["CPU"])
    panel.load_button.click()
    panel.wait(timeout=10)
    assert panel.error_message == "RuntimeError: Exception from src/inference/src/core.cpp:100:"
    assert panel.bars["compile"].bar.bar_style == "danger"

    empty = LoadPanel(exploding, models=[], default_model="", devices=["CPU"])
    empty.load_button.click()
    assert "choose a model" in empty.error_message


# --- AskPanel -------------------------------------------------------------------------------------


def test_ask_panel_asks_follows_up_and_clears(tiny, picture):
    namespace = {"img": picture, "n": 3, "text": "not a picture"}
    panel = AskPanel(tiny, namespace, max_new_tokens=8)
    assert [value for _, value in panel.variable.options] == ["", "img"]
    panel.ask_button.click()
    assert "choose a picture first" in panel.error_message and not panel.history.children

    panel.variable.value = "img"
    assert panel.image is picture and panel.preview.value
    assert tiny.preparing.image is picture  # picked: made ready in the background before the question
    panel.ask_button.click()
    assert "question is empty" in panel.error_message

    panel.question.value = "What is this?"
    panel.ask_button.click()
    assert panel.question.value == "" and not panel.error_message
    first = panel.view
    assert first.wait(timeout=30) is not None and first.text == first.answer.text
    wait_until(lambda: not panel.ask_button.disabled, timeout=5)
    assert panel.answer is first.answer and len(panel.history.children) == 1

    panel.question.value = "And what else?"
    panel.ask_button.click()
    panel.view.wait(timeout=30)
    assert len(panel.session.history) == 2  # the follow-up continued the conversation
    assert [child.question for child in panel.history.children] == ["What is this?", "And what else?"]

    panel.clear_button.click()
    assert panel.session is None and not panel.history.children and panel.image is picture
    panel.question.value = "Again?"
    panel.ask_button.click()
    panel.view.wait(timeout=30)
    assert len(panel.session.history) == 1


def test_the_panel_offers_pictures_that_look_like_pictures_and_the_magic_passes_on_every_kind(picture, tmp_path):
    import numpy as np
    from PIL import Image

    from mvlm_magic.pictures import is_picture

    picture.save(tmp_path / "shapes.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    namespace = {"img": picture, "grey": np.zeros((4, 5), np.uint8), "rgb": np.zeros((4, 5, 3), np.uint8),
                 "data": png_bytes(picture), "path": str(tmp_path / "shapes.png"), "line": np.zeros(5),
                 "notes": str(tmp_path / "notes.txt"), "missing": str(tmp_path / "gone.png"), "text": "a question",
                 "n": 3, "ndarray": np.ndarray, "Image": Image.Image}
    panel = AskPanel(None, namespace)
    assert [value for _, value in panel.variable.options] == ["", "data", "grey", "img", "path", "rgb"]
    # %%mvlm_ask hands every value of a picture's kind to the loader, whose message says what is wrong with it.
    assert [name for name, value in namespace.items() if is_picture(value)] == [
        "img", "grey", "rgb", "data", "path", "line", "notes", "missing", "text"]


def test_ask_panel_stop_button_stops(tiny, picture):
    panel = AskPanel(tiny, image=picture, max_new_tokens=LONG)
    panel.question.value = "Describe it."
    assert panel.stop_button.layout.display == "none"  # nothing to stop yet
    panel.ask_button.click()
    assert panel.ask_button.disabled and not panel.stop_button.disabled
    # Stop stands in Ask's place while the answer streams: one of them shows at a time.
    assert panel.ask_button.layout.display == "none" and panel.stop_button.layout.display is None
    wait_until(lambda: panel.view.text)
    panel.stop_button.click()
    answer = panel.view.wait(timeout=30)
    assert answer.finish_reason == "stopped" and len(answer.token_ids) < LONG
    wait_until(lambda: not panel.ask_button.disabled, timeout=5)
    assert panel.stop_button.disabled and panel.stop_button.layout.display == "none"  # gone, not a pale button
    assert panel.ask_button.layout.display is None


def test_ask_panel_upload_and_errors(tiny, picture):
    tiny.forget_pictures()
    panel = AskPanel(tiny, max_new_tokens=4, blocking=True)
    assert panel.variable.layout.display == "none"  # no namespace: only uploads
    upload = {"name": "notes.txt", "type": "text/plain", "size": 5, "content": memoryview(b"hello"),
              "last_modified": datetime.now(timezone.utc)}
    panel.upload.value = (upload,)
    assert "cannot read notes.txt as a picture" in panel.error_message and panel.image is None

    data = png_bytes(picture)
    panel.upload.value = ({**upload, "name": "shapes.png", "type": "image/png", "size": len(data),
                           "content": memoryview(data)},)
    assert panel.image is not None and panel.image.size == picture.size and not panel.error_message
    assert "shapes.png" in panel.picture_note.value
    preparation = tiny.preparing  # an uploaded picture is made ready while the student types (issue 18 §1)
    assert preparation.image is panel.image and preparation.wait(60) and preparation.prefix
    panel.question.value = "What is this?"
    view = panel.ask()
    assert view.done.is_set() and len(view.answer.token_ids) == 4  # blocking: finished on return
    timings = view.answer.timings
    assert timings.picture_ready and timings.image_encode_ms == 0 and timings.prefill_tokens < 144

    nothing_loaded = AskPanel(None, image=picture)
    nothing_loaded.question.value = "What is this?"
    nothing_loaded.ask_button.click()
    assert nothing_loaded.error_message.startswith("no model loaded")


def test_enter_asks_and_shift_enter_is_a_new_line(tiny, picture):
    # In the page, Enter appends SUBMIT to the box's text (ENTER_ASKS; tests/test_browser.py presses the keys);
    # Shift+Enter is a plain new line.
    panel = AskPanel(tiny, image=picture, max_new_tokens=4, blocking=True)
    assert "mvlm-question" in panel.question._dom_classes  # what the page's Enter listener looks for
    panel.question.value = "What is this?\nIn one word"
    assert not panel.history.children  # a new line asks nothing
    panel.question.value += SUBMIT
    assert [view.question for view in panel.history.children] == ["What is this?\nIn one word"]
    assert panel.question.value == "" and panel.view.done.is_set()

    no_picture = AskPanel(tiny)
    no_picture.question.value = "What is this?" + SUBMIT
    assert "choose a picture first" in no_picture.error_message
    assert no_picture.question.value == "What is this?"  # kept, without the marker, to ask again


def test_the_question_box_stays_above_a_history_that_scrolls_on_its_own(tiny, picture):
    panel = AskPanel(tiny, image=picture)
    order = list(panel.children)
    # Nothing between the top and the question box changes while an answer streams (tests/test_browser.py
    # measures it); the answers grow below, in a box that scrolls and keeps its end in view.
    assert order.index(panel.question) < order.index(panel.history_box) == len(order) - 1
    assert panel.stop_button in order[order.index(panel.question) + 1].children
    assert panel.history_box.children == (panel.history,)
    assert panel.history_box.layout.overflow == "auto" and panel.history_box.layout.max_height
    assert panel.history_box.layout.flex_flow == "column-reverse"


def test_the_ask_panel_is_displayed_with_a_saved_copy_of_its_conversation(tiny, picture):
    """A saved notebook reopened without its kernel has no panel (a widget needs its kernel): the panel is displayed
    with its static copy beside it, kept up to date by display id; the copy's style hides it beside the live panel
    (tests/test_browser.py reloads the page and reads it)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    widget = "application/vnd.jupyter.widget-view+json"
    other = shapes_picture(background=(200, 200, 200), seed=1)
    with Published(shell) as messages:
        panel = AskPanel(tiny, {"img": picture, "other": other}, image=picture, max_new_tokens=4, blocking=True)
        shell.displayhook(panel)  # the panel as a cell's last line
        before = len(messages)
        first = panel.ask("What is this?")
        panel.variable.value = "other"  # a new conversation
        second = panel.ask("And this?")
    (kind1, id1, live), (kind2, id2, copy) = messages[:before]
    assert (kind1, id1, kind2) == ("display", None, "display") and id2 == panel.saved_copy.id
    assert set(live) == {widget}  # no text form of its own: where no widget renders, the copy is the text
    assert f"mvlm-live-{id2}" in panel._dom_classes and f"mvlm-copy-{id2}" in copy["text/markdown"]
    assert "no question asked yet" in copy["text/plain"] and "<img" in copy["text/markdown"]
    updates = messages[before:]
    assert updates and all(kind == "update" and shown_id == id2 for kind, shown_id, _ in updates), updates
    last = updates[-1][2]
    for view in (first, second):
        assert f"Q: {view.question}" in last["text/plain"] and view.text in last["text/plain"]
        assert text_markdown(view.text) in last["text/markdown"]
    assert "New conversation · new picture (variable other)" in last["text/plain"]
    assert last["text/plain"].index(first.text) < last["text/plain"].index(second.text)
    assert last["text/markdown"].count("<img") == 2  # each answer's own picture
    panel.clear()
    assert "no question asked yet" in panel.static_copy()["text/plain"]


def test_a_new_picture_starts_a_new_conversation_with_its_own_pictures(tiny, picture):
    other = shapes_picture(background=(200, 200, 200), seed=1)
    namespace = {"img": picture, "other": other}
    assert AskPanel().picture_note.value == "<i>no picture yet</i>"
    assert AskPanel(image=picture).picture_note.value == "the given picture"  # no dropdown: the note says where from
    panel = AskPanel(tiny, namespace, image=picture, max_new_tokens=4, blocking=True)
    # The picker names the picture in use, once: the note under it says nothing more.
    assert panel.variable.value == "img" and panel.picture_note.value == ""
    panel.ask("What is this?")
    panel.ask("And what else?")
    first = panel.session
    assert len(first.history) == 2

    panel.variable.value = "other"
    panel.variable.value = "img"
    panel.variable.value = "other"  # picked and picked again before asking: one heading
    assert panel.session is None and panel.image is other
    assert panel.picture_note.value == ""
    headings = [child for child in panel.history.children if not isinstance(child, AnswerView)]
    assert len(headings) == 1 and "New conversation" in headings[0].value and "<code>other</code>" in headings[0].value
    panel.ask("What is this?")
    assert panel.session is not first and len(panel.session.history) == 1  # a new chat in the engine
    assert [[view.question for view in c] for c in panel.conversations] == [["What is this?", "And what else?"],
                                                                            ["What is this?"]]
    # Each entry shows its own picture.
    assert [[view.png for view in c] for c in panel.conversations] == [
        [thumbnail_png(picture, HISTORY_THUMBNAIL)] * 2, [thumbnail_png(other, HISTORY_THUMBNAIL)]]
    assert "<img" in panel.history.children[-1].thumbnail.value

    panel.variable.value = ""  # "(pick a variable)" picks nothing: the dropdown keeps naming the picture in use
    assert panel.variable.value == "other" and panel.image is other
    namespace["other"] = picture.copy()  # the variable now holds another picture than the one in use
    panel.refresh_variables()
    assert panel.variable.value == "" and panel.image is other
    assert panel.picture_note.value == "variable <code>other</code>, as it was when picked"
    namespace["same"] = other
    panel.refresh_variables()
    assert panel.variable.value == "same" and panel.picture_note.value == ""

    panel.engine = tiny  # another model (here the same one again): a new conversation too
    assert panel.session is None and "new model" in panel.history.children[-1].value

    data = png_bytes(picture)
    panel.upload.value = ({"name": "shapes.png", "type": "image/png", "size": len(data), "content": memoryview(data),
                           "last_modified": datetime.now(timezone.utc)},)
    assert panel.variable.value == "" and panel.picture_note.value == "uploaded shapes.png"
    assert panel.upload.value == ()  # read: its button no longer counts a file
    assert "uploaded shapes.png" in panel.history.children[-1].value
