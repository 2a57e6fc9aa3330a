"""Image preprocessing: bit-identical to transformers' CLIP processor after MobileVLM's padding."""

import io
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvlm_magic.errors import MvlmError
from mvlm_magic.runtime import preprocess
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


# --------------------------------------------------------------------------------- pictures of absurd shape


def full_square_resize(image, size=336):
    """The padded square made in full and resized by Pillow: what preprocess_image did before resize_padded."""
    return np.asarray(official_expand2square(image, BACKGROUND).resize((size, size), resample=Image.BICUBIC))


def test_padded_resize_gives_the_full_squares_exact_pixels(monkeypatch):
    monkeypatch.setattr(preprocess, "_STRIP_PIXELS", 5000)  # many strips, odd heights, a partial last one
    rng = np.random.default_rng(13)
    sizes = [(1, 2), (2, 1), (1, 50), (50, 1), (3, 5), (335, 336), (336, 335), (336, 337), (337, 100), (100, 337),
             (7, 300), (300, 7), (41, 2000), (2000, 41), (999, 1000), (1000, 999), (333, 1)]
    sizes += [tuple(int(v) for v in rng.integers(1, 1500, 2)) for _ in range(24)]
    for width, height in sizes:
        if max(width, height) > preprocess.MAX_ASPECT * min(width, height):
            continue
        image = noise_image(width, height, seed=width * height)
        for size in (336, 32):
            ours = preprocess.resize_padded(image, BACKGROUND, size)
            assert np.array_equal(ours, full_square_resize(image, size)), (width, height, size)


def png_bytes(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_absurd_shapes_are_refused_quickly_and_in_bounded_memory():
    # In a child limited to 1.5 GB of address space: before the fix the 1x100000 picture asked for a 30 GB square.
    code = (
        "import resource, time\n"
        "from tests.test_preprocess import png_bytes, png_declaring\n"
        "from mvlm_magic.errors import MvlmError\n"
        "from mvlm_magic.runtime.preprocess import preprocess_image\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))\n"
        "pictures = (png_bytes(1, 100000), png_bytes(100000, 1), png_bytes(1, 20000), png_declaring(1000, 40000))\n"
        "for picture in pictures:\n"
        "    start = time.perf_counter()\n"
        "    try:\n"
        "        preprocess_image(picture)\n"
        "    except MvlmError as error:\n"
        "        print(f'{time.perf_counter() - start:.2f}', error)\n"
        "picture = png_bytes(30000, 600)\n"  # 1:50, wide: within the limits, 3.6 GB as a full square
        "start = time.perf_counter()\n"
        "print(f'{time.perf_counter() - start:.2f}', preprocess_image(picture).shape)\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        lines[0][:5] + "the picture is 1x100000 pixels (aspect 1:100000); MobileVLM sees a 336x336 square, "
        "so pictures more than 50 times longer than wide are refused: crop it first.",
        lines[1][:5] + "the picture is 100000x1 pixels (aspect 1:100000); MobileVLM sees a 336x336 square, "
        "so pictures more than 50 times longer than wide are refused: crop it first.",
        lines[2][:5] + "the picture is 1x20000 pixels (aspect 1:20000); MobileVLM sees a 336x336 square, "
        "so pictures more than 50 times longer than wide are refused: crop it first.",
        lines[3][:5] + "the picture is 1000x40000 pixels; MobileVLM sees a 336x336 square, so pictures longer than "
        "32768 pixels are refused: scale it down first.",
    ]
    assert lines[4].endswith("(1, 3, 336, 336)")
    assert all(float(line.split()[0]) < 2.0 for line in lines), lines


def test_shape_limits_apply_to_every_kind_of_source():
    for source in (Image.new("RGB", (1, 60)), np.zeros((60, 1, 3), np.uint8), png_bytes(60, 1)):
        with pytest.raises(MvlmError, match="more than 50 times longer than wide"):
            load_image(source)
    assert preprocess_image(Image.new("RGB", (1, 50))).shape == (1, 3, 336, 336)  # the limit itself is allowed


def png_declaring(width, height):
    """A PNG whose header declares width x height; the data is a single empty row, never read."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_decompression_bomb_is_one_line(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(100000, 100000))
    message = f"{path} declares more pixels than Pillow decodes safely (178,956,970); scale the picture down first."
    with pytest.raises(MvlmError) as caught:
        preprocess_image(path)
    assert str(caught.value) == message


def test_pictures_over_pillows_warning_size_are_read_without_a_warning(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40 is over 1000 pixels, under twice that
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(png_bytes(40, 40)).size == (40, 40)
    with pytest.raises(MvlmError, match="more pixels than Pillow decodes safely"):
        load_image(png_bytes(50, 50))
