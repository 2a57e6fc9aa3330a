"""Who is listening: a live widget front end, a kernel client that only records outputs, or a terminal.

    "widget"   JupyterLab / Notebook / VS Code: widgets render and their buttons send clicks back,
               so answers stream in a background thread and Stop works.
    "display"  a kernel whose client cannot interact (nbclient, nbconvert --execute, papermill): the
               answer runs blocking and its display is updated as text, so the saved notebook holds it.
    "print"    no kernel (terminal IPython, a plain InteractiveShell): the answer is printed as it comes.

A kernel cannot ask its client whether it renders widgets. Two signals it does get: the
`jupyter.widget.control` comm, which ipywidgets 8 front ends open to restore widget state (only if
ipywidgets was imported in the kernel by then, so its absence proves nothing), and `allow_stdin` on
each execute request, which interactive clients set and nbclient clears (`kc.allow_stdin = False`).
"""

from __future__ import annotations

WIDGET, DISPLAY, PRINT = "widget", "display", "print"


def detect(shell) -> str:
    """WIDGET, DISPLAY or PRINT for the front end `shell` answers to now."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return PRINT
    from ipywidgets import Widget

    if Widget._control_comm is not None or getattr(kernel, "_allow_stdin", False):
        return WIDGET
    return DISPLAY
