"""The words shared by every way an answer or a load is shown: the terminal (`mvlm`), printed notebook
output and the widgets. Plain Python, so each of those layers may import it.
"""

from __future__ import annotations

import sys

from .errors import START_OVER

# Why an answer ended, where the reason is worth a word (eos and a stop string are the normal ends).
FINISH_NOTES = {"stopped": "stopped", "max_new_tokens": "max tokens reached",
                "context": f"the conversation is full: {START_OVER}"}


def answer_stats(answer) -> str:
    """The line under a finished answer: why it ended, if worth saying, then its timings."""
    note = FINISH_NOTES.get(answer.finish_reason)
    summary = answer.timings.summary()
    return f"{note} · {summary}" if note else summary


def token_label(text: str) -> str:
    """One token's text as a reader can see it: stripped, or its repr when it is only a space or a line break."""
    return text.strip() or repr(text)


def tokens_table(tokens, alternatives: int = 3) -> str:
    """An answer's tokens, one per line: the token, how sure the model was, and the likeliest it weighed."""
    width = max(len(token_label(t.text)) for t in tokens)
    lines = []
    for t in tokens:
        others = " | ".join(f"{token_label(a.text)} {a.probability:.2f}" for a in t.alternatives[:alternatives])
        mark = "" if t.likeliest else "  (sampled)"
        lines.append(f"  {token_label(t.text).ljust(width)}  {t.probability:.2f}  [{others}]{mark}")
    return "\n".join(lines)


def ready_line(engine, seconds: float) -> str:
    """The one line saying a model is ready (printed by %mvlm_load, shown by the load panel)."""
    how = "cached export, compiled only" if getattr(engine, "was_cached", False) else "exported and compiled"
    return f"{engine.name} is ready in {seconds:.1f} s ({how})."


def progress_line(stage: str, fraction: float | None, message: str = "") -> str:
    """A loader progress report as one line: `[stage  40%] message`."""
    share = f" {fraction:4.0%}" if fraction is not None else ""
    return f"[{stage}{share}] {message}"


def print_progress(stage: str, fraction: float | None, message: str = "", *, file=None) -> None:
    """A loader progress report printed (file None: stdout, looked up now)."""
    print(progress_line(stage, fraction, message), file=file, flush=True)


def stderr_progress(stage: str, fraction: float | None, message: str = "") -> None:
    """`print_progress` to stderr (looked up at each call, so a swapped sys.stderr is honoured)."""
    print_progress(stage, fraction, message, file=sys.stderr)
