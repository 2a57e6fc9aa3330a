"""A copy of a saved notebook to hand out: its widgets' outputs removed, their saved copies kept.

    mvlm handout lesson.ipynb                  # -> lesson.handout.ipynb beside it
    mvlm handout lesson.ipynb -o class/lesson.ipynb

A widget needs the kernel that made it. Where a notebook opens without it, a widget's output reads "Error
displaying widget: model not found"; the AskPanel and the model view keep a static copy beside their widget
(widgets/saved_copy.py) whose style rule hides that line in a trusted notebook. A notebook a teacher hands out
opens untrusted on every other machine: JupyterLab and Notebook 7 render no widget output there (only the copy
shows), but a front end that renders widgets whatever the trust may show the line. So the handout leaves out every
widget output (none can show without its kernel) and the saved widget state, and takes the style rule out of each
copy: it would hide whatever output comes before the copy once the widget's is gone. What is left is Markdown,
text and pictures, which every front end shows alike, trusted or not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import MvlmError
from .store import write_json

COPY_CLASS = "mvlm-copy-"  # + an id: the block that holds a widget's saved copy (widgets/saved_copy.py writes it)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
STYLE_RULE = re.compile(r"\A<style>.*?</style>\n\n", re.DOTALL)  # how SavedCopy.bundle starts a copy's Markdown


def handout(notebook: dict) -> tuple[dict, int, int]:
    """The notebook (nbformat 4 JSON) without widget outputs: (notebook, widgets whose saved copy stays, other
    widgets left out). The copies lose their style rule."""
    copied = widgets = 0
    for cell in notebook.get("cells", []):
        cell.get("metadata", {}).pop("trusted", None)  # a handout vouches for nothing: it reads well untrusted
        outputs, kept = cell.get("outputs", []), []
        for i, output in enumerate(outputs):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                widgets += 1
                continue
            markdown = _text(data.get("text/markdown", ""))
            if COPY_CLASS in markdown:  # a saved copy comes just after its widget's output (SavedCopy.display)
                data["text/markdown"] = STYLE_RULE.sub("", markdown)
                copied += i > 0 and WIDGET_VIEW in outputs[i - 1].get("data", {})
            kept.append(output)
        if outputs:
            cell["outputs"] = kept
    metadata = notebook.get("metadata", {})
    metadata.get("widgets", {}).pop(WIDGET_STATE, None)  # the state of widgets no output shows any more
    if not metadata.get("widgets", True):
        del metadata["widgets"]
    return notebook, copied, widgets - copied


def write_handout(path: Path | str, out: Path | str | None = None) -> tuple[Path, int, int]:
    """Read the notebook at `path`, write its handout to `out` (default: NAME.handout.ipynb beside it), atomically;
    returns (where, widgets whose saved copy stays, other widgets left out)."""
    path = Path(path)
    out = Path(out) if out is not None else path.with_name(f"{path.stem}.handout.ipynb")
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MvlmError(f"no notebook at {path}; give the path of a saved .ipynb file.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        why = type(error).__name__
        raise MvlmError(f"cannot read {path} as a notebook ({why}); give a saved .ipynb file.") from None
    if not isinstance(notebook, dict) or notebook.get("nbformat") != 4:
        raise MvlmError(f"{path} is not a notebook in Jupyter's format 4; save it from Jupyter first.")
    if out.resolve() == path.resolve():
        raise MvlmError(f"the handout would replace {path} itself; give another path with -o.")
    notebook, copied, other = handout(notebook)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, notebook, mode=path.stat().st_mode & 0o777)  # as readable as the notebook
    return out, copied, other


def _text(value) -> str:
    """An output's data as one string (nbformat keeps multi-line text as a list of lines, or as one string)."""
    return "".join(value) if isinstance(value, list) else value
