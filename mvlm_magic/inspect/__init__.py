"""See inside the model: what it gets of a picture (`model_view`), for a class to look at.

    from mvlm_magic.inspect import model_view
    model_view(engine, img)          # the picture as the model gets it, with its patch and image-token grids

Torch-free: it needs only the engine's facts (picture size, mean colour, image tokens) and the runtime's own
preprocessing, so what is drawn is exactly what the model is fed.
"""

from .model_view import ModelView, grid_png, model_view

__all__ = ["ModelView", "grid_png", "model_view"]
