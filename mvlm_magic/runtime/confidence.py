"""How sure the model was of each answer token: its probability and the likeliest alternatives.

Asked for with `GenerationConfig(alternatives=k)` (`%%mvlm_ask --show-tokens`); the answer then carries
`answer.tokens`, one `TokenChoice` per answer token. The probabilities are the model's own (a softmax of its
logits at temperature 1, before any sampling setting), so they say how sure the *model* was;
the token that was picked is marked, and under sampling (temperature, top-p, top-k) it is not always the likeliest.
Nothing here runs unless asked: the decode loop only tests `config.alternatives`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .tokenizer import SPIECE_UNDERLINE, Tokenizer

MAX_ALTERNATIVES = 20


@dataclass(frozen=True)
class Alternative:
    id: int
    text: str
    probability: float


@dataclass(frozen=True)
class TokenChoice:
    """One answer token: `text` as it reads in the answer, `probability` the model gave it, and the `alternatives`
    it weighed (the likeliest first; the picked token is among them when it was likely enough)."""

    id: int
    text: str
    probability: float
    alternatives: list[Alternative] = field(default_factory=list)

    @property
    def likeliest(self) -> bool:
        """The picked token was the model's first choice (always so when greedy)."""
        return not self.alternatives or self.alternatives[0].id == self.id


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """The text one token adds to an answer: `▁` is a space, a byte piece `<0x0A>` its character."""
    piece = tokenizer.piece(token_id)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        value = int(piece[3:5], 16)
        return chr(value) if value < 0x80 else "\ufffd"  # one byte of a longer UTF-8 character
    return piece.replace(SPIECE_UNDERLINE, " ")


def choice(tokenizer: Tokenizer, logits: np.ndarray, token: int, k: int) -> TokenChoice:
    """The picked `token` and the `k` likeliest tokens of one position's logits (V,)."""
    scores = np.asarray(logits, dtype=np.float64)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    top = np.argpartition(-probs, k)[:k] if k < probs.size else np.arange(probs.size)
    top = top[np.argsort(-probs[top], kind="stable")]
    alternatives = [Alternative(int(i), token_text(tokenizer, int(i)), float(probs[i])) for i in top]
    return TokenChoice(int(token), token_text(tokenizer, token), float(probs[token]), alternatives)
