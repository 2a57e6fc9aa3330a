"""Batched decoding: chats that answer at the same time decode their next tokens in one call of the language model.

    chat = engine.new_chat(image, own_cache=True)   # a cache row of its own
    chat.ask("What colour is the circle?")          # its one-token steps join those of the other rows' chats

Decoding one token reads every weight of the language model; with several conversations in one call the weights
are read once for all of them (our Int4MatMul multiplies the rows of a batch together), so N chats cost far less
than N times one. Our KVAttention operation keeps one cache row per conversation (`cache_rows`, ops/src), each of
its own length, so conversations join and leave the batch between steps (continuous batching).

- `CacheRows`: the pool of cache rows 1..max_rows (row 0 is the engine's own `engine.kv`). A chat claims a free
  row, preferring one that already holds the start of its prompt (a follow-up sent again by a client of the
  server feeds only its new turn), else the least recently used one; it gives the row back with `release`.
  A new conversation about a picture another row holds (a class asking about the picture on the board) starts
  from a copy of that row's positions (`source_for`; the operation copies them): only its question is fed.
- `Batcher.forward`: a chat's next-token step. Steps that arrive together run as one call (group commit): the
  first to arrive waits up to GATHER for the other decoding rows, runs the call for everyone waiting, and hands
  each its logits. Prompts (many new positions) run alone, one row at a time, under the engine's lock.

Only where the language model has our KVAttention (an `cache_rows` input); with OpenVINO's own operations every
chat shares `engine.kv` and answers one step at a time, as before.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from .kv_state import KVState, text_before_image

MAX_ROWS = 16  # conversations decoding together; more wait for a row
GATHER = 0.005  # s: how long the first step of a round waits for the other decoding rows


@dataclass
class _Row:
    kv: KVState
    owner: weakref.ref | None = None  # the chat using it; None or dead: free
    used: float = 0.0  # when it was last given out (least recently used goes first)

    @property
    def free(self) -> bool:
        return self.owner is None or self.owner() is None


class CacheRows:
    """Cache rows 1..max_rows of the engine's language model, claimed by chats that decode together."""

    def __init__(self, kv: KVState, max_rows: int = MAX_ROWS):
        self.kv, self.max_rows = kv, max_rows  # the engine's own row 0, whose request the rows share
        self.rows: list[_Row] = []
        self.freed = threading.Condition()

    def claim(self, owner, ids: list[int], picture: str | None = None) -> KVState:
        """A free row for `owner`, whose prompt is `ids` about `picture` (waits while all `max_rows` are in use):
        one whose conversation `ids` continue (its whole ids, or its whole last prompt: the answer after it, sent
        back as text, may tokenize otherwise), else a new row (rows holding other conversations are kept for their
        own follow-ups), else the one holding most of `ids`, else the least recently used."""
        shared = text_before_image(ids)
        with self.freed:
            while True:
                free = [row for row in self.rows if row.free]
                if free or len(self.rows) < self.max_rows:
                    break
                self.freed.wait(0.1)
            held = {id(row): row.kv.reusable(None, ids + [0], picture) for row in free}
            best = max(free, key=lambda row: held[id(row)], default=None)
            continued = best is not None and held[id(best)] > shared and (
                held[id(best)] == len(best.kv.ids) or held[id(best)] >= best.kv.prompt_end > 0)
            if continued:
                row = best
            elif len(self.rows) < self.max_rows:
                row = _Row(self.kv.another_row(len(self.rows) + 1))
                self.rows.append(row)
            elif held[id(best)] > shared:
                row = best
            else:
                row = min(free, key=lambda row: row.used)
            row.owner, row.used = weakref.ref(owner), time.monotonic()
            return row.kv

    def states(self) -> list[KVState]:
        """Every cache row's state: the engine's own row 0, then the rows claimed so far."""
        return [self.kv] + [row.kv for row in list(self.rows)]

    def source_for(self, kv: KVState, owner, ids: list[int], picture: str | None) -> KVState | None:
        """The row whose cached start `kv` should copy before its prompt (`KVState.extend`): the one holding more of
        `ids` than `kv` does for `owner` (another conversation about the same picture, or the engine's own row 0
        where a picture was prepared: system text and 144 picture positions not computed again); None if none.
        Callers hold the engine's lock (rows' ids change only under it)."""
        best = max((other for other in self.states() if other is not kv),
                   key=lambda other: other.reusable(None, ids, picture))
        return best if best.reusable(None, ids, picture) > kv.reusable(owner, ids, picture) else None

    def release(self, owner) -> None:
        """`owner`'s row is free again (its ids stay, for a later chat that continues them)."""
        with self.freed:
            for row in self.rows:
                if row.owner is not None and row.owner() is owner:
                    row.owner = None
            self.freed.notify_all()

    @property
    def in_use(self) -> int:
        return sum(not row.free for row in self.rows)


@dataclass
class _Step:
    kv: KVState
    owner: object
    ids: list[int]
    picture: str | None
    done: bool = False
    logits: np.ndarray | None = None
    error: BaseException | None = None


@dataclass
class Batcher:
    """Runs the one-token steps of chats on their own cache rows together (see the module's text)."""

    engine: object
    decoding: int = 0  # chats between their first and last token: how many steps a round waits for
    pending: list[_Step] = field(default_factory=list)
    running: bool = False
    calls: int = 0  # batched calls made, and rows they held in all (mean batch = rows / calls)
    rows: int = 0
    seconds: float = 0.0  # spent in those calls (rows / seconds: tokens a second while batched)

    def __post_init__(self):
        self.changed = threading.Condition()

    def started(self) -> None:
        with self.changed:
            self.decoding += 1

    def ended(self) -> None:
        with self.changed:
            self.decoding -= 1
            self.changed.notify_all()

    def forward(self, kv: KVState, owner, ids: list[int], embed, picture: str | None) -> np.ndarray:
        """Logits after `ids` for `owner`'s row: a one-position step joins the others; more positions run alone."""
        engine = self.engine
        with engine.lock:
            if kv.reusable(owner, ids, picture) != len(ids) - 1:
                return kv.extend(owner, ids, embed, picture)
        step = _Step(kv, owner, list(ids), picture)
        with self.changed:
            self.pending.append(step)
            self.changed.notify_all()
            while not step.done and self.running:
                self.changed.wait()
            if step.done:
                return self._result(step)
            self.running = True  # this thread runs the next call
            deadline = time.monotonic() + GATHER
            while len(self.pending) < self.decoding and (left := deadline - time.monotonic()) > 0:
                self.changed.wait(left)
            batch, self.pending = self.pending, []
        try:
            self._run(batch)
        finally:
            with self.changed:
                self.running = False
                for item in batch:
                    item.done = True
                self.changed.notify_all()
        return self._result(step)

    @staticmethod
    def _result(step: _Step) -> np.ndarray:
        if step.error is not None:
            raise step.error
        return step.logits

    def _run(self, batch: list[_Step]) -> None:
        engine = self.engine
        try:
            with engine.lock:
                started = time.perf_counter()
                embeds = engine.embed_ids([[step.ids[-1]] for step in batch])  # (B, 1, C)
                pasts = [step.kv.positions(step.ids[:-1]) for step in batch]
                logits = KVState.run_rows([step.kv for step in batch], pasts, embeds)  # (B, V)
                for step, row in zip(batch, logits):
                    step.kv.advanced(step.owner, step.ids, step.picture)
                    step.logits = row.copy()
                self.calls, self.rows = self.calls + 1, self.rows + len(batch)
                self.seconds += time.perf_counter() - started
        except BaseException as error:  # each chat of the call meets it
            for step in batch:
                step.error = error
