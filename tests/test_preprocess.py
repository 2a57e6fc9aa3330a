"""Image preprocessing: bit-identical to transformers' CLIP processor after MobileVLM's padding."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvlm_magic.errors import MvlmError
from mvlm_magic.runtime.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    expand_to_square,
    load_image,
    preprocess_image,
    shortest_edge_size,
    to_rgb,
)

BACKGROUND = (122, 116, 104)


def noise_image(width, height, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def official_expand2square(image, background):
    """MobileVLM's mobilevlm/utils.py expand2square, as written there."""
    width, height = image.size
    if width == height:
        return image
    if width > height:
        result = Image.new(image.mode, (width, width), background)
        result.paste(image, (0, (width - height) // 2))
        return result
    result = Image.new(image.mode, (height, height), background)
    result.paste(image, ((height - width) // 2, 0))
    return result


@pytest.fixture(scope="module")
def clip_processor():
    transformers = pytest.importorskip("transformers")
    # The PIL backend is the one the official code ran; the torchvision backend resizes differently.
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return processor_class(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        resample=3,
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (37, 500), (500, 37), (336, 336), (641, 480)])
def test_bit_identical_to_transformers_clip_processor(clip_processor, size):
    image = noise_image(*size, seed=sum(size))
    padded = official_expand2square(image, tuple(int(m * 255) for m in clip_processor.image_mean))
    expected = np.asarray(clip_processor(images=padded, return_tensors="np")["pixel_values"])
    ours = preprocess_image(image)
    assert ours.shape == expected.shape == (1, 3, 336, 336)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, expected)


def test_output_layout_and_normalisation():
    pixels = preprocess_image(Image.new("RGB", (1, 1), (255, 0, 122)))  # a 1x1 picture must work
    assert pixels.shape == (1, 3, 336, 336) and pixels.dtype == np.float32 and pixels.flags.c_contiguous
    for channel, value in enumerate((255, 0, 122)):
        expected = (np.float32(value * (1 / 255)) - np.float32(CLIP_MEAN[channel])) / np.float32(CLIP_STD[channel])
        assert np.all(pixels[0, channel] == expected)
    assert preprocess_image(Image.new("RGB", (3, 5)), image_size=32).shape == (1, 3, 32, 32)


def test_padding_uses_mean_colour_and_floor_offsets():
    assert tuple(int(m * 255) for m in CLIP_MEAN) == BACKGROUND
    square = expand_to_square(Image.new("RGB", (2, 5), (255, 255, 255)), BACKGROUND)
    pixels = np.asarray(square)
    assert square.size == (5, 5)
    assert (pixels[:, 1:3] == 255).all()  # offset (5 - 2) // 2 = 1
    assert (pixels[:, 0] == BACKGROUND).all() and (pixels[:, 3:] == BACKGROUND).all()
    wide = np.asarray(expand_to_square(Image.new("RGB", (5, 2), (255, 255, 255)), BACKGROUND))
    assert (wide[1:3] == 255).all() and (wide[0] == BACKGROUND).all()
    same = Image.new("RGB", (4, 4))
    assert expand_to_square(same, BACKGROUND) is same


def test_shortest_edge_and_crop_helpers():
    assert shortest_edge_size(300, 200, 336) == (504, 336)
    assert shortest_edge_size(200, 300, 336) == (336, 504)
    assert shortest_edge_size(7, 7, 336) == (336, 336)
    array = np.arange(5 * 4 * 3).reshape(5, 4, 3)
    assert np.array_equal(center_crop(array, 2), array[1:3, 1:3])
    with pytest.raises(MvlmError):
        center_crop(array, 6)


def _mode_images():
    rgb = noise_image(30, 20, seed=3)
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    sixteen = np.array([[0, 100, 255, 256, 1000, 65535]] * 4, dtype=np.uint16)
    return {
        "RGBA": rgb.convert("RGBA"),
        "LA": rgb.convert("LA"),
        "P": palette,
        "CMYK": rgb.convert("CMYK"),
        "I;16": Image.frombytes("I;16", (6, 4), sixteen.astype("<u2").tobytes()),
        "I": Image.frombytes("I", (6, 4), sixteen.astype("<i4").tobytes()),
        "F": Image.frombytes("F", (6, 4), sixteen.astype("<f4").tobytes()),
        "L": rgb.convert("L"),
        "1": rgb.convert("1"),
    }


@pytest.mark.parametrize("mode", list(_mode_images()))
def test_every_mode_converts_exactly_as_pil(mode):
    image = _mode_images()[mode]
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), np.asarray(image.convert("RGB")))
    assert np.array_equal(preprocess_image(image), preprocess_image(image.convert("RGB")))


def test_conversion_semantics_of_the_fact_sheet():
    # Alpha is dropped, not composited: a fully transparent red pixel stays red.
    assert np.asarray(to_rgb(Image.new("RGBA", (1, 1), (255, 0, 0, 0)))).tolist() == [[[255, 0, 0]]]
    # 16-bit values clip at 255.
    sixteen = Image.frombytes("I;16", (3, 1), np.array([100, 256, 65535], dtype="<u2").tobytes())
    assert np.asarray(to_rgb(sixteen))[0, :, 0].tolist() == [100, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    picture = noise_image(40, 20, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    picture.save(path, format="JPEG", exif=exif, quality=95)
    stored = Image.open(path)
    stored.load()
    upright = stored.transpose(Image.Transpose.ROTATE_270)
    upright.info.pop("exif", None)
    assert to_rgb(load_image(path)).size == (20, 40)
    assert np.array_equal(np.asarray(to_rgb(load_image(path))), np.asarray(upright))
    assert np.array_equal(preprocess_image(path), preprocess_image(Image.fromarray(np.asarray(upright))))
    assert not np.array_equal(preprocess_image(path), preprocess_image(Image.fromarray(np.asarray(stored))))


def test_load_image_sources(tmp_path):
    picture = noise_image(7, 5, seed=7)
    path = tmp_path / "p.png"
    picture.save(path)
    expected = np.asarray(picture)
    for source in (picture, str(path), path, path.read_bytes(), expected):
        assert np.array_equal(np.asarray(load_image(source).convert("RGB")), expected)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert load_image(grey).mode == "L" and load_image(grey[:, :, None]).mode == "L"
    assert load_image(np.zeros((3, 4, 4), np.uint8)).mode == "RGBA"
    floats = load_image(expected / 255.0)
    assert np.array_equal(np.asarray(floats), expected)  # float [0, 1] is scaled and rounded back exactly


@pytest.mark.parametrize(
    "source, message",
    [
        (Path("/nonexistent/picture.png"), "does not exist"),
        (b"", "empty"),
        (b"this is not a picture", "not a readable picture"),
        (Image.new("RGB", (0, 4)), "0x4"),
        (np.zeros((0, 5, 3), np.uint8), "no pixels"),
        (np.zeros((4, 5, 2), np.uint8), "HxW"),
        (np.zeros((4, 5, 3), np.int16), "uint8"),
        (np.full((4, 5, 3), 2.0), r"\[0, 1\]"),
        (np.full((4, 5, 3), np.nan), r"\[0, 1\]"),
        (12345, "cannot read a picture from int"),
        ([[0, 1]], "cannot read a picture from list"),
    ],
)
def test_load_image_errors(source, message):
    with pytest.raises(MvlmError, match=message):
        preprocess_image(source)


def test_unreadable_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(MvlmError, match="not a readable picture"):
        load_image(text)
    truncated = tmp_path / "cut.png"
    buffer = io.BytesIO()
    noise_image(50, 50).save(buffer, format="PNG")
    truncated.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(MvlmError, match="not a readable picture"):
        load_image(truncated)
    with pytest.raises(MvlmError, match="not a file"):
        load_image(tmp_path)
