"""Answers as plain text, for terminal IPython and shells with no kernel (load progress: `mvlm_magic.printing`)."""

from __future__ import annotations

import sys
import threading

from ..printing import answer_stats, tokens_table


class PrintedAnswer:
    """Prints the answer as it streams (blocking; Ctrl-C stops the answer, not the session)."""

    def __init__(self, file=None, show_tokens: bool = False):
        self.file = file
        self.show_tokens = show_tokens
        self.text = ""
        self.answer = None
        self.done = threading.Event()

    def stream(self, stream, *, lock: threading.Lock | None = None) -> PrintedAnswer:
        out = self.file or sys.stdout  # looked up late: IPython and pytest swap sys.stdout
        if lock is not None and not lock.acquire(blocking=False):
            print("(waiting for the answer above to finish…)", file=out, flush=True)
            lock.acquire()
        try:
            try:
                for chunk in stream:
                    self.text += chunk
                    print(chunk, end="", file=out, flush=True)
            except KeyboardInterrupt:
                stream.stop()
            self.answer = stream.result()
            if self.answer.text.startswith(self.text):
                print(self.answer.text[len(self.text):], end="", file=out)
            self.text = self.answer.text
            print(f"\n[{answer_stats(self.answer)}]", file=out, flush=True)
            if self.show_tokens and self.answer.tokens:
                print(tokens_table(self.answer.tokens), file=out, flush=True)
        finally:
            if lock is not None:
                lock.release()
            self.done.set()
        return self

    def wait(self, timeout: float | None = None):
        self.done.wait(timeout)
        return self.answer

