"""See inside the model: the picture exactly as the model gets it, with its patch and image-token grids."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from conftest import shapes_picture
from mvlm_magic.inspect import grid_png, model_view
from mvlm_magic.runtime.preprocess import CLIP_MEAN, CLIP_STD, model_pixels, preprocess_image


@pytest.fixture(scope="module")
def eng(engine):
    return engine("v2", "fp32", "f32")


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_drawn_pixels_are_exactly_what_the_model_is_fed(eng):
    picture = shapes_picture((300, 180), seed=3)  # wide: padded above and below with the mean colour
    pixels = model_pixels(picture, eng.image_size, eng.image_mean)
    fed = preprocess_image(picture, eng.image_size, eng.image_mean, eng.image_std)[0].transpose(1, 2, 0)
    restored = np.rint((fed * np.asarray(CLIP_STD) + np.asarray(CLIP_MEAN)) * 255)
    assert pixels.shape == (336, 336, 3) and np.abs(restored - pixels).max() <= 1e-3
    assert tuple(pixels[0, 0]) == tuple(int(m * 255) for m in CLIP_MEAN)  # the padding is the mean colour
    view = model_view(eng, picture, grid="none")
    assert np.array_equal(decode(view.pngs["none"]), pixels)  # no grid: the very pixels, at real size


def test_grids_are_24_patches_and_12_image_tokens_and_the_toggle_switches(eng):
    view = model_view(eng, shapes_picture(seed=4))
    assert view.cells == {"none": 0, "patches": 24, "tokens": 12}
    assert "24 x 24 patches of 14 pixels" in view.caption and "12 x 12 = 144 image tokens" in view.caption
    plain, tokens = decode(view.pngs["none"]), decode(view.pngs["tokens"])
    changed_rows = np.flatnonzero((tokens != plain).any(axis=(1, 2)))
    assert set(range(28, 336, 28)) <= set(changed_rows)  # a line every 28 pixels: one image token each
    assert not (tokens[14] != plain[14]).all()  # and not on the patch lines in between
    patches = decode(view.pngs["patches"])
    assert (patches[14] != plain[14]).any(axis=1).mean() > 0.9  # a patch line every 14 pixels
    shown = view.model_input.value
    view.grid.value = "patches"
    assert view.model_input.value != shown and "patches" in view.model_input.value
    assert 'alt="the picture as the model gets it, patches"' in view.model_input.value


def test_the_static_copy_survives_without_widgets(eng):
    view = model_view(eng, shapes_picture(seed=5))
    copy = view.static_copy()
    assert np.array_equal(decode(base64.b64decode(copy["image/png"])), decode(view.pngs["tokens"]))
    assert copy["text/markdown"].count("<img") == 2 and "image-rendering:pixelated" in copy["text/markdown"]
    assert "144 image tokens" in copy["text/plain"]
    assert grid_png(np.zeros((28, 28, 3), np.uint8), 2)[:4] == b"\x89PNG"


def test_show_input_in_the_magic_shows_the_model_view_first(eng, exported, tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from mvlm_magic.notebook import output_mode

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "mvlm_magic")
    try:
        shell.run_line_magic("mvlm_load", f"{exported('v2', 'fp32')} --precision f32")
        shell.user_ns["img"] = shapes_picture(seed=6)
        shown = []
        monkeypatch.setattr("mvlm_magic.notebook.ask.display", lambda obj, **kw: shown.append((obj, kw)))
        monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.DISPLAY)
        shell.run_cell("%%mvlm_ask img --show-input --max-new-tokens 3 --blocking\nWhat is this?")
        first, options = shown[0]
        assert options.get("raw") and "144 image tokens" in first["text/plain"] and "image/png" in first
        assert len(shown) == 2  # then the answer
    finally:
        shell.run_line_magic("unload_ext", "mvlm_magic")
