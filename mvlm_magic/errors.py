"""The one exception type users see: a short message that says what was wrong and what to do."""


class MvlmError(Exception):
    """Bad input or an unusable model. The message is one line, shown without a traceback."""


# How to go on when a conversation fills the model's context: said by the error that refuses a question and by the
# note under an answer that the full context cut short.
START_OVER = "start a new one (%%mvlm_ask --new, %mvlm_reset, or a new chat)"
