"""What the model sees: the picture padded to a square with the mean colour and resized to 336 x 336 (at real
pixels, beside the original), with the vision tower's patch grid or the projector's image-token grid over it.

MobileVLM's CLIP cuts the 336 x 336 picture into 24 x 24 patches of 14 pixels; the projector (LDP v1 and v2 alike)
halves each side, so the language model gets 12 x 12 = 144 image tokens, each standing for 28 x 28 pixels. The
grids are derived from the export's own numbers (picture size, image tokens), so they hold for any export.
"""

from __future__ import annotations

import base64
import io
import math

import ipywidgets as w
import numpy as np
from PIL import Image, ImageDraw

from ..errors import MvlmError
from ..printing import token_label
from ..runtime.preprocess import model_pixels
from ..widgets.messages import escape, status_html
from ..widgets.saved_copy import SavedCopy
from ..widgets.thumbnail import img_tag, to_pil

GRIDS = {"none": "no grid", "patches": "patches", "tokens": "image tokens"}
GRID_COLOURS = {"patches": (255, 255, 255, 150), "tokens": (255, 200, 0, 230)}
ORIGINAL_ALT = "the original picture"
MODEL_ALT = "the picture as the model gets it"


def token_side(engine) -> int:
    """Image tokens per side: 12 for MobileVLM's 144."""
    side = math.isqrt(int(engine.num_image_tokens))
    return side if side * side == engine.num_image_tokens else 0


def grid_png(pixels: np.ndarray, cells: int = 0, colour=(255, 200, 0, 230)) -> bytes:
    """The pixels (S, S, 3) as a PNG, with a `cells` x `cells` grid of 1-pixel lines over them (0: no grid)."""
    picture = Image.fromarray(pixels).convert("RGBA")
    if cells:
        overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
        draw, size = ImageDraw.Draw(overlay), picture.width
        for i in range(1, cells):
            at = round(i * size / cells)
            draw.line([(at, 0), (at, size - 1)], fill=colour)
            draw.line([(0, at), (size - 1, at)], fill=colour)
        picture = Image.alpha_composite(picture, overlay)
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap_png(pixels: np.ndarray, heat: np.ndarray, cells: int = 0) -> bytes:
    """The pixels (S, S, 3) darkened where `heat` (side, side) is low and lit red where it is high (the map is
    scaled to its own maximum), with an optional grid."""
    size, side = pixels.shape[0], heat.shape[0]
    scaled = heat / heat.max() if heat.max() > 0 else heat
    block = np.kron(scaled, np.ones((size // side, size // side)))  # one value per pixel of its image token
    block = np.pad(block, ((0, size - block.shape[0]), (0, size - block.shape[1])), mode="edge")[..., None]
    red = np.array([255, 40, 40], dtype=np.float64)
    shown = pixels * (0.5 + 0.5 * block) * (1 - 0.55 * block) + red * 0.55 * block  # dim where unseen, red where seen
    picture = np.clip(np.rint(shown), 0, 255).astype(np.uint8)
    return grid_png(picture, cells, GRID_COLOURS["tokens"])


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


class ModelView(w.VBox):
    """The original picture beside the model's 336 x 336 input, with a grid toggle (none, patches, image tokens)."""

    def __init__(self, engine, image, grid: str = "tokens", attention=None):
        size, tokens = int(engine.image_size), token_side(engine)
        self.attention = attention  # an AnswerAttention: where the answer looked, or None
        self.pixels = model_pixels(image, size, engine.image_mean)  # (S, S, 3) uint8: exactly what is fed
        self.cells = {"none": 0, "patches": 2 * tokens, "tokens": tokens}  # the projector halves each side
        self.pngs = {name: grid_png(self.pixels, cells, GRID_COLOURS.get(name, (0, 0, 0, 0)))
                     for name, cells in self.cells.items()}
        background = tuple(int(m * 255) for m in engine.image_mean)
        original = to_pil(image)
        self.original_png = None
        if original is not None:
            shown = original.convert("RGB")
            shown.thumbnail((size, size))
            self.original_png = _png(shown)
        self.caption = (f"what the model gets: the picture padded to a square with the mean colour {background} and "
                        f"resized to {size} x {size}; its vision tower cuts it into {self.cells['patches']} x "
                        f"{self.cells['patches']} patches of {size // max(self.cells['patches'], 1)} pixels, and "
                        f"the projector makes {tokens} x {tokens} = {tokens * tokens} image tokens of "
                        f"{size // max(tokens, 1)} x {size // max(tokens, 1)} pixels.")
        self.original = w.HTML(self._img(self.original_png, ORIGINAL_ALT) if self.original_png else "")
        self.model_input = w.HTML()
        self.grid = w.ToggleButtons(options=[(label, name) for name, label in GRIDS.items()], value=grid,
                                    description="grid", style={"button_width": "110px"})
        self.grid.observe(lambda change: self._show(), names="value")
        controls = [self.grid]
        if attention is not None:
            # Which answer token's attention (a click on a token), or the whole answer's; which layer and head.
            self.token = w.ToggleButtons(options=[("whole answer", -1)] + [
                (token_label(text), n) for n, text in enumerate(attention.texts)], value=-1,
                description="looked", style={"button_width": "auto"})
            self.layer = w.Dropdown(options=[("all layers", -1)] + [(f"layer {i}", i) for i in
                                                                     range(attention.layers)], value=-1,
                                    description="layer", layout=w.Layout(width="180px"))
            self.head = w.Dropdown(options=[("all heads", -1)] + [(f"head {i}", i) for i in
                                                                   range(attention.maps.shape[1])], value=-1,
                                   description="head", layout=w.Layout(width="180px"))
            for control in (self.token, self.layer, self.head):
                control.observe(lambda change: self._show(), names="value")
            controls += [self.token, w.HBox([self.layer, self.head])]
        self._show()
        self.original.layout.margin = "0 16px 0 0"
        pictures = w.HBox([self.original, self.model_input], layout=w.Layout(align_items="flex-start"))
        # (a block of its own line height: the widget's 28 px line height spread the caption's three lines apart)
        caption = w.HTML(f'<div style="line-height:1.4">{status_html(self.caption)}</div>')
        super().__init__([pictures, *controls, caption])
        self.saved_copy = SavedCopy(self, self.static_copy)

    @staticmethod
    def _img(png: bytes, alt: str) -> str:
        # At real pixels: one pixel of the model's input is one pixel on the screen.
        return img_tag(png, alt).replace("max-width:100%;height:auto", "image-rendering:pixelated")

    def heat(self) -> np.ndarray | None:
        """The attention map the controls select (None without an answer)."""
        if self.attention is None:
            return None
        pick = [None if control.value == -1 else control.value for control in (self.token, self.layer, self.head)]
        return self.attention.heatmap(token=pick[0], layer=pick[1], head=pick[2])

    def _show(self) -> None:
        grid = self.grid.value
        heat = self.heat()
        if heat is None:
            self.model_input.value = self._img(self.pngs[grid], f"{MODEL_ALT}, {GRIDS[grid]}")
        else:
            png = heatmap_png(self.pixels, heat, self.cells[grid])
            self.model_input.value = self._img(png, f"{MODEL_ALT}, lit where the answer looked")

    def static_copy(self) -> dict:
        """Markdown (both pictures, the token grid, the caption), plain text and the model's input as a PNG, for
        a saved notebook and viewers without widgets."""
        pictures = [self._img(self.original_png, ORIGINAL_ALT)] if self.original_png else []
        caption, png = self.caption, self.pngs["tokens"]
        if self.attention is not None:
            # the token grid stays: the lit cells are the image tokens the caption counts
            png = heatmap_png(self.pixels, self.attention.heatmap(), self.cells["tokens"])
            caption += (" Lit red: where the whole answer looked (its attention on the image tokens, averaged over "
                        "all layers and heads).")
            pictures.append(self._img(png, f"{MODEL_ALT}, {GRIDS['tokens']}, lit where the answer looked"))
        else:
            pictures.append(self._img(png, f"{MODEL_ALT}, {GRIDS['tokens']}"))
        return {"text/markdown": " ".join(pictures) + f"\n\n*{escape(caption)}*", "text/plain": caption,
                "image/png": base64.b64encode(png).decode("ascii")}

    def _ipython_display_(self) -> None:
        """The view, and its static copy beside it for a saved notebook (see widgets/saved_copy.py)."""
        self.saved_copy.display()


def model_view(engine, image=None, grid: str = "tokens", *, chat=None, answer=None) -> ModelView:
    """The picture as `engine` gets it, beside the original, with a grid toggle. Given a `chat` (and one of its
    answers; default its latest), also where that answer looked: a heatmap over the image tokens for the whole
    answer or one of its tokens, averaged over all layers and heads or for one."""
    from .attention import answer_attention

    image = chat.image if image is None and chat is not None else image
    if image is None:
        raise MvlmError("model_view needs a picture, or a chat about one.")
    attention = answer_attention(engine, chat, answer) if chat is not None else None
    return ModelView(engine, image, grid, attention)
