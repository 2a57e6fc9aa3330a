"""Bad input to a magic is one line: a plain `UsageError`, which IPython prints without a traceback.

A subclass of UsageError would get a traceback (ipython/ipython#14024), so our own errors are turned into it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from IPython.core.error import UsageError

from ..errors import MvlmError

NO_MODEL = "no model loaded; run %mvlm_load first (e.g. %mvlm_load mobilevlm-v2-1.7b)."
EMPTY_QUESTION = ("the question is empty: write it on the lines below %%mvlm_ask "
                  "(the magic's own line takes only a picture and options).")
ASK_IS_A_CELL_MAGIC = "%%mvlm_ask is a cell magic: put %%mvlm_ask [image] on the first line and the question below it."


@contextmanager
def user_errors():
    """Our own errors are user mistakes: show their one line, no traceback."""
    try:
        yield
    except MvlmError as error:
        raise UsageError(str(error)) from None


# `%mvlm_ask What colour is the flower?`: a line magic with words that ends in `?` would reach IPython's object
# inspector ("Object `flower` not found."). The magic itself says what was meant. `%mvlm_ask?` alone stays help.
# An empty `%%mvlm_ask` cell would get IPython's "Did you mean the line magic %mvlm_ask?", which is wrong here.
_MISUSED = re.compile(r"^(\s*)%(mvlm_\w+)[ \t]+(\S.*\?)[ \t]*$")


def reach_our_help(lines: list[str]) -> list[str]:
    """An input transformer (IPython's cleanup stage, before its help syntax): such a line calls our magic."""
    def rewrite(line: str) -> str:
        match = _MISUSED.match(line.rstrip("\n"))
        if not match:
            return line
        indent, name, rest = match.groups()
        return f"{indent}get_ipython().run_line_magic({name!r}, {rest!r})\n"

    if lines and lines[0].startswith("%%"):
        if lines[0].startswith("%%mvlm_") and not "".join(lines[1:]).strip():
            return lines + ["\n"]  # a body that is only blank: our magic then says where the question goes
        return lines  # a cell magic's body is its own text
    return [rewrite(line) for line in lines]
