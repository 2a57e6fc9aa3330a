"""Choose the next token from the model's logits: greedy by default, or seeded sampling.

The official MobileVLM inference is greedy (temperature 0). Sampling follows Hugging Face's order and
rules so that settings mean what users expect from `generate()`: repetition penalty, then temperature,
then top-k, then top-p, then a draw. Draws come from numpy's PCG64 with the given seed, one uniform
number per token, so the same seed and logits give the same tokens on every machine.

Only numpy is used: this runs where torch is absent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import MvlmError


@dataclass
class GenerationConfig:
    """How to generate an answer. The defaults reproduce the official greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks force a fixed answer length
    alternatives: int = 0  # keep each answer token's probability and this many likeliest tokens (0 = off)

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise MvlmError(f"max_new_tokens must be a whole number >= 1, not {self.max_new_tokens!r}.")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise MvlmError(f"temperature must be >= 0 (0 means greedy), not {self.temperature!r}.")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise MvlmError(f"top_p must be in (0, 1] (1 turns it off), not {self.top_p!r}.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise MvlmError(f"top_k must be a whole number >= 0 (0 turns it off), not {self.top_k!r}.")
        penalty = self.repetition_penalty
        if not _is_real(penalty) or not math.isfinite(penalty) or penalty <= 0:
            raise MvlmError(f"repetition_penalty must be > 0 (1 turns it off), not {self.repetition_penalty!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise MvlmError(f"seed must be a whole number >= 0 or None, not {self.seed!r}.")
        stops = (self.stop_strings,) if isinstance(self.stop_strings, str) else tuple(self.stop_strings)
        if not all(isinstance(s, str) and s for s in stops):
            raise MvlmError(f"stop_strings must be non-empty strings, not {self.stop_strings!r}.")
        self.stop_strings = stops
        top = self.alternatives
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
            raise MvlmError(f"alternatives must be a whole number from 0 (off) to 20, not {top!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class Sampler:
    """Picks token ids one at a time according to a GenerationConfig; holds the random generator."""

    def __init__(self, config: GenerationConfig | None = None):
        self.config = config if config is not None else GenerationConfig()
        self._rng = np.random.Generator(np.random.PCG64(self.config.seed))

    def next_token(self, logits: np.ndarray, previous_ids: Sequence[int] = ()) -> int:
        """The next token id for one position's logits, shape (vocab,).

        `previous_ids` are the ids the repetition penalty looks at (ids outside the vocabulary, such as
        the image placeholder -200, are ignored).
        """
        logits = np.asarray(logits)
        if logits.ndim != 1 or logits.size == 0:
            raise MvlmError(f"logits must be one row of shape (vocab,), not shape {logits.shape}.")
        config = self.config
        if config.repetition_penalty != 1.0:
            logits = _penalize_repetition(logits.astype(np.float64), previous_ids, config.repetition_penalty)
        if config.greedy:
            return int(np.argmax(logits))  # first maximum, as torch.argmax
        # Temperature scaling keeps the order, so top-k can pick candidates before it, on fewer numbers.
        candidates = _top_k_candidates(logits, config.top_k)
        scores = (logits if candidates is None else logits[candidates]).astype(np.float64) / config.temperature
        if not np.isfinite(scores.max()):
            raise MvlmError("the model returned no finite logits to sample from; check the model files.")
        probs = _softmax(scores)
        if config.top_p < 1.0:
            order = _top_p_order(probs, config.top_p)
            probs = probs[order]
            candidates = order if candidates is None else candidates[order]
        drawn = self._draw(probs)
        return int(drawn if candidates is None else candidates[drawn])

    def _draw(self, probs: np.ndarray) -> int:
        """Inverse-CDF draw with one uniform number, so a seed fixes the whole token sequence."""
        cumulative = np.cumsum(probs)
        position = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        return min(position, probs.size - 1)


def _penalize_repetition(scores: np.ndarray, previous_ids: Sequence[int], penalty: float) -> np.ndarray:
    """Hugging Face's rule: each distinct earlier id's logit is multiplied by the penalty if negative,
    divided by it otherwise, so a penalty > 1 always makes repeating less likely."""
    ids = np.unique(np.asarray(list(previous_ids), dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < scores.size)]
    if ids.size:
        picked = scores[ids]
        scores[ids] = np.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def _top_k_candidates(scores: np.ndarray, top_k: int) -> np.ndarray | None:
    """Indices of the top_k highest scores, plus any tied with the k-th (as HF keeps ties); None = all."""
    if top_k <= 0 or top_k >= scores.size:
        return None
    threshold = scores[np.argpartition(scores, scores.size - top_k)[scores.size - top_k :]].min()
    return np.flatnonzero(scores >= threshold)


def _softmax(scores: np.ndarray) -> np.ndarray:
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


def _top_p_order(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices into probs of the smallest most-probable set whose total is >= top_p, most probable first
    (at least one token).

    Only tokens above (1 - top_p) / vocab are sorted: any token at or below it lies in a tail of total
    probability <= vocab * (1 - top_p) / vocab, which top-p removes anyway. That usually spares the full sort.
    """
    return _nucleus(probs, np.flatnonzero(probs > (1.0 - top_p) / probs.size), top_p)


def _nucleus(probs: np.ndarray, indices: np.ndarray, top_p: float) -> np.ndarray:
    ordered = indices[np.argsort(-probs[indices], kind="stable")]
    keep = int(np.searchsorted(np.cumsum(probs[ordered]), top_p, side="left")) + 1
    return ordered[: min(keep, ordered.size)]
