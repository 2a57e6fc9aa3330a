"""One question (or several) over many pictures: the answers decode together, the pictures encoded ahead.

    results = ask_many(engine, [(name, picture), ...], ["What colour is the cross?"])

Each (picture, question) pair is a fresh chat. Up to `batching.MAX_ROWS` of them run at once, each on a cache
row of its own, so their one-token steps are one call of the language model (batching.py): decoding reads the
weights once for all of them. A thread encodes the pictures in order through the engine's picture cache (the
vision model's own infer request), a few ahead of the answers; a picture asked several questions is encoded
once. Where the engine has no cache rows (OpenVINO's own operations) the pairs are answered one at a time.
`stop_event` ends the batch: the answers in progress stop where they are and the rest are not asked;
`on_result` sees the results in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..errors import MvlmError
from .batching import MAX_ROWS
from .chat import Answer
from .preprocess import load_image
from .sampling import GenerationConfig


@dataclass
class BatchResult:
    name: str  # where the picture came from (a file name, `pictures[3]`)
    picture: object  # the picture itself (a PIL image), for thumbnails
    question: str
    answer: Answer | None = None  # None when its picture could not be read, or the batch stopped first
    error: str = ""


class PictureEncoder:
    """Encodes pictures in a background thread, in order, at most `ahead` ahead of what has been taken."""

    def __init__(self, engine, pictures: Sequence, stop: threading.Event, ahead: int):
        self.engine, self.pictures, self.stop = engine, pictures, stop
        self.futures = [Future() for _ in pictures]
        self.taken = threading.Semaphore(ahead)
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
    """Every question about every picture; a result per pair, picture by picture, in that order."""
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
    remote = getattr(engine, "remote", False)  # a server's model (runtime/remote.py): it encodes the pictures there
    together = MAX_ROWS if remote or engine.rows is not None else 1
    encoder = None if remote else PictureEncoder(engine, readable, stop, ahead=together + 1)
    results = [BatchResult(name, picture, question.strip(), error=problem)
               for name, picture, problem in loaded for question in questions]
    jobs = iter(range(len(loaded)))  # pictures, taken in order by the workers
    readable_index = {i: n for n, i in enumerate(i for i, (_, picture, _) in enumerate(loaded) if picture is not None)}
    emitted = _InOrder(results, on_result)
    guard = threading.Lock()
    failures: list[BaseException] = []

    def work() -> None:
        while True:
            with guard:
                index = next(jobs, None)
            if index is None:
                return
            rows = results[index * len(questions):(index + 1) * len(questions)]
            picture = loaded[index][1]
            embeds = None
            if picture is not None and not stop.is_set():
                try:
                    embeds = encoder.embeds(readable_index[index]) if encoder is not None else picture
                except Exception as error:
                    for result in rows:
                        result.error = str(error).splitlines()[0]
            for result in rows:
                if embeds is not None and not stop.is_set():
                    chat = engine.new_chat(picture, prepare=False, own_cache=True)  # the encoder prepared it
                    if encoder is not None:
                        chat.image_embeds = embeds  # encoded ahead: the chat skips its own encode
                    try:
                        result.answer = chat.ask(result.question, config, stop_event=stop).result()
                    except MvlmError as error:  # on its row (a full context, say); the batch goes on
                        result.error = str(error)
                    except BaseException as error:  # the batch stops and ask_many raises it
                        failures.append(error)
                        stop.set()
                    finally:
                        chat.close()
                elif not result.error:
                    result.error = "not asked: the batch was stopped"
                emitted.done(result)

    workers = [threading.Thread(target=work, name="mvlm-ask-many", daemon=True) for _ in range(together)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        if encoder is not None:
            encoder.close()  # stopped or failed: the encoder thread skips what is left instead of waiting forever
    if failures:
        raise failures[0]
    return results


class _InOrder:
    """Hands finished results to `on_result` in the batch's order, as soon as all before them are done."""

    def __init__(self, results: list[BatchResult], on_result):
        self.results, self.on_result = results, on_result
        self.finished: set[int] = set()
        self.next = 0
        self.lock = threading.Lock()

    def done(self, result: BatchResult) -> None:
        with self.lock:
            self.finished.add(id(result))
            while self.next < len(self.results) and id(self.results[self.next]) in self.finished:
                if self.on_result is not None:
                    self.on_result(self.results[self.next])
                self.next += 1
