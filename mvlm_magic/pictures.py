"""Is this value a picture? One answer for `%%mvlm_ask` and the ask panel; plain Python (no numpy, no PIL import).

The kinds of picture the engine reads (`runtime.preprocess.load_image`): a PIL image, a numpy array,
encoded bytes (PNG, JPEG, ...) or a file path.
"""

from __future__ import annotations

from pathlib import Path

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# Array shapes a picture has: HxW (grey), HxWx1, HxWx3 (RGB), HxWx4 (RGBA).
PICTURE_CHANNELS = (1, 3, 4)


def is_picture(value, *, strict: bool = False) -> bool:
    """Whether `value` is one of the kinds of picture the engine reads.

    `strict` also asks that it look like one: an array has a picture's shape, a path names an existing
    file with a picture suffix. `%%mvlm_ask` asks without it, so a named value of the right kind reaches
    the loader, whose message says exactly what is wrong (a missing file, a text file, a 1-D array);
    the ask panel asks strictly, since it offers every variable that passes (any string would do).
    """
    if isinstance(value, type):
        return False  # a class (PIL's Image, numpy's ndarray) has the attributes below without being a picture
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if isinstance(value, (str, Path)):
        return not strict or (str(value).lower().endswith(PICTURE_SUFFIXES) and Path(value).is_file())
    if hasattr(value, "getbands"):  # a PIL image
        return True
    if hasattr(value, "__array_interface__"):
        shape = getattr(value, "shape", None)
        return not strict or (shape is not None and (len(shape) == 2 or (len(shape) == 3
                                                                          and shape[-1] in PICTURE_CHANNELS)))
    return False
