"""The notebook layer: the IPython magics and what they need around them, one module per job.

    magics.py       the Magics class: options, settings, each magic parses its line and delegates
    load.py         what %mvlm_load does: the panel, --list / --delete, loading with progress
    ask.py          what %%mvlm_ask does: picture and question, the conversation, the answer's display
    cell.py         what a %%mvlm_ask cell asks about: its picture and its question
    last_image.py   the last picture the notebook displayed
    output_mode.py  who is listening: a widget front end, a recording client, or a terminal
    printed.py      answers printed as plain text, where no kernel listens
    usage_errors.py bad input as one line (a plain UsageError, no traceback)

Importing this package imports nothing; `%load_ext mvlm_magic` imports `magics.py`, which needs
IPython and traitlets only.
"""
