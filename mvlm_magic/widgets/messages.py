"""HTML and Markdown for the widgets: errors as the one line a student reads (no traceback in a widget), escaped text.

Colours are JupyterLab's theme variables, so the text keeps its contrast in the light and the dark theme
(>= 4.5:1, checked in tests/test_browser.py); the fallbacks serve front ends without them.
"""

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


ERROR_STYLE = "color:var(--jp-error-color1,#b00020)"
STATUS_STYLE = "color:var(--jp-content-font-color2,inherit);font-size:var(--jp-ui-font-size1,13px)"


def error_html(message: str) -> str:
    return f'<span style="{ERROR_STYLE}">⚠ {escape(message)}</span>' if message else ""


def status_html(message: str) -> str:
    """A status or stats line: quieter than the answer, still readable on a projector."""
    return f'<span style="{STATUS_STYLE}">{escape(message)}</span>'


CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def text_html(text: str, font_scale: float = 1.0) -> str:
    """Answer text as HTML that keeps line breaks and wraps long lines (control characters would show as boxes)."""
    return answer_html(html.escape(CONTROL_CHARACTERS.sub("", text)), font_scale)


def answer_html(inner: str, font_scale: float = 1.0) -> str:
    """The answer's box around HTML that is already escaped.

    The size is the notebook's text size times `font_scale` (widgets default to a smaller UI size); aria-live
    lets a screen reader read the answer as it grows.
    """
    style = ("white-space:pre-wrap;word-break:break-word;line-height:1.5;color:var(--jp-content-font-color1,inherit);"
             f"font-size:calc(var(--jp-content-font-size1,14px) * {font_scale:g})")
    return f'<div aria-live="polite" style="{style}">{inner}</div>'


MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark
LEADING_SPACES = re.compile(r"^[ \t]+", re.MULTILINE)


def text_markdown(text: str) -> str:
    """Text as one line of Markdown that renders verbatim in every viewer (JupyterLab, nbconvert, VS Code).

    CommonMark reads a backslash before any ASCII punctuation as that character, so escaping all of them means
    no character can start emphasis, a heading, a list, a link, a table, math ($) or HTML. Line breaks become
    <br> (so blank lines cannot end a paragraph) and leading spaces no-break spaces (so they cannot make code).
    """
    visible = CONTROL_CHARACTERS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    visible = LEADING_SPACES.sub(lambda m: "\u00a0" * len(m.group().expandtabs(4)), visible)
    return MARKDOWN_PUNCTUATION.sub(r"\\\1", visible).replace("\n", "<br>")


def html_table(columns, rows) -> str:
    """A table in HTML; the cells are HTML already (escape text with `escape`)."""
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px;vertical-align:top'>{cell}</td>" for cell in row)
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(columns, rows) -> str:
    """A table in Markdown; the cells are Markdown already (`text_markdown` escapes text, `|` included)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
