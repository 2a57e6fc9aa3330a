"""Bad input to a magic is one line: a plain `UsageError`, which IPython prints without a traceback.

A subclass of UsageError would get a traceback (ipython/ipython#14024), so our own errors are turned into it.
"""

from __future__ import annotations

from contextlib import contextmanager

from IPython.core.error import UsageError

from ..errors import MvlmError

NO_MODEL = "no model loaded; run %mvlm_load first (e.g. %mvlm_load mobilevlm-v2-1.7b)."
EMPTY_QUESTION = "the question is empty; write it in the cell, on the lines below %%mvlm_ask."
ASK_IS_A_CELL_MAGIC = "%%mvlm_ask is a cell magic: put %%mvlm_ask [image] on the first line and the question below it."


@contextmanager
def user_errors():
    """Our own errors are user mistakes: show their one line, no traceback."""
    try:
        yield
    except MvlmError as error:
        raise UsageError(str(error)) from None
