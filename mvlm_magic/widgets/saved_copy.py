"""A saved copy beside a widget that stays live: what a notebook reopened without its kernel shows in its place.

    copy = SavedCopy(panel, panel.static_copy)   # in the widget's __init__: marks the widget
    copy.display()                               # in its _ipython_display_: the widget, then its copy
    copy.refresh()                               # whenever what the copy shows has changed (any thread)

A widget lives in the kernel: JupyterLab saves no widget state unless its "Save Widget State Automatically"
setting is on, so a saved notebook reopened without the kernel reads "Error displaying widget: model not found"
where the widget was (its renderer has no fallback to the other formats of the same output). An AnswerView
replaces its output by its static copy once its answer ends; the AskPanel and the model view cannot, since
they stay usable after. So they are displayed as two outputs: the widget, and its static copy (Markdown and
plain text) under a display id of its own, updated by that id. The copy's style rules hide it while the live
widget is on the page, and hide the widget's output once it is not. Where styles do not apply (an
untrusted notebook, nbviewer, GitHub, a front end without `:has()`) the copy simply shows (JupyterLab and
Notebook 7 render no widget output of an untrusted cell); a notebook to hand out keeps only the copies
(`mvlm handout`, handout.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from ..handout import COPY_CLASS  # the copies' class, by which `mvlm handout` finds them

LIVE_CLASS = "mvlm-live-"  # + the copy's id: the live widget's class

# Two rules per copy, by its classes. While the page holds the live widget (`body:has(.{live})`), the copy goes
# (in JupyterLab and Notebook 7 its whole output row). In JupyterLab and Notebook 7, the output row just before
# the copy's is the widget's: unless it holds the live widget, it goes too, whether it reads "Loading widget..."
# or "Error displaying widget: model not found".
STYLE = (
    "<style>"
    "body:has(.{live}) .{copy},"
    " body:has(.{live}) .jp-OutputArea-child:has(.{copy}),"
    " .jp-OutputArea-child:has(+ .jp-OutputArea-child .{copy}):not(:has(.{live}))"
    " {{display: none}}"
    "</style>"
)


class SavedCopy:
    """The static copy displayed beside `widget`; `static_copy()` returns its outputs (text/markdown, text/plain)."""

    def __init__(self, widget, static_copy: Callable[[], dict]):
        self.widget, self.static_copy = widget, static_copy
        self.id = uuid.uuid4().hex[:16]
        self.live_class, self.copy_class = LIVE_CLASS + self.id, COPY_CLASS + self.id
        self.displayed = False
        widget.add_class(self.live_class)

    def bundle(self) -> dict:
        copy = self.static_copy()
        # An HTML block, blank lines, the Markdown, blank lines, its end: CommonMark keeps the Markdown inside.
        # (overflow-wrap: a long word, or a URL, wraps as in the live widget)
        start = f'<div class="{self.copy_class}" style="overflow-wrap:anywhere">'
        style = STYLE.format(live=self.live_class, copy=self.copy_class)
        markdown = f'{style}\n\n{start}\n\n{copy.get("text/markdown", "")}\n\n</div>'
        return {**copy, "text/markdown": markdown}

    def display(self) -> None:
        """The widget's own output, then the copy's."""
        from IPython.display import display

        live = {kind: data for kind, data in self.widget._repr_mimebundle_().items() if kind != "text/plain"}
        display(live, raw=True)  # no text form: where no widget renders, the copy below is the text
        display(self.bundle(), raw=True, display_id=self.id)
        self.displayed = True

    def refresh(self) -> None:
        """Show the copy as it is now (safe from a thread: an output is updated by its display id)."""
        if self.displayed:
            from IPython.display import update_display

            update_display(self.bundle(), display_id=self.id, raw=True)
