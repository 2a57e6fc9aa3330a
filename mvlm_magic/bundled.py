"""The model that ships with the package, and the demo that runs on it.

Until the trained nano model ships (mvlm_magic/data/nano), the demo builds a tiny *random*
MobileVLM checkpoint instead: the whole pipeline runs, but its answers are noise.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cache import default_cache_dir
from .errors import MvlmError

BUNDLED_DIR = Path(__file__).parent / "data" / "nano"


def bundled_model(cache_dir=None) -> Path:
    if (BUNDLED_DIR / "config.json").is_file():
        return BUNDLED_DIR
    raise MvlmError("no model given and no bundled model in this version; pass a model "
                    "(a checkpoint folder, a Hugging Face id or a preset such as mobilevlm-v2-1.7b).")


def demo_picture():
    """A red circle and a yellow square on a blue background."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (480, 360), (40, 70, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 90, 220, 250), fill=(220, 30, 30))
    draw.rectangle((300, 120, 420, 240), fill=(240, 210, 40))
    return image


def demo(cache_dir=None, out=sys.stdout) -> str:
    from .loader import load_engine

    cache_dir = Path(cache_dir or default_cache_dir())
    try:
        model = bundled_model()
        note = "bundled model"
    except MvlmError:
        from .model.tiny import build_tiny_checkpoint

        model = cache_dir / "tiny-random-mobilevlm"
        if not (model / "config.json").is_file():
            build_tiny_checkpoint(model)
        note = "tiny random checkpoint (no bundled model yet: expect noise, not sense)"
    print(f"model: {note}\nquestion: What colour is the circle?\nanswer: ", end="", file=out, flush=True)
    engine = load_engine(model, "int8", cache_dir=cache_dir)
    stream = engine.new_chat(demo_picture()).ask("What colour is the circle?", max_new_tokens=24)
    for chunk in stream:
        print(chunk, end="", file=out, flush=True)
    answer = stream.result()
    print(f"\n({answer.timings.summary()})", file=out)
    return answer.text
