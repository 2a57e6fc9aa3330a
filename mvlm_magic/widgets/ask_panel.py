"""A small chat about one picture: upload it or pick a variable, ask, follow up, stop, clear.

    AskPanel(engine)                         # any engine that follows protocol.py
    AskPanel(engine, namespace=globals())    # also offers the picture variables of the notebook

Layout, top to bottom: the model, the picture (a fixed square) and its picker, the question box with Ask (Stop in
its place while an answer streams) and Clear, then the conversation so far. Nothing above the question box changes
size while an answer streams or when the picture changes: it never moves. The history scrolls in its own box that
sticks to its end (a column-reverse flex box around one child), so the growing answer stays in view without
JavaScript.

Enter asks, Shift+Enter starts a new line. ipywidgets' Textarea has no submit event, so a hidden HTML widget
installs one key listener on the page (once, see ENTER_ASKS): Enter in a question box appends SUBMIT to the box's
text, and no Enter there reaches the notebook's shortcuts. Python
sees it arrive with the text itself, so the whole question is there even when the front end batches its
updates (a separate "submit" message could overtake the last keystrokes). Where that script cannot run (a
front end that renders no inline handlers), Enter is a plain new line and the Ask button still asks.

Each history entry shows its own picture; choosing another picture starts a new conversation, marked in the
history by a heading. The dropdown always names the variable whose picture is in use, or none.

A saved notebook keeps the conversation: the panel is displayed with its static copy beside it (saved_copy.py),
hidden while the panel is live and brought up to date whenever an answer ends or the conversation changes.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

import ipywidgets as w

from ..pictures import is_picture
from .answer_view import AnswerView
from .messages import STATUS_STYLE, error_html, escape, one_line, text_markdown
from .protocol import Answer, ChatSession, Engine
from .saved_copy import SavedCopy
from .thumbnail import THUMBNAIL_SIZE, img_tag, thumbnail_png, to_pil

NO_VARIABLE = ("(pick a variable)", "")
HISTORY_THUMBNAIL = 64  # pixels: each entry's own picture, small enough for a follow-up under the last
HISTORY_HEIGHT = "480px"  # the history scrolls past this, the question box above it stays put
# Appended to the question by Enter (see ENTER_ASKS): INVISIBLE SEPARATOR, a zero-width character nobody types,
# so the box shows nothing odd in the moment before Python empties it.
SUBMIT = "\u2063"

# Runs where the HTML widget renders (an <img> that fails to load runs its onerror) and installs one listener per
# page, on the window in the capture phase: before the notebook's own shortcuts see the key (Notebook 7 listens on
# the document while capturing, so there Shift+Enter in a widget's box would run the cell and rebuild the panel).
# Every Enter in a question box stays in the box: plain Enter asks, Shift+Enter is the browser's new line.
ENTER_ASKS = (
    '<img src="data:," alt="" style="display:none" onerror="if (!window.mvlmEnterAsks) {'
    " window.mvlmEnterAsks = true; window.addEventListener('keydown', function (e) {"
    " var box = e.target; if (e.key !== 'Enter' || e.isComposing || !box || box.tagName !== 'TEXTAREA'"
    " || !box.closest('.mvlm-question')) return; e.stopPropagation();"
    " if (e.shiftKey || e.ctrlKey || e.altKey || e.metaKey) return; e.preventDefault(); box.value += '\\u2063';"
    " box.dispatchEvent(new Event('input', {bubbles: true})); }, true); }\">"
)


class AskPanel(w.VBox):
    """Picture, question box, Ask / Stop / Clear, and the conversation so far."""

    def __init__(self, engine: Engine | None = None, namespace: Mapping[str, Any] | None = None, *, image=None,
                 blocking: bool = False, rate: float = 25.0, pace: float | None = None, **options: Any):
        self._engine = engine
        self.namespace = namespace
        # pace: tokens shown a second at most (None: AnswerView.default_pace, which %config MvlmMagics.stream_pace
        # sets; 0 = as fast as the model)
        self.blocking, self.rate, self.pace = blocking, rate, pace
        self.options = options  # passed to every ask: max_new_tokens, temperature, ...
        self.session: ChatSession | None = None
        self.image = None
        self.image_label = ""  # where the picture in use came from, as HTML
        self.image_variable: str | None = None  # the variable whose value the picture in use is, if any
        self.view: AnswerView | None = None  # the latest answer
        self.answer: Answer | None = None  # the latest finished answer
        self._showing_variable = False  # the dropdown is being set to match the picture, not picked by hand

        self.model_note = w.HTML("")
        # A fixed square whatever the picture's shape (or none yet), so a new picture never moves the question box.
        side = f"{THUMBNAIL_SIZE}px"
        self.preview = w.Image(format="png", layout=w.Layout(width=side, height=side, object_fit="contain",
                                                             flex="0 0 auto", visibility="hidden",
                                                             margin="0 12px 0 0"))
        self.picture_note = w.HTML("<i>no picture yet</i>")
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload picture")
        self.upload.observe(self._uploaded, names="value")
        self.variable = w.Dropdown(options=[NO_VARIABLE], value="", description="or variable")
        self.variable.observe(self._picked, names="value")
        self.refresh_button = w.Button(icon="refresh", tooltip="look for picture variables again",
                                       layout=w.Layout(width="40px"))
        self.refresh_button.on_click(lambda _: self.refresh_variables())
        if namespace is None:
            self.variable.layout.display = self.refresh_button.layout.display = "none"
        self.question = w.Textarea(placeholder="Ask about the picture… (Enter asks, Shift+Enter: new line)", rows=2,
                                   layout=w.Layout(width="100%"))
        self.question.add_class("mvlm-question")  # what the Enter listener looks for
        self.question.observe(self._typed, names="value")
        self.enter_asks = w.HTML(ENTER_ASKS, layout=w.Layout(display="none"))
        self.ask_button = w.Button(description="Ask", icon="paper-plane", button_style="primary")
        self.ask_button.on_click(lambda _: self.ask())
        # Stop takes Ask's place while an answer streams (same size, same spot), and is gone otherwise: never a
        # pale disabled button, and Clear beside them never moves.
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning", disabled=True,
                                    layout=w.Layout(display="none"))
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button = w.Button(description="Clear", icon="eraser", tooltip="start a new conversation")
        self.clear_button.on_click(lambda _: self.clear())
        self.error = w.HTML("")
        self.error_message = ""
        self.history = w.VBox([], layout=w.Layout(flex="0 0 auto"))  # entries oldest first
        # One child in a column-reverse box: its scroll position is kept from the end, so new text stays in view.
        self.history_box = w.Box([self.history], layout=w.Layout(flex_flow="column-reverse", overflow="auto",
                                                                 max_height=HISTORY_HEIGHT))
        self.history_box.add_class("mvlm-history")

        choose = w.VBox([self.upload, w.HBox([self.variable, self.refresh_button]), self.picture_note])
        super().__init__([
            self.model_note,
            w.HBox([self.preview, choose]),
            self.question,
            w.HBox([self.ask_button, self.stop_button, self.clear_button, self.enter_asks]),
            self.error,
            self.history_box,
        ])
        self.saved_copy = SavedCopy(self, self.static_copy)
        self.engine = engine
        self.refresh_variables()
        if image is not None:
            name = self._variable_holding(image)
            self.set_image(image, "the given picture", variable=name)

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @engine.setter
    def engine(self, engine: Engine | None) -> None:
        if self.session is not None:
            self._new_conversation("new model")
        self._engine, self.session = engine, None  # a conversation belongs to one model
        self.model_note.value = f'<span style="color:#666">model: {escape(self.model_name)}</span>'
        self.saved_copy.refresh()

    @property
    def model_name(self) -> str:
        engine = self.engine
        return str(getattr(engine, "name", "")) if engine is not None else "no model loaded"

    @property
    def streaming(self) -> bool:
        return self.view is not None and self.view.streaming

    # --- the picture -------------------------------------------------------------------------

    def set_image(self, image, label: str = "", *, variable: str | None = None) -> None:
        """Ask about `image` from now on; a new picture starts a new conversation.

        `label` (text) says where it came from; `variable` names the notebook variable that holds it, which
        the dropdown then shows.
        """
        self.image, self.session = image, None
        self.image_variable = variable
        self.image_label = f"variable <code>{escape(variable)}</code>" if variable else escape(label)
        png = thumbnail_png(image)
        self.preview.value = png or b""
        self.preview.layout.visibility = None if png else "hidden"
        self._show_variable(variable or "")
        prepare = getattr(self.engine, "prepare", None)  # optional (protocol.py): ready it before the question
        if prepare is not None:
            prepare(image)
        self._new_conversation(f"new picture ({self.image_label})" if self.image_label else "new picture")
        self._show_error("")
        self.saved_copy.refresh()

    def refresh_variables(self) -> None:
        if self.namespace is None:
            return
        # Variables worth offering: pictures that look like pictures (strict), so no plain strings or 1-D arrays.
        names = sorted(n for n, v in list(self.namespace.items())
                       if not n.startswith("_") and is_picture(v, strict=True))
        self._showing_variable = True
        try:
            self.variable.options = [NO_VARIABLE] + [(n, n) for n in names]
        finally:
            self._showing_variable = False
        # The dropdown names the picture in use: its variable if it still holds it, else another that does.
        holder = self._variable_holding(self.image, prefer=self.image_variable)
        if holder != self.image_variable:  # its variable was reassigned since, or another one holds it now
            self.image_label = (f"variable <code>{escape(holder)}</code>" if holder
                                else f"{self.image_label}, as it was when picked")
            self.image_variable = holder
        self._show_variable(holder or "")

    def _variable_holding(self, image, prefer: str | None = None) -> str | None:
        """The offered variable whose value is `image` itself (`prefer` first), if any."""
        if self.namespace is None or image is None:
            return None
        offered = [name for _, name in self.variable.options if name]
        for name in ([prefer] if prefer in offered else []) + offered:
            if self.namespace.get(name) is image:
                return name
        return None

    def _show_variable(self, name: str) -> None:
        """Set the dropdown without picking: it follows the picture in use. The note under it says where the
        picture came from where the dropdown does not (an upload, a picture no variable holds any more)."""
        if name not in dict(self.variable.options).values():
            name = ""
        self._showing_variable = True
        try:
            self.variable.value = name
        finally:
            self._showing_variable = False
        self.picture_note.value = "" if name else self.image_label or "<i>no picture yet</i>"

    def _picked(self, change) -> None:
        if self._showing_variable:
            return
        name = change["new"]
        if name and self.namespace is not None and name in self.namespace:
            self.set_image(self.namespace[name], variable=name)
        else:  # "(pick a variable)" picks nothing: keep naming the picture in use
            self._show_variable(self.image_variable or "")

    def _uploaded(self, change) -> None:
        files = change["new"]
        if not files:
            return
        upload = files[-1]
        name = upload.get("name", "")
        self.upload.value = ()  # its button counts files; once read, the picture in use is ours to show
        picture = to_pil(bytes(upload["content"]))
        try:
            picture.load()
        except Exception as error:  # None (not a picture) or a truncated file
            self._show_error(f"cannot read {name or 'the upload'} as a picture"
                             + (f" ({one_line(error)})" if picture is not None else ""))
            return
        self.set_image(picture, f"uploaded {name}".strip())

    # --- asking --------------------------------------------------------------------------------

    def _typed(self, change) -> None:
        """Enter in the question box (SUBMIT at the end of its text) asks."""
        if SUBMIT not in change["new"]:
            return
        self.question.value = change["new"].replace(SUBMIT, "")
        self.ask()

    def ask(self, question: str | None = None) -> AnswerView | None:
        """Ask the question in the box (or `question`); returns the AnswerView, or None with an error shown."""
        if self.streaming:
            self._show_error("an answer is still streaming; wait for it or press Stop.")
            return None
        question = (self.question.value if question is None else question).strip()
        if self.engine is None:
            return self._show_error("no model loaded; load one first (LoadPanel or %mvlm_load).")
        if self.image is None:
            or_variable = " or pick a variable." if self.namespace is not None else "."
            return self._show_error("choose a picture first: upload one" + or_variable)
        if not question:
            return self._show_error("the question is empty; type it in the box.")
        try:
            if self.session is None:
                self.session = self.engine.new_chat(self.image)
            stream = self.session.ask(question, **self.options)
        except Exception as error:
            return self._show_error(one_line(error))
        self._show_error("")
        view = AnswerView(self.image, question=question, rate=self.rate, show_stop=False,
                          thumbnail_size=HISTORY_THUMBNAIL, pace=self.pace)
        view.on_done.append(self._answer_done)
        self.view = view
        self.question.value = ""
        self._streaming_buttons(True)  # before the answer shows: no moment where both seem to be asking
        self.history.children += (view,)
        try:
            view.stream(stream, blocking=self.blocking)
        except Exception as error:  # blocking mode re-raises; the panel shows it as one line instead
            self._show_error(one_line(error))
        return view

    def stop(self) -> None:
        if self.view is not None:
            self.view.stop()

    def clear(self) -> None:
        """Start a new conversation about the same picture."""
        self.stop()
        self.session = None  # dropped, not reset: a stopped answer may still be finishing in its thread
        self.history.children = ()
        self._show_error("")
        self.saved_copy.refresh()

    @property
    def conversations(self) -> list[list[AnswerView]]:
        """The history's answers, one list per conversation (what the headings separate)."""
        groups: list[list[AnswerView]] = [[]]
        for child in self.history.children:
            if isinstance(child, AnswerView):
                groups[-1].append(child)
            else:
                groups.append([])
        return [group for group in groups if group]

    def _new_conversation(self, why_html: str) -> None:
        """Mark in the history where a new conversation starts (a heading, if there is history above it)."""
        entries = self.history.children
        if not entries:
            return
        line = f'<span style="{STATUS_STYLE}">New conversation · {why_html}</span>'
        heading = w.HTML(f'<hr style="margin:8px 0 4px">{line}')
        heading.add_class("mvlm-conversation")
        if isinstance(entries[-1], AnswerView):
            self.history.children = entries + (heading,)
        else:  # nothing asked since the last heading: this one replaces it
            self.history.children = entries[:-1] + (heading,)

    def _answer_done(self, view: AnswerView) -> None:
        self.answer = view.answer
        self._streaming_buttons(False)
        self.saved_copy.refresh()

    # --- what a saved notebook keeps ----------------------------------------------------------------

    def static_copy(self) -> dict:
        """The conversation without widgets (Markdown and plain text): each answer's own static copy, the
        headings between conversations; before any question, the picture in use."""
        markdown, text = [f"*model: {text_markdown(self.model_name)}*"], [f"model: {self.model_name}"]
        for child in self.history.children:
            if isinstance(child, AnswerView):
                copy = child.static_copy()
                markdown.append(copy["text/markdown"])
                text.append(copy["text/plain"])
            else:  # a heading: a new conversation and why
                markdown.append(f"<div>{child.value}</div>")  # a block: the next answer's picture starts below
                text.append(html.unescape(re.sub(r"<[^>]+>", "", child.value)))
        if not self.conversations:
            png = self.preview.value or None  # the picture's thumbnail, made once when it was set
            markdown.append((img_tag(png) + "\n\n" if png else "") + "*no question asked yet*")
            text.append("no question asked yet")
        return {"text/markdown": "\n\n".join(markdown), "text/plain": "\n".join(text)}

    def _ipython_display_(self) -> None:
        """The panel, and its static copy beside it (see saved_copy.py)."""
        self.saved_copy.display()

    def _streaming_buttons(self, streaming: bool) -> None:
        self.ask_button.disabled, self.stop_button.disabled = streaming, not streaming
        shown, hidden = (self.stop_button, self.ask_button) if streaming else (self.ask_button, self.stop_button)
        hidden.layout.display = "none"  # first: the front end never shows Ask and Stop side by side
        shown.layout.display = None

    def _show_error(self, message: str) -> None:
        self.error_message = message
        self.error.value = error_html(message)
        return None
