"""The streaming answer: one HTML widget updated at a throttled rate, a Stop button and a stats line.

    view = AnswerView(image=picture, question="What is this?")
    display(view)                                  # or `view` as a cell's last line
    view.stream(session.ask("What is this?"))      # returns at once; a thread consumes the stream
    view.wait()                                    # -> the Answer, when you need it in code

Why a thread: while a cell runs, the kernel queues button clicks, so a Stop button can only work if
the cell returns while the answer is generated elsewhere. Widget trait updates are safe from a
thread (they go out on iopub at once); printing is not (ipykernel 7 routes a thread's output to
whichever cell happens to be running), so the thread never prints.

Why throttled: each value update is a message carrying the whole text; at 25 a second the front end
keeps up and the server's iopub rate limits stay far away. The final text always lands.

Why paced: a small model writes a hundred tokens in a fraction of a second, too fast for a class to read
along or to press Stop. `pace` (tokens a second at most; 0 = as fast as the model) holds each chunk back
until its time; the engine generates while the stream is iterated, so it waits too, and a Stop ends the
answer at once, where the class is reading (it wakes the wait). The time held back is not the model's:
it is taken out of the answer's decode time, so the stats line still says how fast the model was.
`AnswerView.default_pace` is the pace of views made without one (`%config MvlmMagics.stream_pace` sets it,
so the AskPanel follows the same setting).

Why a static copy: a widget lives in the kernel, so a saved notebook reopened without it shows
"Loading widget..." or "Error displaying widget: model not found" (the widget renderer has no fallback).
So the view replaces its own outputs when the answer ends (finished, stopped or failed) by `static_copy()`:
Markdown, plain text and the thumbnail PNG, which every viewer shows (JupyterLab, Notebook 7, VS Code,
nbviewer, nbconvert). It can do so whoever displayed it (`display(view)`, `view` as a cell's last line, the
magics): it displays itself under a display id of its own (`_ipython_display_`), and a display is
updated by its id, which is safe from the thread. A view inside another widget (a box, the AskPanel) is
not an output of its own and stays a widget.

Layout: Stop and the status line sit above the answer, so they stay in place while the text grows
below them; Stop is hidden once the answer has ended.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable

import ipywidgets as w

from ..printing import answer_stats
from .confidence import LEGEND, tokens_html, tokens_markdown
from .messages import answer_html, error_html, escape, one_line, status_html, text_html, text_markdown
from .protocol import Answer, AnswerStream
from .thumbnail import THUMBNAIL_SIZE, img_tag, thumbnail_png


class AnswerView(w.HBox):
    """One answer as it streams. `text`, `answer`, `error`, `done` and `wait()` read its state."""

    default_pace = 0.0  # tokens a second at most for views made without `pace`; 0 = as fast as the model

    def __init__(self, image=None, question: str | None = None, *, rate: float = 25.0, show_stop: bool = True,
                 thumbnail_size: int = THUMBNAIL_SIZE, font_scale: float = 1.0, show_tokens: bool = False,
                 pace: float | None = None):
        self.rate = float(rate)
        self.pace = max(0.0, float(self.default_pace if pace is None else pace))
        self.show_tokens = show_tokens  # at the end, the answer as tokens tinted by the model's confidence
        self.question = question
        self.show_stop = show_stop
        self.font_scale = float(font_scale)  # answer text size, in notebook text sizes (1.5 for a projector)
        # An HTML <img> rather than an Image widget: only HTML can carry the alt text.
        self.thumbnail = w.HTML(layout=w.Layout(max_width=f"{thumbnail_size}px", margin="0 12px 0 0",
                                                flex="0 0 auto"))
        self.png: bytes | None = None
        self.set_image(image, thumbnail_size)
        # pre-line: a question written on several lines (Shift+Enter in the AskPanel) keeps them
        self.question_box = w.HTML(f'<b>Q:</b> <span style="white-space:pre-line">{escape(question)}</span>'
                                   if question else "")
        self.answer_box = w.HTML("", layout=w.Layout(width="100%"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning", disabled=True,
                                    tooltip="stop this answer", layout=w.Layout(width="90px", display="none"))
        self.stop_button.on_click(lambda _: self.stop())
        self.stats = w.HTML("")
        self.on_done: list[Callable[[AnswerView], None]] = []  # called in the consuming thread, before `done` is set
        self.done = threading.Event()
        self.text = ""
        self.answer: Answer | None = None
        self.error = ""  # one line; empty when the answer ended normally
        self.exception: BaseException | None = None
        self.finished = False  # the answer (or its error) is final; `done` is set after the last refresh and on_done
        self.updates = 0  # how many times the answer text was sent (throttling is checked against this)
        self._stream: AnswerStream | None = None
        self._stop_requested = False
        self._woken = threading.Event()  # set by stop(): ends a paced wait at once
        self._display_handle = None  # a display handle given to stream(), updated like our own outputs
        self._display_id: str | None = None  # of our own outputs, once displayed (_ipython_display_)
        self._displays = threading.Lock()  # displaying vs. ending: every output gets the static copy
        self._copied = False  # the static copy has replaced our outputs: later displays show it directly
        self._text_updates = False
        # Above the answer: nothing above them changes size while the text streams, so they never move.
        controls = w.HBox([self.stop_button, self.stats], layout=w.Layout(align_items="center"))
        body = w.VBox([self.question_box, controls, self.answer_box], layout=w.Layout(flex="1 1 auto"))
        super().__init__([self.thumbnail, body], layout=w.Layout(align_items="flex-start", width="100%"))

    def set_image(self, image, thumbnail_size: int = THUMBNAIL_SIZE) -> None:
        self.png = thumbnail_png(image, thumbnail_size) if image is not None else None
        self.thumbnail.value = img_tag(self.png) if self.png else ""
        self.thumbnail.layout.display = None if self.png else "none"

    @property
    def streaming(self) -> bool:
        return self._stream is not None and not self.done.is_set()

    def stream(self, answer_stream: AnswerStream, blocking: bool = False, *, lock: threading.Lock | None = None,
               display_handle=None, text_updates: bool = False) -> AnswerView:
        """Show `answer_stream` as it is generated.

        blocking=False consumes it in a background thread and returns at once (the Stop button works);
        blocking=True consumes it here, so the kernel's interrupt stops it and errors are raised after
        they are shown. `lock`, if given, is held while generating: a second view waits its turn and
        says so. When the answer ends, the view's outputs (wherever it was displayed) are replaced by
        `static_copy()`, and so is `display_handle` if given (a handle of a display made elsewhere). With
        `text_updates` they also get each throttled refresh, for clients that record display updates but
        render no widgets (nbclient), so an interrupted run still saves text.
        """
        if self.streaming:
            raise RuntimeError("this view is already showing an answer; make a new AnswerView")
        self._stream, self._display_handle, self._text_updates = answer_stream, display_handle, text_updates
        self._stop_requested = False
        self._woken.clear()
        with self._displays:
            self._copied = False
        self.text, self.answer, self.error, self.exception = "", None, "", None
        self.done.clear()
        self.finished = False
        self.stop_button.disabled = False
        self.stop_button.layout.display = None if self.show_stop else "none"
        self._status("thinking…")
        if blocking:
            self._consume(answer_stream, lock)
            if self.exception is not None:
                raise self.exception
        else:
            threading.Thread(target=self._consume, args=(answer_stream, lock), name="mvlm-answer", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop the answer (thread-safe); what was generated so far stays."""
        self._stop_requested = True
        self._woken.set()
        if self._stream is not None:
            self._stream.stop()

    def wait(self, timeout: float | None = None) -> Answer | None:
        """Block until the answer is finished; returns it (None if it failed or the wait timed out)."""
        self.done.wait(timeout)
        return self.answer

    # --- the consuming side (background thread, or the caller's thread when blocking) ------------

    def _consume(self, stream: AnswerStream, lock: threading.Lock | None) -> None:
        acquired = started = False
        try:
            if lock is not None:
                if not lock.acquire(blocking=False):
                    self._status("waiting for the answer above to finish…")
                    lock.acquire()
                acquired = True
                if self._stop_requested:
                    stream.stop()  # Stop clicked while waiting: end before the first token
                self._status("thinking…")
            interval, last = 1.0 / self.rate if self.rate > 0 else 0.0, 0.0
            step, due, held = 1.0 / self.pace if self.pace > 0 else 0.0, float("-inf"), 0.0
            started = True
            for chunk in stream:
                if step:  # paced: this chunk shows no sooner than `step` after the one before (the first at once)
                    due, waited = max(due + step, time.monotonic()), time.monotonic()
                    woken = self._woken.wait(max(0.0, due - waited))
                    held += time.monotonic() - waited
                    if woken:
                        break  # Stop: the answer ends now (result() below finishes the stopped stream)
                if not self.text:
                    self._status("streaming…")
                self.text += chunk
                now = time.monotonic()
                if now - last >= interval:
                    self._show_text()
                    last = now
            self.answer = stream.result()
            self._take_out_of_decode_time(held)
        except KeyboardInterrupt:
            # The kernel's interrupt reached our loop rather than the engine's: end the answer, keep what came.
            if started:
                self._finish_after_interrupt(stream)
            else:
                self.error = "interrupted while waiting for its turn"
        except BaseException as error:  # shown as one line; re-raised by stream(blocking=True)
            self.exception, self.error = error, one_line(error)
        finally:
            if self.answer is not None:
                self.text = self.answer.text
            self.finished = True  # before the last refresh, so its text form carries the stats line
            self._show_text()
            self._show_stats()
            self.stop_button.disabled = True
            self.stop_button.layout.display = "none"  # gone, not a pale button that looks broken
            if acquired:
                lock.release()
            self._show_static_copy()
            for callback in list(self.on_done):
                try:
                    callback(self)
                except Exception as error:  # never print from here; keep the first problem visible
                    self.error = self.error or one_line(error)
                    self._show_stats()
            self.done.set()  # last: once wait() returns, what the callbacks keep (a panel's saved copy) is final

    def _take_out_of_decode_time(self, held: float) -> None:
        """The seconds the pace held the stream back were the reader's, not the model's (our engines' Timings)."""
        timings = getattr(self.answer, "timings", None)
        if held and getattr(timings, "decode_ms", 0) > 0:
            timings.decode_ms = max(timings.decode_ms - held * 1000, 1e-3)

    def _finish_after_interrupt(self, stream: AnswerStream) -> None:
        stream.stop()
        try:
            self.answer = stream.result()
        except KeyboardInterrupt:  # a second interrupt
            self.error = "interrupted"
        except Exception as error:
            self.error = one_line(error)

    @property
    def tokens(self) -> list:
        """The finished answer's tokens with their probabilities, where they were asked for and are shown."""
        answer_tokens = getattr(self.answer, "tokens", None) if self.show_tokens and self.finished else None
        return list(answer_tokens or [])

    def _show_text(self) -> None:
        if tokens := self.tokens:
            self.answer_box.value = answer_html(tokens_html(tokens), self.font_scale) + status_html(LEGEND)
        else:
            self.answer_box.value = text_html(self.text, self.font_scale)
        self.updates += 1
        if self._text_updates:
            with self._displays:
                self._update_outputs(self._widget_bundle())

    def _show_static_copy(self) -> None:
        try:
            with self._displays:
                self._copied = True
                self._update_outputs(self.static_copy())
        except Exception as error:  # never print from here; the widget still shows the answer
            self.error = self.error or one_line(error)
            self._show_stats()

    def _update_outputs(self, bundle: dict) -> None:
        """Replace every output of this view (its own display id, and a handle given to stream())."""
        if self._display_id is not None:
            from IPython.display import update_display

            update_display(bundle, display_id=self._display_id, raw=True)
        if self._display_handle is not None:
            self._display_handle.update(bundle, raw=True)

    def _ipython_display_(self) -> None:
        """`display(view)`, or the view as a cell's last line: shown under our own display id, so that whoever
        displayed it, its output becomes the static copy when the answer ends (a saved notebook keeps it). A
        view whose answer has ended shows its static copy at once."""
        from IPython.display import display

        with self._displays:
            if self._copied:
                display(self.static_copy(), raw=True)
                return
            self._display_id = self._display_id or uuid.uuid4().hex
            display(self._widget_bundle(), raw=True, display_id=self._display_id)

    def _status(self, message: str) -> None:
        self.stats.value = status_html(message)

    def _show_stats(self) -> None:
        if self.error:
            self.stats.value = error_html(self.error)
        elif self.answer is not None:
            self._status(answer_stats(self.answer))
        else:
            self._status("interrupted")

    # --- a text form of the view, for outputs saved where no widget renders (nbconvert, plain IPython) ---

    def plain_text(self) -> str:
        lines = [f"Q: {self.question}"] if self.question else []
        lines.append(self.text or ("" if self.finished else "…"))
        if self.finished:
            if self.error:
                lines.append(f"[{self.error}]")
            elif self.answer is not None:
                lines.append(f"[{answer_stats(self.answer)}]")
        return "\n".join(lines)

    def static_copy(self) -> dict:
        """The answer as outputs every notebook viewer shows without a kernel: Markdown (thumbnail, question,
        answer, stats or error line), the same as plain text, and the thumbnail as a PNG."""
        parts = [img_tag(self.png)] if self.png else []
        if self.question:
            parts.append(f"**Q:** {text_markdown(self.question)}")
        if self.text:
            answer = tokens_markdown(self.tokens) if self.tokens else text_markdown(self.text)
            if self.font_scale != 1.0:
                answer = f'<span style="font-size:{self.font_scale:.0%}">{answer}</span>'
            parts.append(answer)
        if self.error:
            parts.append(f"⚠ {text_markdown(self.error)}")
        elif self.answer is not None:
            legend = f" · {text_markdown(LEGEND)}" if self.tokens else ""
            parts.append(f"*{text_markdown(answer_stats(self.answer))}{legend}*")
        elif self.finished:
            parts.append("*interrupted*")
        bundle = {"text/markdown": "\n\n".join(parts), "text/plain": self.plain_text()}
        if self.png:
            bundle["image/png"] = base64.b64encode(self.png).decode("ascii")
        return bundle

    def _widget_bundle(self) -> dict:
        """The live widget's output: its view, and its text form for clients that render no widgets."""
        bundle = super()._repr_mimebundle_() or {}
        bundle["text/plain"] = self.plain_text()
        return bundle

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle:
            bundle["text/plain"] = self.plain_text()
        return bundle
