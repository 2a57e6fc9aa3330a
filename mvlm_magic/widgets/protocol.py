"""The small engine protocol the widgets need; they import no model code.

Any object with these methods works, so the widgets can be driven by `mvlm_magic`'s OpenVINO engine,
by another backend, or by a fake in a test:

    engine.name                                  -> str, shown in the panels
    engine.new_chat(image)                       -> ChatSession about one picture
    engine.prepare(image)                        -> optional: make the picture ready in the background
    session.ask(question, **options)             -> AnswerStream (options: max_new_tokens, temperature, ...)
    session.history                              -> [(question, answer_text), ...]
    session.reset()                              -> forget the conversation
    for chunk in stream: ...                     -> text as it is generated (generation runs while iterating)
    stream.stop()                                -> ask the generation to end soon; callable from any thread
    stream.result()                              -> Answer, once the stream is exhausted
    answer.text, answer.finish_reason, answer.timings.summary()

A loader turns a model name into an engine and reports progress by stage:

    loader(model, compression="int4", device="CPU", progress=callback) -> engine
    callback(stage, fraction_or_None, message)   stages: download, load, convert, compress, save, compile
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

Progress = Callable[[str, "float | None", str], None]  # (stage, fraction in [0, 1] or None, message)


@runtime_checkable
class Timings(Protocol):
    def summary(self) -> str:
        """One line, e.g. "picture 80 ms · first token 120 ms · 42 tokens · 25.0 tokens/s"."""


@runtime_checkable
class Answer(Protocol):
    question: str
    text: str
    finish_reason: str  # eos | stop_string | max_new_tokens | stopped | context
    timings: Timings


@runtime_checkable
class AnswerStream(Protocol):
    def __iter__(self) -> Iterator[str]:
        """Text chunks; the answer is generated in the thread that iterates."""

    def stop(self) -> None:
        """Thread-safe: the generation ends at the next token."""

    def result(self) -> Answer:
        """Finish the stream (if not done) and return the whole answer."""


@runtime_checkable
class ChatSession(Protocol):
    history: Sequence[tuple[str, str]]

    def ask(self, question: str, **options: Any) -> AnswerStream:
        """Start the next turn; raises an exception with a one-line message on bad input."""

    def reset(self) -> None:
        """Forget the conversation (the picture stays)."""


@runtime_checkable
class Engine(Protocol):
    name: str

    def new_chat(self, image: Any) -> ChatSession:
        """A conversation about `image` (a PIL image, a path, bytes or an array)."""


class Loader(Protocol):
    def __call__(self, model: str, compression: str = ..., device: str = ..., *, progress: Progress = ...) -> Engine:
        """Find or make the model's export, compile it on `device`, and return the engine."""
