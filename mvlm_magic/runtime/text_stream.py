"""Generated ids -> the text a reader may see: the incremental detokenizer plus the stop rules.

Text is shown only once no later token can change it (detokenizer.py) and once it cannot be the start of a stop
string. An answer ends at a stop string of the caller's (cut there, never shown) or at the template's `</s>`
written as text: the official keyword check looks at the newest token's piece only.
"""

from __future__ import annotations

from .detokenizer import IncrementalDetokenizer, answer_text
from .tokenizer import SEP2, Tokenizer


class TextStream:
    """One answer's text. `push` a token and show what it returns; `stopped` says a stop rule ended the answer;
    `final()` is the answer's text and `unshown(final)` what of it was not shown yet."""

    def __init__(self, tokenizer: Tokenizer, stop_strings=()):
        self.tokenizer = tokenizer
        self.stops = tuple(stop_strings)
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.ids: list[int] = []
        self.text = ""  # the whole answer so far, stop strings not yet cut
        self.shown = ""  # what `push` has returned so far
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one generated id; return the text that may be shown now (often "")."""
        self.ids.append(token)
        self.text += self.detokenizer.push(token)
        if SEP2 in self.tokenizer.piece(token) or first_stop(self.text, self.stops) is not None:
            self.stopped = True
            return ""
        safe = len(self.text) - held_back(self.text, self.stops)
        chunk = self.text[len(self.shown):safe]
        self.shown += chunk
        return chunk

    def final(self) -> str:
        """The answer as the official code prints it, cut before the first stop string of the caller's."""
        text = answer_text(self.tokenizer, self.ids)
        cut = first_stop(text, self.stops) if self.stopped else None
        return text[:cut].strip() if cut is not None else text

    def unshown(self, final: str) -> str:
        """What of the final answer the reader has not been shown yet."""
        return final[len(self.shown):] if final.startswith(self.shown) else ""


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could be the start of a stop string (so must not be shown yet)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest
