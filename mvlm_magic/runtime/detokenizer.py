"""Stream an answer's text token by token, ending with exactly the text the official code prints.

The official answer is `decode(new_ids, skip_special_tokens=True).strip()` with a trailing `</s>` removed.
Decoding tokens one at a time and concatenating gets it wrong: SentencePiece drops
the `▁` space of a lone piece, and a character split over byte-fallback pieces (`<0xE6><0x97><0xA5>`)
decodes as U+FFFD until its last byte arrives. So each push decodes the whole answer so far and emits
only the part that no later token can change:

* leading whitespace is never emitted (the answer is stripped);
* a trailing run of U+FFFD is held back (it may still become a character);
* trailing whitespace and a trailing piece of `</s>` ("<", "</", "</s", "</s>") are held back until
  other text follows; `flush()` then emits what remains of the final answer.

The concatenation of everything returned equals `answer_text(tokenizer, ids)`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import MvlmError
from .tokenizer import SEP2, Tokenizer

REPLACEMENT_CHARACTER = "\ufffd"


def answer_text(tokenizer: Tokenizer, ids: Iterable[int]) -> str:
    """The final answer for generated ids: decoded without special tokens, stripped, trailing `</s>` removed."""
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    if text.endswith(SEP2):
        text = text[: -len(SEP2)].strip()
    return text


def _stable_prefix(text: str) -> str:
    """The part of a partial answer that later tokens cannot change (the text is already left-stripped)."""
    text = text.rstrip(REPLACEMENT_CHARACTER).rstrip()
    for length in range(len(SEP2), 0, -1):
        if text.endswith(SEP2[:length]):
            return text[:-length].rstrip()
    return text


class IncrementalDetokenizer:
    """Turns generated token ids into text chunks as they arrive; one instance per answer."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._pieces: list[str] = []
        self._ids: list[int] = []
        self._emitted = ""
        self._finished = False

    @property
    def ids(self) -> list[int]:
        """All ids pushed so far."""
        return list(self._ids)

    @property
    def text(self) -> str:
        """All text returned so far."""
        return self._emitted

    def push(self, token_id: int) -> str:
        """Add one generated id; return the new text it makes final (often "")."""
        if self._finished:
            raise MvlmError("this detokenizer was flushed; create a new IncrementalDetokenizer for the next answer.")
        token_id = int(token_id)
        piece = self._tokenizer.piece(token_id)  # checks the id is in the vocabulary
        self._ids.append(token_id)
        if token_id in self._tokenizer.special_ids:
            return ""
        self._pieces.append(piece)
        stable = _stable_prefix(self._tokenizer.decode_pieces(self._pieces).lstrip())
        return self._emit(stable)

    def flush(self) -> str:
        """End of the answer: return whatever of the final answer text was still held back."""
        if self._finished:
            return ""
        self._finished = True
        return self._emit(answer_text(self._tokenizer, self._ids))

    def _emit(self, text: str) -> str:
        if len(text) <= len(self._emitted) or not text.startswith(self._emitted):
            return ""
        new, self._emitted = text[len(self._emitted) :], text
        return new
