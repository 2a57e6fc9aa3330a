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
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MvlmError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 336

# Shapes refused before anything of the padded square's size is made (a 475-byte 1x100000 PNG would otherwise
# ask for a 30 GB square). MobileVLM sees one 336x336 square: a picture 50 times longer than wide fills under 7
# of its pixels across, too few to show anything, so more elongated pictures are refused.
MAX_ASPECT = 50
# Padding a tall picture costs time quadratic in its long side (Pillow's horizontal pass runs over the whole
# padded width for every row): 32768 pixels, twice the long side of a 200-megapixel photo, still takes seconds.
MAX_SIDE = 32768
# Rows of the padded square resampled at once for a tall picture: 4M pixels (16 MB) keep memory small.
_STRIP_PIXELS = 1 << 22


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
    check_shape(image.width, image.height)
    return image


def check_shape(width: int, height: int) -> None:
    """Refuse pictures too elongated or too long to be worth padding to a square (MAX_ASPECT, MAX_SIDE)."""
    long, short = max(width, height), min(width, height)
    if long > MAX_ASPECT * short:
        raise MvlmError(
            f"the picture is {width}x{height} pixels (aspect 1:{long // short}); MobileVLM sees a 336x336 square, "
            f"so pictures more than {MAX_ASPECT} times longer than wide are refused: crop it first."
        )
    if long > MAX_SIDE:
        raise MvlmError(
            f"the picture is {width}x{height} pixels; MobileVLM sees a 336x336 square, so pictures longer than "
            f"{MAX_SIDE} pixels are refused: scale it down first."
        )


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
        with warnings.catch_warnings():
            # Pictures over Pillow's warning size (89 megapixels, e.g. a 100-megapixel photo) are read: the
            # shape limits above decide, and a warning would be noise under the answer.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_shape(*image.size)  # the header is read: refuse before decoding
            image.load()  # decode now, so a truncated file fails here and not deep in preprocessing
    except Image.DecompressionBombError:
        raise MvlmError(
            f"{where} declares more pixels than Pillow decodes safely ({2 * Image.MAX_IMAGE_PIXELS:,}); "
            "scale the picture down first."
        ) from None
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


def resize_padded(image: Image.Image, background: tuple[int, int, int], size: int) -> np.ndarray:
    """The pixels of `expand_to_square(image, background).resize((size, size), BICUBIC)` for an RGB picture,
    without making the square.

    Pillow resizes in two passes, horizontal then vertical, each rounding to uint8, with coefficients that
    depend only on the input and output lengths, and each row (then column) resampled on its own. So the same
    calls on pieces of the square give its exact pixels (tests/test_preprocess.py compares with the square):
    a wide picture's padding rows are all alike, so one background row stands for them; a tall picture's
    rows are resampled a strip at a time. The vertical pass then runs on the (side x size) intermediate,
    as Pillow's own second pass would. Memory stays near the picture's size, not the square's.
    """
    width, height = image.size
    if width == height:
        return np.asarray(image.resize((size, size), resample=Image.BICUBIC))
    side = max(width, height)
    if width > height:
        rows = np.asarray(image.resize((size, height), resample=Image.BICUBIC))
        padding = np.asarray(Image.new(image.mode, (side, 1), background).resize((size, 1), resample=Image.BICUBIC))
        horizontal = np.broadcast_to(padding, (side, size, 3)).copy()
        top = (side - height) // 2
        horizontal[top : top + height] = rows
    else:
        left, step = (side - width) // 2, max(1, _STRIP_PIXELS // side)
        strips = []
        for y in range(0, side, step):
            strip = Image.new(image.mode, (side, min(step, side - y)), background)
            strip.paste(image.crop((0, y, width, y + strip.height)), (left, 0))
            strips.append(np.asarray(strip.resize((size, strip.height), resample=Image.BICUBIC)))
        horizontal = np.concatenate(strips)
    return np.asarray(Image.fromarray(horizontal).resize((size, size), resample=Image.BICUBIC))


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


def model_pixels(image, image_size: int = IMAGE_SIZE, mean=CLIP_MEAN) -> np.ndarray:
    """The picture exactly as the model sees it, before rescaling: (image_size, image_size, 3) uint8, padded to a
    square with the mean colour and resized (`preprocess_image` then only scales and normalises these pixels)."""
    rgb = to_rgb(load_image(image))
    background = tuple(int(m * 255) for m in mean)
    return center_crop(resize_padded(rgb, background, int(image_size)), int(image_size))


def preprocess_image(image, image_size: int = IMAGE_SIZE, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """The pixel tensor for one picture: float32, shape (1, 3, image_size, image_size).

    `image` may be anything `load_image` accepts. Steps: EXIF orientation, convert to RGB, pad to a
    square with the mean colour, bicubic resize of the shortest edge, centre crop, rescale by 1/255 in
    float64 rounded to float32 (as transformers does), then (x - mean) / std in float32. The padded square
    is resized to image_size x image_size (its shortest edge) without being made (`resize_padded`).
    """
    if int(image_size) < 1:
        raise MvlmError(f"image_size must be a positive number of pixels, not {image_size}.")
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise MvlmError("mean and std must each have 3 values and std must not contain 0; use CLIP_MEAN and CLIP_STD.")
    pixels = model_pixels(image, image_size, mean)
    scaled = (pixels * (1 / 255)).astype(np.float32)
    normalized = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1))[None]
