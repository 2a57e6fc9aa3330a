"""A small chat about one picture: upload it or pick a variable, ask, follow up, stop, clear.

    AskPanel(engine)                         # any engine that follows protocol.py
    AskPanel(engine, namespace=globals())    # also offers the picture variables of the notebook

Each question becomes an AnswerView in the history below the picture; a follow-up continues the
same conversation until the picture changes or Clear is pressed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ipywidgets as w

from ..pictures import is_picture
from .answer_view import AnswerView
from .messages import error_html, escape, one_line
from .protocol import Answer, ChatSession, Engine
from .thumbnail import THUMBNAIL_SIZE, thumbnail_png, to_pil

NO_VARIABLE = ("(pick a variable)", "")


class AskPanel(w.VBox):
    """Picture, question box, Ask / Stop / Clear, and the conversation so far."""

    def __init__(self, engine: Engine | None = None, namespace: Mapping[str, Any] | None = None, *, image=None,
                 blocking: bool = False, rate: float = 25.0, **options: Any):
        self._engine = engine
        self.namespace = namespace
        self.blocking, self.rate = blocking, rate
        self.options = options  # passed to every ask: max_new_tokens, temperature, ...
        self.session: ChatSession | None = None
        self.image = None
        self.view: AnswerView | None = None  # the latest answer
        self.answer: Answer | None = None  # the latest finished answer

        self.model_note = w.HTML("")
        self.preview = w.Image(format="png", layout=w.Layout(max_width=f"{THUMBNAIL_SIZE}px", height="auto",
                                                             display="none", margin="0 12px 0 0"))
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
        self.history = w.VBox([])
        self.question = w.Textarea(placeholder="Ask about the picture…", rows=2, layout=w.Layout(width="100%"))
        self.ask_button = w.Button(description="Ask", icon="paper-plane", button_style="primary")
        self.ask_button.on_click(lambda _: self.ask())
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning", disabled=True)
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button = w.Button(description="Clear", icon="eraser", tooltip="start a new conversation")
        self.clear_button.on_click(lambda _: self.clear())
        self.error = w.HTML("")
        self.error_message = ""

        choose = w.VBox([self.upload, w.HBox([self.variable, self.refresh_button]), self.picture_note])
        super().__init__([
            self.model_note,
            w.HBox([self.preview, choose]),
            self.history,
            self.question,
            w.HBox([self.ask_button, self.stop_button, self.clear_button]),
            self.error,
        ])
        self.engine = engine
        self.refresh_variables()
        if image is not None:
            self.set_image(image, "the given picture")

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @engine.setter
    def engine(self, engine: Engine | None) -> None:
        self._engine, self.session = engine, None  # a conversation belongs to one model
        name = getattr(engine, "name", "") if engine is not None else "no model loaded"
        self.model_note.value = f'<span style="color:#666">model: {escape(str(name))}</span>'

    @property
    def streaming(self) -> bool:
        return self.view is not None and self.view.streaming

    # --- the picture -------------------------------------------------------------------------

    def set_image(self, image, label: str = "") -> None:
        """Ask about `image` from now on; a new picture starts a new conversation."""
        self.image, self.session = image, None
        png = thumbnail_png(image)
        self.preview.value = png or b""
        self.preview.layout.display = None if png else "none"
        self.picture_note.value = escape(label)
        prepare = getattr(self.engine, "prepare", None)  # optional (protocol.py): ready it before the question
        if prepare is not None:
            prepare(image)
        if self.history.children:
            self.history.children += (w.HTML("<hr><i>new picture: a new conversation</i>"),)
        self._show_error("")

    def refresh_variables(self) -> None:
        if self.namespace is None:
            return
        # Variables worth offering: pictures that look like pictures (strict), so no plain strings or 1-D arrays.
        names = sorted(n for n, v in list(self.namespace.items())
                       if not n.startswith("_") and is_picture(v, strict=True))
        current = self.variable.value
        self.variable.options = [NO_VARIABLE] + [(n, n) for n in names]
        self.variable.value = current if current in names else ""

    def _picked(self, change) -> None:
        name = change["new"]
        if name and self.namespace is not None and name in self.namespace:
            self.set_image(self.namespace[name], f"variable <code>{name}</code>")

    def _uploaded(self, change) -> None:
        files = change["new"]
        if not files:
            return
        upload = files[-1]
        picture = to_pil(bytes(upload["content"]))
        try:
            picture.load()
        except Exception as error:  # None (not a picture) or a truncated file
            self._show_error(f"cannot read {upload.get('name', 'the upload')} as a picture"
                             + (f" ({one_line(error)})" if picture is not None else ""))
            return
        self.set_image(picture, f"uploaded {upload.get('name', '')}")

    # --- asking --------------------------------------------------------------------------------

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
        view = AnswerView(question=question, rate=self.rate, show_stop=False)
        view.on_done.append(self._answer_done)
        self.view = view
        self.history.children += (view,)
        self.question.value = ""
        self.ask_button.disabled, self.stop_button.disabled = True, False
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

    def _answer_done(self, view: AnswerView) -> None:
        self.answer = view.answer
        self.ask_button.disabled, self.stop_button.disabled = False, True

    def _show_error(self, message: str) -> None:
        self.error_message = message
        self.error.value = error_html(message)
        return None
