"""Small PNG previews of the picture asked about (PIL only; anything PIL cannot read gets no preview)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

THUMBNAIL_SIZE = 160  # pixels, longest side
THUMBNAIL_ALT = "the picture asked about"  # what a screen reader says for the thumbnail


def to_pil(image):
    """A PIL image from what the engine accepts (PIL, path, bytes, HxW/HxWx3 array), or None."""
    from PIL import Image

    try:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, (str, Path)):
            return Image.open(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return Image.open(io.BytesIO(bytes(image)))
        if hasattr(image, "__array_interface__"):
            import numpy as np

            array = np.asarray(image)
            if array.dtype != np.uint8:
                floats = array.dtype.kind == "f"
                array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8) if floats else array.astype(np.uint8)
            return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    except Exception:  # a preview is a nicety; the engine reports unreadable pictures properly
        return None
    return None


def thumbnail_png(image, size: int = THUMBNAIL_SIZE) -> bytes | None:
    picture = to_pil(image)
    if picture is None:
        return None
    try:
        small = picture.copy()
        small.thumbnail((size, size))
        if small.mode not in ("RGB", "RGBA", "L"):
            small = small.convert("RGBA" if "A" in small.getbands() else "RGB")
        buffer = io.BytesIO()
        small.save(buffer, format="PNG")
        return buffer.getvalue()
    except Exception:
        return None


def img_tag(png: bytes, alt: str = THUMBNAIL_ALT) -> str:
    """An <img> holding the PNG itself (a data URI), so it shows without a kernel or a file next to the notebook."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" style="max-width:100%;height:auto">'
