"""An answer as its tokens, each tinted by how sure the model was (`%%mvlm_ask --show-tokens`).

A token the model was sure of stays plain; the less sure, the stronger its tint. Hovering a token shows its
probability and the likeliest alternatives; a token that was sampled although another was likelier is underlined.
The same rendering serves the live widget (HTML) and the static copy a saved notebook keeps (HTML inside
Markdown, which JupyterLab, nbconvert and VS Code render with its colours and hover text).
Each token is duck-typed as `runtime.confidence.TokenChoice` (`text`, `probability`, `alternatives`, `likeliest`).
"""

from __future__ import annotations

import html

from ..printing import token_label
from .messages import CONTROL_CHARACTERS, text_markdown

# A translucent orange: readable on the light and the dark theme, as the text keeps the theme's own colour.
TINT = "255,140,0"
STRONGEST = 0.45  # the opacity for a token of probability 0: text keeps >= 4.5:1 contrast on the dark theme too
LEGEND = "tokens tinted by how unsure the model was (plain = sure); hover a token for the alternatives it weighed"


def tint(probability: float) -> str:
    return f"rgba({TINT},{STRONGEST * (1.0 - probability):.2f})"


def hover_text(token) -> str:
    """`p 0.55` then one line per alternative (`▸` marks the picked one)."""
    lines = [f"p {token.probability:.2f}" + ("" if token.likeliest else " (sampled; not the likeliest)")]
    for alternative in token.alternatives:
        mark = "▸" if alternative.id == token.id else " "
        lines.append(f"{mark} {token_label(alternative.text)}  {alternative.probability:.2f}")
    return "\n".join(lines)


def _style(token) -> str:
    underline = "" if token.likeliest else "text-decoration:underline dotted;"
    return f"background-color:{tint(token.probability)};border-radius:3px;{underline}"


def answer_texts(tokens):
    """(token, its text as the answer reads it): the answer's leading white space dropped, as its text is stripped
    (the first token of an answer usually begins with the tokenizer's space)."""
    started = False
    for token in tokens:
        text = CONTROL_CHARACTERS.sub("", token.text)
        if not started:
            text = text.lstrip()
            started = bool(text)
        yield token, text


def tokens_html(tokens) -> str:
    """The tokens as HTML spans (for the live widget, whose box keeps white space and wraps)."""
    spans = [f'<span title="{html.escape(hover_text(t))}" style="{_style(t)}">{html.escape(text)}</span>'
             for t, text in answer_texts(tokens)]
    return "".join(spans)


def tokens_markdown(tokens) -> str:
    """The tokens as HTML spans inside Markdown, each token's text escaped for Markdown (for the static copy).

    A token's leading space stays a plain space, where the line may wrap; only at the start of a line do spaces
    become no-break ones (text_markdown), which keep an indent. (Every token made no-break spaces before: the
    saved answer was one line that ran past the cell's right edge.)"""
    spans, line_start = [], True
    for t, text in answer_texts(tokens):
        if not line_start and text.startswith(" "):
            markdown = " " + text_markdown(text[1:])
        else:
            markdown = text_markdown(text)
        if text:
            line_start = text.endswith("\n")
        spans.append(f'<span title="{html.escape(hover_text(t))}" style="{_style(t)}">{markdown}</span>')
    return "".join(spans)
