"""The one exception type users see: a short message that says what was wrong and what to do."""


class MvlmError(Exception):
    """Bad input or an unusable model. The message is one line, shown without a traceback."""
