"""Ask questions about images in Jupyter, answered by MobileVLM on OpenVINO.

    %load_ext mvlm_magic
    %mvlm_load mobilevlm-v2-1.7b
    %%mvlm_ask img
    What is in the picture?

This module stays light: `%load_ext` imports IPython and traitlets only; OpenVINO is imported when
a model is loaded, and torch only when a checkpoint has to be exported.
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython) -> None:
    """Register %mvlm_load, %%mvlm_ask and %mvlm_reset (called by `%load_ext mvlm_magic`)."""
    from .notebook.magics import load_extension

    load_extension(ipython)


def unload_ipython_extension(ipython) -> None:
    """Remove the magics and the display hook again (called by `%unload_ext` / `%reload_ext`)."""
    from .notebook.magics import unload_extension

    unload_extension(ipython)
