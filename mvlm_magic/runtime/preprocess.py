"""Picture -> the (1, 3, 336, 336) float32 tensor MobileVLM's vision tower expects.

The official pipeline (the checkpoints' `image_aspect_ratio: pad`) is PIL's `.convert("RGB")`, padding to a
square with the CLIP mean colour, then CLIPImageProcessor (openai/clip-vit-large-patch14-336): bicubic resize
of the shortest edge, centre crop, `uint8 * (1/255)`, `(x - mean) / std`. Every step here is the same
arithmetic in the same order, so the result is bit-identical to transformers' processor; bilinear
resizing or black padding would change the model's answers. One deliberate addition: EXIF orientation
is applied first, so photos taken on a phone are seen upright.

Only numpy and Pillow are used: this runs where torch and transformers are absent.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MvlmError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 336


def load_image(source) -> Image.Image:
    """Open a picture given as a PIL image, a path (str or Path), encoded bytes, or a numpy array.

    Arrays may be HxW or HxWx1 (grey), HxWx3 (RGB) or HxWx4 (RGBA), uint8 or float in [0, 1] (scaled
    to 255 and rounded).
    The picture is returned as PIL gives it (any mode); `preprocess_image` does the conversion.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (str, Path)):
        image = _open_path(Path(source))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _open_bytes(bytes(source), "the given bytes")
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    else:
        raise MvlmError(
            f"cannot read a picture from {type(source).__name__}; "
            "pass a PIL image, a file path, bytes or a numpy array."
        )
    if image.width == 0 or image.height == 0:
        raise MvlmError(f"the picture is {image.width}x{image.height} pixels; pass a picture with at least one pixel.")
    return image


def _open_path(path: Path) -> Image.Image:
    if not path.exists():
        raise MvlmError(f"picture file {path} does not exist; check the path.")
    if not path.is_file():
        raise MvlmError(f"{path} is not a file; pass the path of a picture file.")
    return _open_bytes(path.read_bytes(), str(path))


def _open_bytes(data: bytes, where: str) -> Image.Image:
    if not data:
        raise MvlmError(f"{where} is empty; pass a PNG, JPEG or other picture file.")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now, so a truncated file fails here and not deep in preprocessing
    except UnidentifiedImageError:
        raise MvlmError(
            f"{where} is not a readable picture (unknown format); pass a PNG, JPEG or other picture file."
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or damaged: PIL's reason helps here
        reason = str(error).split(" <")[0]
        raise MvlmError(
            f"{where} is not a readable picture ({reason}); pass a PNG, JPEG or other picture file."
        ) from None
    return image


def _from_array(array: np.ndarray) -> Image.Image:
    if array.size == 0:
        raise MvlmError(f"the picture array has shape {array.shape}, which holds no pixels; pass a non-empty array.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise MvlmError(f"a picture array must be HxW, HxWx3 or HxWx4, not shape {array.shape}; reshape it.")
    if np.issubdtype(array.dtype, np.floating):
        # Rounded, not truncated: a uint8 picture divided by 255 must come back unchanged.
        if not np.all(np.isfinite(array)) or array.min() < -1e-6 or array.max() > 1 + 1e-6:
            raise MvlmError("a float picture array must hold finite values in [0, 1]; scale it, or pass uint8 0..255.")
        array = np.rint(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise MvlmError(f"picture arrays must be uint8, or float in [0, 1], not {array.dtype}; convert it first.")
    return Image.fromarray(np.ascontiguousarray(array))  # HxW -> L, HxWx3 -> RGB, HxWx4 -> RGBA


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, then exactly PIL's `.convert("RGB")`, as the official code converts.

    PIL drops alpha rather than compositing it, ignores palette transparency and clips 16-bit and
    float values at 255; we keep all of that, since the model was trained on such conversions.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise MvlmError(
            f"cannot convert a {image.mode} picture to RGB ({error}); save it as PNG or JPEG first."
        ) from None
    except OSError as error:  # a lazily opened PIL image whose file turns out truncated or corrupt
        raise MvlmError(f"the picture could not be decoded ({error}); pass a complete picture file.") from None


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Centre the picture on a square canvas of side max(w, h) filled with `background` (MobileVLM's "pad")."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def shortest_edge_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to `shortest_edge`, as transformers computes it
    (`get_resize_output_image_size` with default_to_square=False: the long side is truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre crop an HxWxC array to size x size, with transformers' (H - size) // 2 offsets.

    After padding to a square and resizing the shortest edge this is a no-op; it is kept so the
    pipeline stays the processor's own.
    """
    height, width = pixels.shape[:2]
    if height < size or width < size:
        raise MvlmError(f"cannot crop {size}x{size} out of a {width}x{height} picture; resize it first.")
    top, left = (height - size) // 2, (width - size) // 2
    return pixels[top : top + size, left : left + size]


def preprocess_image(image, image_size: int = IMAGE_SIZE, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """The pixel tensor for one picture: float32, shape (1, 3, image_size, image_size).

    `image` may be anything `load_image` accepts. Steps: EXIF orientation, convert to RGB, pad to a
    square with the mean colour, bicubic resize of the shortest edge, centre crop, rescale by 1/255 in
    float64 rounded to float32 (as transformers does), then (x - mean) / std in float32.
    """
    if int(image_size) < 1:
        raise MvlmError(f"image_size must be a positive number of pixels, not {image_size}.")
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise MvlmError("mean and std must each have 3 values and std must not contain 0; use CLIP_MEAN and CLIP_STD.")
    rgb = to_rgb(load_image(image))
    background = tuple(int(m * 255) for m in mean)
    square = expand_to_square(rgb, background)
    resized = square.resize(shortest_edge_size(*square.size, image_size), resample=Image.BICUBIC)
    pixels = center_crop(np.asarray(resized), image_size)
    scaled = (pixels * (1 / 255)).astype(np.float32)
    normalized = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1))[None]
