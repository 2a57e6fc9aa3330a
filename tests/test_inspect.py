"""See inside the model: the picture exactly as the model gets it, with its patch and image-token grids."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from conftest import DisplayRecorder, shapes_picture
from mvlm_magic.inspect import grid_png, model_view
from mvlm_magic.inspect.model_view import heatmap_png
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


def test_the_attention_read_out_equals_transformers_eager_attention(eng, torch_model):
    """The heatmaps come from the model the runtime runs, and equal the torch reference's own attention."""
    import torch

    from mvlm_magic.inspect.attention import answer_attention
    from mvlm_magic.runtime.tokenizer import IMAGE_TOKEN_INDEX, conversation_ids

    picture = shapes_picture(seed=7)
    chat = eng.new_chat(picture)
    answer = chat.ask("What colour is the circle?", max_new_tokens=5).result()
    mine = answer_attention(eng, chat, answer)
    model = torch_model("v2")
    prompt = conversation_ids(eng.tokenizer, [(answer.question, None)], with_image=True)
    ids = prompt + answer.token_ids[:-1]
    with torch.no_grad():
        features = model.get_image_features(torch.from_numpy(preprocess_image(picture)))
        embeds = model.build_inputs_embeds(ids, features)
        model.language_model.config._attn_implementation = "eager"
        try:
            out = model.language_model(inputs_embeds=embeds, output_attentions=True)
        finally:
            model.language_model.config._attn_implementation = "sdpa"
    reference = torch.stack(out.attentions)[:, 0].numpy()  # (L, H, T, T)
    start = prompt.index(IMAGE_TOKEN_INDEX)
    first = len(prompt) - 1 + 143  # the position that predicted the first answer token: the id -200 is 144 positions
    expected = reference[:, :, first : first + len(answer.token_ids), start : start + 144]
    assert mine.maps.shape == expected.shape and mine.maps.shape[2:] == (5, 144)
    assert np.abs(mine.maps - expected).max() < 1e-4


def test_the_bundled_model_looks_at_the_object_it_names(nano_engine):
    """For "What colour is the <shape>?" the head its training taught to look (docs/nano.md: head 0 of the last
    layer, from the position that predicts the first answer token) puts the most attention on that shape."""
    from mvlm_magic.demo import shapes
    from mvlm_magic.inspect.attention import answer_attention

    nano = nano_engine
    questions = [q for q in shapes.heldout_questions(600) if q[1] == "colour"]
    hits = 0
    for seed, _, question, _ in questions:
        scene = shapes.make_scene(seed)
        named = question.rstrip("?").split()[-1]
        blocks = shapes.object_map(scene).reshape(12, 28, 12, 28).transpose(0, 2, 1, 3).reshape(144, -1)
        counts = np.stack([np.bincount(row, minlength=len(scene.things) + 1) for row in blocks])
        counts[:, 0] = 0
        owner = np.where(counts.max(1) > 0, counts.argmax(1), 0)  # the object on each image token (0: none)
        chat = nano.new_chat(shapes.render(scene))
        attention = answer_attention(nano, chat, chat.ask(question, max_new_tokens=3).result())
        heat = attention.heatmap(token=0, layer=attention.layers - 1, head=0).reshape(-1)
        mass = [heat[owner == i + 1].sum() for i in range(len(scene.things))]
        hits += scene.things[int(np.argmax(mass))].shape == named
    assert len(questions) >= 60 and hits / len(questions) >= 0.9, f"{hits} of {len(questions)}"


def test_model_view_of_an_answer_lights_where_it_looked_and_its_controls_switch(eng):
    chat = eng.new_chat(shapes_picture(seed=8))
    answer = chat.ask("What is this?", max_new_tokens=3).result()
    view = model_view(eng, chat=chat, answer=answer)
    assert [label for label, _ in view.token.options][0] == "whole answer" and len(view.token.options) == 4
    whole = view.model_input.value
    view.token.value = 1
    one_token = view.model_input.value
    view.layer.value, view.head.value = 1, 0
    assert len({whole, one_token, view.model_input.value}) == 3  # each choice draws its own map
    assert np.allclose(view.heat(), view.attention.maps[1, 0, 1].reshape(12, 12))
    copy = view.static_copy()
    assert "where the whole answer looked" in copy["text/plain"] and copy["text/markdown"].count("<img") == 2
    # the saved copy keeps the image-token grid over the lit map (the caption counts those 144 tokens)
    lit = decode(base64.b64decode(copy["image/png"]))
    without_grid = decode(heatmap_png(view.pixels, view.attention.heatmap()))
    assert set(range(28, 336, 28)) <= set(np.flatnonzero((lit != without_grid).any(axis=(1, 2))))


def test_show_input_in_the_magic_shows_the_model_view_first(magic_shell, monkeypatch):
    from mvlm_magic.notebook import output_mode

    magic_shell.user_ns["img"] = shapes_picture(seed=6)
    display = DisplayRecorder()
    monkeypatch.setattr("mvlm_magic.notebook.ask.display", display)
    monkeypatch.setattr(output_mode, "detect", lambda shell: output_mode.DISPLAY)
    magic_shell.run_cell("%%mvlm_ask img --show-input --max-new-tokens 3 --blocking\nWhat is this?")
    first, options = display.shown[0], display.options[0]
    assert options.get("raw") and "144 image tokens" in first["text/plain"] and "image/png" in first
    assert len(display.shown) == 2  # then the answer
    # When the answer ended, the model's view gained where it looked.
    assert any("where the whole answer looked" in update.get("text/plain", "") for update in display.updates
               if isinstance(update, dict)), display.updates
