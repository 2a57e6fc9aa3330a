"""The key/value cache of the language model: whose tokens it holds, how many positions, and how it changes.

One engine has one language-model request, so one cache, shared by all its chats (with our operations, a second
request of a one-token copy with static shapes reads and writes the same cache: `one_token_model`). Two back ends
keep the keys and values: OpenVINO's variables (the stateful IR as exported) or our KVAttention operation
(mvlm_magic/ops), which keeps them itself and reads how many positions are cached off the attention mask. This
object is the only place that knows which ids are cached and for whom, and the only one that resets, truncates or
feeds the cache, for both back ends.

Reuse rules (`reusable`): a chat continues from every position of its own that matches its new prompt; another
chat's cache is shared up to its picture (the text before it, BOS + system prompt + "USER:", is the same for
every chat), and past it only where the cached picture is the same picture (`picture`, a key of its pixels:
same ids and same image features give the same keys and values), as after `Engine.prepare`.

Snapshots (`snapshot`, `restore`) copy OpenVINO's variables, so the prefix of a prepared picture can be kept
aside while a chat uses the cache; our KVAttention keeps its cache inside the operation, where no copy can be
taken (`copyable` is False).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .tokenizer import IMAGE_TOKEN_INDEX

BEAM_IDX = np.zeros(1, dtype=np.int32)  # one sequence: its cache rows stay where they are


@dataclass
class Snapshot:
    """A copy of the cache: its ids, picture, owner, and each variable's keys or values (B, KV, P, D)."""
    ids: list[int]
    picture: str | None
    owner: object
    states: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.states.values())


def one_token_model(model, width: int):
    """A copy of the language model (an ov.Model with our KVAttention) for one new position of one cache row,
    with static shapes: the attention mask `width` wide (the context), ending in zeros past the cached length.
    Its KVAttention operations share the cache rows of `model`'s (a clone's share them), so it continues what
    prompts through `model` wrote. Why: with dynamic shapes OpenVINO works out every node's shapes and memory
    on every call, a few milliseconds of a ~25 ms decode step on two cores (docs/benchmarks.md)."""
    copy = model.clone()
    shapes = {"inputs_embeds": [1, 1, -1], "attention_mask": [1, width], "position_ids": [1, 1], "cache_rows": [1],
              "cache_sources": [1], "beam_idx": [1]}
    width_of = {port.get_any_name(): port.get_partial_shape() for port in copy.inputs}
    shapes["inputs_embeds"][2] = width_of["inputs_embeds"][2].get_length()
    copy.reshape({name: shape for name, shape in shapes.items() if name in width_of})
    return copy


def compiled_state(model, compile, num_image_tokens: int, width: int) -> KVState:
    """The cache of a freshly compiled language model (an ov.Model; `compile` turns one into a CompiledModel); with
    our KVAttention (a `cache_rows` input), its one-token copy `width` positions wide is compiled too."""
    ours = any("cache_rows" in port.names for port in model.inputs)
    step = compile(one_token_model(model, width)).create_infer_request() if ours else None
    return KVState(compile(model).create_infer_request(), num_image_tokens, step=step)


class KVState:
    """The cache of one language-model request. Callers hold the engine's lock around every method."""

    def __init__(self, request, num_image_tokens: int, row: int = 0, step=None):
        self.request = request  # an ov.InferRequest of the language model
        # an ov.InferRequest of its one-token copy (`one_token_model`, our KVAttention only; None: `request`)
        self.step = step
        self.width = 0  # the one-token copy's attention mask: the most positions it takes
        if step is not None:
            self.width = next(port for port in step.model_inputs if "attention_mask" in port.names).shape[1]
        self.num_image_tokens = num_image_tokens
        self.row = row  # the cache row of our KVAttention this state feeds (batching.py gives each chat its own)
        inputs = {name for port in request.model_inputs for name in port.names}
        self.beam_inputs = {"beam_idx": BEAM_IDX} if "beam_idx" in inputs else {}  # exports before format 2 lack it
        if "cache_rows" in inputs:
            self.beam_inputs["cache_rows"] = np.array([row], dtype=np.int64)
        if "cache_sources" in inputs:  # no row to copy from (`extend` with a source says which)
            self.beam_inputs["cache_sources"] = np.array([-1], dtype=np.int64)
        self.owner = None  # the chat whose ids are cached (None: nobody's; the text before a picture is shared)
        self.ids: list[int] = []  # the cached ids; IMAGE_TOKEN_INDEX stands for a picture's positions
        self.picture: str | None = None  # the key of the picture whose features those positions hold
        # how many of `ids` were the last prompt (the rest: the answer generated after it); a client that sends the
        # answer back as text may tokenize it otherwise, but still continues this prompt (batching.py)
        self.prompt_end = 0
        self.copyable = bool(request.query_state())  # OpenVINO's variables; KVAttention's cache has none
        self.step_inputs: dict[str, np.ndarray] | None = None  # `step`'s input tensors as numpy views (_step)

    def another_row(self, row: int) -> KVState:
        """An empty state of the same request feeding cache row `row` (batching.py)."""
        other = KVState.__new__(KVState)
        other.__dict__.update(self.__dict__)
        other.row, other.owner, other.ids, other.picture, other.prompt_end = row, None, [], None, 0
        other.beam_inputs = {**self.beam_inputs, "cache_rows": np.array([row], dtype=np.int64)}
        return other

    @property
    def length(self) -> int:
        """Cached positions."""
        return self.positions(self.ids)

    def positions(self, ids: list[int]) -> int:
        """Positions that `ids` take in the cache: a picture takes num_image_tokens."""
        return len(ids) + ids.count(IMAGE_TOKEN_INDEX) * (self.num_image_tokens - 1)

    def reset(self) -> None:
        self.request.reset_state()
        self.owner, self.ids, self.picture, self.prompt_end = None, [], None, 0

    def release(self, owner) -> None:
        """`owner` will not continue: its cache may still be shared up to its picture."""
        if self.owner is owner:
            self.owner = None

    def reusable(self, owner, ids: list[int], picture: str | None = None) -> int:
        """How many leading `ids` are cached for `owner`, whose picture is `picture` (at most all but one: a call
        needs a position to run)."""
        if (owner is not None and owner is self.owner) or (picture is not None and picture == self.picture):
            shareable = self.ids
        else:
            shareable = self.ids[: text_before_image(self.ids)]
        if ids[: len(shareable)] == shareable:
            cached = len(shareable)  # the usual case, a next token: no walk over the ids
        else:
            cached = common_prefix(shareable, ids)
        return min(cached, len(ids) - 1)

    def reused(self, owner, ids: list[int], picture: str | None = None, source: KVState | None = None) -> int:
        """How many leading `ids` need not be fed: cached for `owner` here, or in the row of `source` (another
        conversation about the same picture, whose positions our KVAttention copies; batching.py)."""
        copied = source.reusable(None, ids, picture) if source is not None else 0
        return max(self.reusable(owner, ids, picture), copied)

    def holds(self, ids: list[int], picture: str | None) -> bool:
        """Are all of `ids` (about `picture`) cached, for whoever asks?"""
        return self.reusable(None, ids + [0], picture) == len(ids)

    def extend(self, owner, ids: list[int], embed: Callable[[list[int]], np.ndarray],
               picture: str | None = None, source: KVState | None = None) -> np.ndarray:
        """Make the cache hold `ids` for `owner` about `picture`, feeding only the positions it lacks (`embed`
        turns ids into inputs_embeds (1, T, C)); returns the logits of the last position (V,). `source`: another
        row of our KVAttention whose cached start this row may copy instead of computing it (batching.py)."""
        own = self.reusable(owner, ids, picture)
        cached = self.reused(owner, ids, picture, source)
        held, kept = self.length, self.positions(ids[:cached])
        self.ids, self.picture = [], None  # while the cache changes it matches no ids: an interrupt -> a reset
        if cached > own:  # the operation copies source's first `kept` positions into this row, then runs
            logits = self.run(embed(ids[cached:]), kept, source=source.row)
        else:
            if cached == 0:
                self.request.reset_state()
            elif kept < held:
                self._truncate(kept)
            logits = self.run(embed(ids[cached:]), kept)
        self.owner, self.ids, self.prompt_end = owner, list(ids), len(ids)
        self.picture = picture if IMAGE_TOKEN_INDEX in ids else None
        return logits

    def advanced(self, owner, ids: list[int], picture: str | None) -> None:
        """A batched step (batching.py) fed the last of `ids` into this row: the cache holds `ids` for `owner`."""
        self.owner, self.ids = owner, list(ids)
        self.picture = picture if IMAGE_TOKEN_INDEX in ids else None

    def snapshot(self, ids: list[int] | None = None) -> Snapshot:
        """A copy of the cache, or of its first `ids` (a prefix of the cached ids). Only where `copyable`."""
        owner = self.owner if ids is None else None  # a prefix is nobody's
        ids = self.ids if ids is None else ids
        positions = self.positions(ids)
        states = {state.name: np.array(state.state.data[:, :, :positions, :]) for state in self.request.query_state()}
        return Snapshot(list(ids), self.picture if IMAGE_TOKEN_INDEX in ids else None, owner, states)

    def restore(self, snapshot: Snapshot) -> None:
        """Make the cache what it was when `snapshot` was taken."""
        import openvino as ov

        if not snapshot.ids:
            self.reset()
            return
        self.ids = []
        for state in self.request.query_state():
            state.state = ov.Tensor(np.ascontiguousarray(snapshot.states[state.name]))
        self.owner, self.ids, self.picture = snapshot.owner, list(snapshot.ids), snapshot.picture

    def bytes_per_position(self) -> int:
        """What one cached position costs in a snapshot (0 where nothing is cached)."""
        if not self.length:
            return 0
        return sum(state.state.data.nbytes for state in self.request.query_state()) // self.length

    def _truncate(self, positions: int) -> None:
        """Forget the keys/values after the first `positions` positions. OpenVINO's variables are cut; our
        attention operation keeps no variables and overwrites what lies past the attention mask's length."""
        import openvino as ov

        for state in self.request.query_state():
            kept = state.state.data[:, :, :positions, :]  # (B, KV, P, D)
            state.state = ov.Tensor(np.ascontiguousarray(kept))

    def run(self, inputs_embeds: np.ndarray, past: int, source: int = -1) -> np.ndarray:
        """The language model on new positions (1, T, C) after `past` cached ones; logits of the last one (V,).
        The one place its inputs are built (also for benchmarks/quality.py and ops/measured.py); it does not update
        `ids`: `extend` does. `source` >= 0: the `past` positions are those of that cache row, copied first."""
        total = past + inputs_embeds.shape[1]
        if inputs_embeds.shape[1] == 1 and total <= self.width and source < 0:
            return self._step(inputs_embeds, [past])[0].copy()
        sources = {"cache_sources": np.array([source], dtype=np.int64)} if source >= 0 else {}
        self.request.infer({
            "inputs_embeds": inputs_embeds,
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "position_ids": np.arange(past, total, dtype=np.int64)[None],
            **self.beam_inputs,
            **sources,
        })
        # a copy: the next call of the request (another chat's, batching.py) overwrites its output
        return self.request.get_tensor("logits").data[0, -1].copy()  # (V,)

    @staticmethod
    def run_rows(states: list[KVState], pasts: list[int], inputs_embeds: np.ndarray) -> np.ndarray:
        """One new position for each of several cache rows (our KVAttention's `cache_rows`), after `pasts[b]`
        cached positions of row b, in one call: inputs_embeds (B, 1, C) -> logits (B, V). Rows of different
        lengths share the attention mask's width; a shorter row's mask ends in zeros, which is how the operation
        knows its length. The caller updates
        each state's ids (`advanced`); until then they match nothing, so a failed call means a re-fed prompt."""
        for state in states:
            state.ids, state.picture = [], None
        if len(states) == 1 and pasts[0] < states[0].width:
            return states[0]._step(inputs_embeds, pasts)
        width = max(pasts) + 1
        mask = (np.arange(width)[None] <= np.array(pasts)[:, None]).astype(np.int64)  # (B, width)
        request = states[0].request
        inputs = {
            "inputs_embeds": inputs_embeds,
            "attention_mask": mask,
            "position_ids": np.array(pasts, dtype=np.int64)[:, None],
            "cache_rows": np.array([state.row for state in states], dtype=np.int64),
        }
        if "cache_sources" in states[0].beam_inputs:
            inputs["cache_sources"] = np.full(len(states), -1, dtype=np.int64)
        if "beam_idx" in states[0].beam_inputs:
            inputs["beam_idx"] = np.zeros(len(states), dtype=np.int32)
        request.infer(inputs)
        return request.get_tensor("logits").data[:, -1]  # (B, V)

    def _step(self, inputs_embeds: np.ndarray, pasts: list[int]) -> np.ndarray:
        """One new position (1, 1, C) after pasts[0] cached ones, through the one-token copy: logits (1, V).
        The inputs are written into the request's own tensors: `infer(dict)` checks each input's shape through
        an iterator that ends by raising a C++ exception, ~30 µs for each of the six (measured: docs/benchmarks.md)."""
        inputs = self.step_inputs
        if inputs is None:  # numpy views of the request's input tensors (static shapes: they stay where they are)
            names = ["inputs_embeds", "attention_mask", "position_ids", *self.beam_inputs]
            inputs = self.step_inputs = {name: self.step.get_tensor(name).data for name in names}
        inputs["inputs_embeds"][...] = inputs_embeds
        mask = inputs["attention_mask"]  # (1, width): ones over the cached positions and the new one
        mask[0, : pasts[0] + 1] = 1
        mask[0, pasts[0] + 1:] = 0
        inputs["position_ids"][...] = pasts[0]
        for name, value in self.beam_inputs.items():
            inputs[name][...] = value
        self.step.infer()
        return self.step.get_tensor("logits").data[:, -1]  # (1, V)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def text_before_image(ids: list[int]) -> int:
    """How many ids come before the first image position (all of them in a text-only chat)."""
    return ids.index(IMAGE_TOKEN_INDEX) if IMAGE_TOKEN_INDEX in ids else len(ids)
