"""One question (or several) over many pictures, with the pictures encoded ahead of the answers.

    results = ask_many(engine, [(name, picture), ...], ["What colour is the cross?"])

Each (picture, question) pair is a fresh chat. While the language model answers about one picture, a second thread
encodes the next ones through the engine's picture cache (the vision model's own infer request), hoping to overlap
the encoding (compute) with the decoding (memory); on two cores it does not gain (docs/benchmarks.md). A picture
asked several questions is encoded once.
`stop_event` ends the batch: the answer in progress stops where it is and the rest are not asked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..errors import MvlmError
from .chat import Answer
from .preprocess import load_image
from .sampling import GenerationConfig

AHEAD = 2  # pictures encoded ahead of the one being answered: enough to hide an encode behind an answer


@dataclass
class BatchResult:
    name: str  # where the picture came from (a file name, `pictures[3]`)
    picture: object  # the picture itself (a PIL image), for thumbnails
    question: str
    answer: Answer | None = None  # None when its picture could not be read, or the batch stopped first
    error: str = ""


class PictureEncoder:
    """Encodes pictures in a background thread, in order, at most AHEAD ahead of what has been taken."""

    def __init__(self, engine, pictures: Sequence, stop: threading.Event):
        self.engine, self.pictures, self.stop = engine, pictures, stop
        self.futures = [Future() for _ in pictures]
        self.taken = threading.Semaphore(AHEAD)
        self.closed = False
        threading.Thread(target=self._run, name="mvlm-encode-ahead", daemon=True).start()

    def _run(self) -> None:
        for picture, future in zip(self.pictures, self.futures):
            self.taken.acquire()
            if self.stop.is_set() or self.closed:
                future.cancel()
                continue
            try:
                # The engine's picture cache encodes on its own request: never waits for the language model.
                future.set_result(self.engine.encode_image(picture))  # (1, 144, C)
            except Exception as error:  # shown on its row; the batch goes on
                future.set_exception(error)

    def embeds(self, index: int) -> np.ndarray:
        try:
            return self.futures[index].result()
        finally:
            self.taken.release()

    def close(self) -> None:
        """The batch is over (stopped, or a picture's question failed): the thread skips what is left and ends."""
        self.closed = True
        for _ in self.pictures:
            self.taken.release()


def ask_many(engine, pictures: Sequence[tuple[str, object]], questions: Sequence[str],
             config: GenerationConfig | None = None, stop_event: threading.Event | None = None,
             on_result: Callable[[BatchResult], None] | None = None) -> list[BatchResult]:
    """Every question about every picture (picture by picture); a result per pair, in that order."""
    if not pictures:
        raise MvlmError("no pictures to ask about; pass a list of pictures, a folder or a glob such as *.png.")
    if not questions or not all(q.strip() for q in questions):
        raise MvlmError("the question is empty; write it in the cell (one per line with --each-line).")
    stop = stop_event or threading.Event()
    loaded = []
    for name, picture in pictures:
        try:
            loaded.append((name, load_image(picture), ""))
        except MvlmError as error:
            loaded.append((name, None, str(error)))
    readable = [picture for _, picture, _ in loaded if picture is not None]
    encoder = PictureEncoder(engine, readable, stop)
    results, index = [], 0
    try:
        for name, picture, problem in loaded:
            embeds = None
            if picture is not None:
                try:
                    embeds = encoder.embeds(index) if not stop.is_set() else None
                except Exception as error:
                    problem = str(error).splitlines()[0]
                index += 1
            for question in questions:
                result = BatchResult(name, picture, question.strip(), error=problem)
                if embeds is not None and not stop.is_set():
                    chat = engine.new_chat(picture, prepare=False)  # the encoder thread prepares the pictures here
                    chat.image_embeds = embeds  # encoded ahead: the chat skips its own encode
                    result.answer = chat.ask(question, config, stop_event=stop).result()
                elif not problem:
                    result.error = "not asked: the batch was stopped"
                results.append(result)
                if on_result is not None:
                    on_result(result)
    finally:
        encoder.close()  # stopped or failed: the encoder thread skips what is left instead of waiting forever
    return results
