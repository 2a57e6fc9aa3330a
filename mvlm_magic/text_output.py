"""Answers and load progress as plain text, for terminal IPython and shells with no kernel."""

from __future__ import annotations

import sys
import threading

FINISH_NOTES = {"stopped": "stopped", "max_new_tokens": "max tokens reached", "context": "context full"}


class PrintedAnswer:
    """Prints the answer as it streams (blocking; Ctrl-C stops the answer, not the session)."""

    def __init__(self, file=None):
        self.file = file
        self.text = ""
        self.answer = None
        self.done = threading.Event()

    def stream(self, stream, *, lock: threading.Lock | None = None) -> "PrintedAnswer":
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
            note = FINISH_NOTES.get(self.answer.finish_reason)
            print(f"\n[{note + ' · ' if note else ''}{self.answer.timings.summary()}]", file=out, flush=True)
        finally:
            if lock is not None:
                lock.release()
            self.done.set()
        return self

    def wait(self, timeout: float | None = None):
        self.done.wait(timeout)
        return self.answer


def print_progress(stage: str, fraction: float | None, message: str = "") -> None:
    share = f" {fraction:4.0%}" if fraction is not None else ""
    print(f"[{stage}{share}] {message}", flush=True)

