"""Requests wait in a queue, in order; `max_batch` threads answer them, each request in a chat on a cache row of
its own, so the answers being generated decode their tokens together (runtime/batching.py: continuous batching,
a request joins or leaves between steps). Where the engine has no cache rows (OpenVINO's own operations), one
thread answers one request at a time. Each answer's events (text, then the Answer, or an error) go back to the
event loop of the request that asked; a request whose client left sets its stop event, which ends its answer at
the next token (its row is free at once), or skips it if it is still waiting.

The client sends the whole conversation each time; the worker builds a new chat from that history. A finished
request's row keeps its conversation, and a new request whose prompt continues it gets that row
(`CacheRows.claim`): a follow-up feeds only its new turn.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from ..errors import MvlmError
from .metrics import Metrics
from .schema import ChatRequest
from .stream import ApiError

log = logging.getLogger("mvlm.serve")


class Job:
    """One request in the queue: what to answer, and how its events reach the request's coroutine."""

    def __init__(self, request: ChatRequest, loop: asyncio.AbstractEventLoop):
        self.request, self.loop = request, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.stop = threading.Event()  # the client left: end the answer (runtime/chat.py checks it every token)
        self.created = time.perf_counter()
        self.started: float | None = None  # when the engine took it (queue wait = started - created)

    def emit(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Worker:
    def __init__(self, engine, metrics: Metrics, max_batch: int = 16):
        self.engine, self.metrics = engine, metrics
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.running = 0  # requests being answered
        self.lock = threading.Lock()
        together = max(1, min(max_batch, engine.rows.max_rows)) if engine.rows is not None else 1
        self.threads = [threading.Thread(target=self._run, name="mvlm-serve", daemon=True) for _ in range(together)]
        for thread in self.threads:
            thread.start()

    @property
    def queued(self) -> int:
        return self.jobs.qsize()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.stop.is_set():  # its client left while it waited
                job.emit("cancelled", None)
                continue
            with self.lock:
                self.running += 1
            try:
                self._answer(job)
            except Exception:  # its request cannot be told (its loop is gone): the thread goes on to the next
                log.exception("a request's answer could not be delivered")
            finally:
                with self.lock:
                    self.running -= 1

    def count(self, job: Job, answer) -> None:
        """Tokens generated, a stopped answer's too (the work was done), and the first token's latency."""
        self.metrics.tokens(answer.timings.prompt_tokens, answer.timings.new_tokens, answer.timings.prefill_tokens)
        if answer.timings.new_tokens:
            self.metrics.first_token(job.started - job.created + answer.timings.first_token_ms / 1000)

    def _answer(self, job: Job) -> None:
        request = job.request
        job.started = time.perf_counter()
        chat = None
        try:
            # this thread encodes the picture: nothing to prepare; a cache row of its own where the engine has rows
            chat = self.engine.new_chat(request.image, prepare=False, own_cache=True)
            chat.history = list(request.history)
            stream = chat.ask(request.question, request.config, stop_event=job.stop)
            for text in stream:
                job.emit("text", text)
            self.count(job, stream.answer)
            job.emit("done", stream.answer)
        except MvlmError as error:  # the conversation does not fit the context, a picture the runtime refuses
            job.emit("error", ApiError(400, str(error), param="messages"))
        except Exception as error:  # a model call that failed: this request fails, the server goes on
            log.exception("answering a request failed")
            job.emit("error", ApiError(500, f"the model failed on this request ({type(error).__name__}: {error}); "
                                            "try again, or report it with the server's log.", "server_error"))
        finally:
            if chat is not None:
                chat.close()  # its row is free for the next request (and keeps its ids for a follow-up)
