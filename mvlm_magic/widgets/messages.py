"""HTML for the widgets: errors as the one line a student reads (no traceback in a widget), escaped text."""

from __future__ import annotations

import html
import re


def one_line(error: BaseException) -> str:
    """The first line of the message; the type name is added when the message alone says too little."""
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else ""
    # Our own errors (MvlmError, UsageError) carry user messages; anything else is named so it can be searched.
    if type(error).__name__ in ("MvlmError", "UsageError") and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def escape(text: str | None) -> str:
    """Text for HTML; None reads as empty."""
    return html.escape(text or "")


def error_html(message: str) -> str:
    return f'<span style="color:#b00020">⚠ {escape(message)}</span>' if message else ""


CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def text_html(text: str) -> str:
    """Answer text as HTML that keeps line breaks and wraps long lines (control characters would show as boxes)."""
    visible = CONTROL_CHARACTERS.sub("", text)
    return f'<div style="white-space:pre-wrap;word-break:break-word">{html.escape(visible)}</div>'
