"""A conversation about one picture, and the answer stream of each question in it.

    chat = engine.new_chat(image)
    stream = chat.ask("What colour is the circle?")
    for chunk in stream:            # text as it is generated
        print(chunk, end="")
    answer = stream.result()        # text, finish reason, timings
    chat.ask("And the square?")     # a follow-up continues from the cached keys and values of the first turn

The chat's state is explicit: its picture, its image features (computed once), its history of (question,
answer) turns. The engine's KV cache (kv_state.py) knows which chat's ids it holds; every model call takes the
engine's lock for that call only, so a stream that is abandoned mid-answer holds no lock, and a chat whose cache
another chat displaced is simply re-fed from its history.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import START_OVER, MvlmError
from .confidence import TokenChoice, choice
from .picture_cache import Preparation
from .sampling import GenerationConfig, Sampler
from .text_stream import TextStream
from .tokenizer import conversation_ids

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class Timings:
    image_encode_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0  # from the question to the first new token, image encode included
    decode_ms: float = 0.0
    prompt_tokens: int = 0  # positions in the KV cache before the first new token (image tokens included)
    prefill_tokens: int = 0  # of those, how many this turn had to feed (the rest were cached)
    new_tokens: int = 0
    picture_seen: bool = False  # the picture was encoded before this question (an earlier turn, or prepared)
    picture_ready: bool = False  # prepared before the question was asked (Engine.prepare): image_encode_ms is 0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.new_tokens - 1
        return steps / (self.decode_ms / 1000) if steps > 0 and self.decode_ms > 0 else 0.0

    def summary(self) -> str:
        """The stats a student reads: `picture 812 ms · first token 1020 ms · 24 tokens · 21.3 tokens/s`.
        A follow-up says the picture was already seen; one token has no rate."""
        parts = []
        if self.image_encode_ms:
            parts.append(f"picture {self.image_encode_ms:.0f} ms")
        elif self.picture_ready:
            parts.append("picture prepared")
        elif self.picture_seen:
            parts.append("picture already seen")
        if self.new_tokens:
            parts.append(f"first token {self.first_token_ms:.0f} ms")
        parts.append("1 token" if self.new_tokens == 1 else f"{self.new_tokens} tokens")
        if self.decode_tokens_per_s:
            parts.append(f"{self.decode_tokens_per_s:.1f} tokens/s")
        return " · ".join(parts)


@dataclass
class Answer:
    question: str
    text: str
    token_ids: list[int]
    finish_reason: str  # eos | stop_string | max_new_tokens | stopped | context
    timings: Timings = field(default_factory=Timings)
    tokens: list[TokenChoice] = field(default_factory=list)  # with `alternatives`: how sure of each token

    def __str__(self) -> str:
        return self.text


class ChatSession:
    """A conversation about one image. Each `ask` continues it."""

    def __init__(self, engine: Engine, image=None, preparation: Preparation | None = None, own_cache: bool = False):
        self.engine = engine
        self.image = image
        # the cache this chat feeds: the engine's shared one, or a row of its own whose one-token steps decode
        # together with other chats' (batching.py; only where the engine has rows), claimed at its first prompt
        self.own_cache = own_cache and engine.rows is not None
        self.kv = None if self.own_cache else engine.kv
        self.history: list[tuple[str, str]] = []
        self.image_embeds: np.ndarray | None = None  # (1, 144, C), computed at the first question
        # the picture made ready in the background (Engine.prepare), or at the first question
        self.preparation = preparation or (Preparation(image) if image is not None else None)

    @property
    def picture(self) -> str | None:
        """The key of the picture's pixels, once known (kv_state.py shares a cache about the same picture)."""
        return self.preparation.key if self.preparation is not None else None

    def ask(self, question: str, config: GenerationConfig | None = None, stop_event: threading.Event | None = None,
            **options) -> AnswerStream:
        check_question(question)
        if options:
            config = GenerationConfig(**{**(config.__dict__ if config else {}), **options})
        return AnswerStream(self, question.strip(), config or GenerationConfig(), stop_event)

    def prompt_ids(self, question: str) -> list[int]:
        turns = self.history + [(question, None)]
        return conversation_ids(self.engine.tokenizer, turns, with_image=self.image is not None)

    def reset(self) -> None:
        self.history.clear()
        if self.kv is not None:
            with self.engine.lock:
                self.kv.release(self)

    def close(self) -> None:
        """This chat will not be continued: its own cache row (if any) goes back to the engine's pool."""
        if self.own_cache and self.kv is not None:
            self.engine.rows.release(self)
            self.kv = None

    def cache(self, ids: list[int]):
        """The KVState this chat feeds; a row of its own is claimed for its first prompt `ids`."""
        if self.kv is None:
            self.kv = self.engine.rows.claim(self, ids, self.picture)
        return self.kv

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.engine.embed(ids, self.image_embeds)


class AnswerStream:
    """Iterate for text chunks; `result()` finishes the answer and returns it; `stop()` from any thread."""

    def __init__(self, session: ChatSession, question: str, config: GenerationConfig, stop_event=None):
        self.session, self.question, self.config = session, question, config
        self.stop_event = stop_event or threading.Event()
        self._answer: Answer | None = None
        self._decoding = False  # counted among the batcher's decoding chats (own cache rows only)
        self._chunks = self._generate()

    def stop(self) -> None:
        self.stop_event.set()

    def __iter__(self) -> Iterator[str]:
        return self._chunks

    def result(self) -> Answer:
        for _ in self._chunks:
            pass
        return self._answer

    @property
    def answer(self) -> Answer | None:
        return self._answer

    def _generate(self) -> Iterator[str]:
        """The answer, counted among the engine's streams while it is generated (a preparation waits)."""
        engine = self.session.engine
        engine.stream_started(self.session.preparation)
        try:
            yield from self._steps()
        finally:
            engine.stream_ended()
            if self._decoding:
                engine.batcher.ended()

    def _steps(self) -> Iterator[str]:
        """prompt -> forward -> logits -> sample -> append, until a stop rule; yields text as it becomes final."""
        session, engine, config = self.session, self.session.engine, self.config
        timings, started = Timings(), time.perf_counter()
        ids = self._prompt(timings, started)
        logits = self._prefill(ids, timings)
        sampler, text = Sampler(config), TextStream(engine.tokenizer, config.stop_strings)
        previous = [t for t in ids if t >= 0]  # for the repetition penalty
        choices: list[TokenChoice] = []
        finish = "max_new_tokens"
        try:
            while len(text.ids) < config.max_new_tokens:
                if self.stop_event.is_set():
                    finish = "stopped"
                    break
                token = sampler.next_token(logits, previous)
                timings.first_token_ms = timings.first_token_ms or (time.perf_counter() - started) * 1000
                if token == engine.eos_token_id and not config.ignore_eos:
                    finish = "eos"
                    break
                previous.append(token)
                if config.alternatives:
                    choices.append(choice(engine.tokenizer, logits, token, config.alternatives))
                if chunk := text.push(token):
                    yield chunk
                if text.stopped:
                    finish = "stop_string"
                    break
                if len(text.ids) >= config.max_new_tokens:
                    break
                if engine.kv.positions(ids) + len(text.ids) >= engine.context_length:
                    finish = "context"
                    break
                logits = self._forward(ids + text.ids)
        except KeyboardInterrupt:
            finish = "stopped"  # the kernel's interrupt ends the answer, not the session
        final = text.final()
        if rest := text.unshown(final):
            yield rest
        if timings.first_token_ms:
            timings.decode_ms = (time.perf_counter() - started) * 1000 - timings.first_token_ms
        timings.new_tokens = len(text.ids)
        session.history.append((self.question, final))
        self._answer = Answer(self.question, final, text.ids, finish, timings, choices[: len(text.ids)])

    def _prompt(self, timings: Timings, started: float) -> list[int]:
        """The prompt's ids; the chat's picture the first time: prepared, pending (waited for) or encoded now."""
        session, engine = self.session, self.session.engine
        if session.image is not None and session.image_embeds is None:
            preparation = session.preparation
            ready = preparation.settled.is_set() and preparation.features is not None
            session.image_embeds = engine.picture_features(preparation)
            timings.picture_ready = ready or preparation.was_cached
            if not timings.picture_ready:
                timings.image_encode_ms = (time.perf_counter() - started) * 1000
        elif session.history:
            timings.picture_seen = session.image is not None
        else:  # a first question whose picture was encoded ahead of it (batch.py's encoder)
            timings.picture_ready = session.image is not None
        ids = session.prompt_ids(self.question)
        needed = engine.kv.positions(ids)
        if needed >= engine.context_length:
            raise MvlmError(f"the conversation is full: this question needs {needed} tokens of the model's "
                            f"{engine.context_length}; {START_OVER}.")
        return ids

    def _prefill(self, ids: list[int], timings: Timings) -> np.ndarray:
        """Feed the prompt positions the cache lacks. The previous answer may re-tokenize differently from how
        it was generated: from there on, it is recomputed (kv_state.py)."""
        session, started = self.session, time.perf_counter()
        kv = session.cache(ids)
        engine = session.engine
        with engine.lock:
            if kv is engine.kv:
                engine.use_prefix(session, ids, session.picture)
            own_row = kv is not engine.kv and engine.rows is not None
            source = engine.rows.source_for(kv, session, ids, session.picture) if own_row else None
            reused = kv.reused(session, ids, session.picture, source)
            timings.prefill_tokens = kv.positions(ids) - kv.positions(ids[:reused])
            logits = kv.extend(session, ids, session.embed, session.picture, source)
            timings.prompt_tokens = kv.length
        timings.prefill_ms = (time.perf_counter() - started) * 1000
        return logits

    def _forward(self, ids: list[int]) -> np.ndarray:
        """Logits after `ids`: one new position, or more where another chat used the cache in between."""
        session, engine = self.session, self.session.engine
        if session.own_cache:  # a row of its own: the step joins the other rows' (batching.py)
            if not self._decoding:
                self._decoding = True
                engine.batcher.started()
            return engine.batcher.forward(session.kv, session, ids, session.embed, session.picture)
        with engine.lock:
            engine.use_prefix(session, ids, session.picture)
            return engine.kv.extend(session, ids, session.embed, session.picture)


def check_question(question) -> None:
    """The one check of a question's text, before any work (the terminal, the notebook and widgets ask here)."""
    if not isinstance(question, str) or not question.strip():
        raise MvlmError("the question is empty; ask something about the picture.")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as error:
        # A lone surrogate: "\ud800" typed in Python, or a byte that was not UTF-8 in a terminal argument
        # (Python keeps it as "\udce9"). SentencePiece cannot take it.
        raise MvlmError(
            f"the question holds text that is not valid Unicode (character {error.start + 1}, "
            f"{question[error.start]!r}, e.g. a byte the terminal did not send as UTF-8); "
            "retype it, or set the terminal to UTF-8."
        ) from None
