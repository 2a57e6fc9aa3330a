"""Notebook widgets for asking questions about pictures; installed as `mvlm_magic.widgets`.

    from mvlm_magic.widgets import LoadPanel, AskPanel, AnswerView
    panel = LoadPanel(); panel              # pick a model, device and compression; Load
    AskPanel(panel.engine)                  # upload a picture or pick a variable, ask, follow up

They take any engine that follows the small protocol in `protocol.py` and import no model code.
"""

from .answer_view import AnswerView
from .ask_panel import AskPanel
from .batch_view import BatchView
from .load_panel import LoadPanel

__all__ = ["AnswerView", "AskPanel", "BatchView", "LoadPanel"]
