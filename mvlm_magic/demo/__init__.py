"""The model that ships with the package, and the demo that runs on it.

The bundled model (mvlm_magic/data/nano) is a ~1M-parameter MobileVLM V2 trained from scratch on
synthetic pictures of shapes (drawn by shapes.py here; trained by tools/nano/train.py, docs/nano.md): it
answers questions about colours, shapes, counts, positions and sizes of simple shapes, offline, in the exact
mtgv checkpoint format.
If the package data is missing (a broken install), the demo falls back to a tiny *random* checkpoint:
the whole pipeline runs, but its answers are noise.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import MvlmError
from ..store import default_cache_dir

BUNDLED_DIR = Path(__file__).parent.parent / "data" / "nano"
BUNDLED_NAME = "nano"  # what %mvlm_load, load_engine and mvlm take for it


def bundled_model() -> Path:
    if (BUNDLED_DIR / "config.json").is_file():
        return BUNDLED_DIR
    raise MvlmError("no model given and no bundled model in this version; pass a model "
                    "(a checkpoint folder, a Hugging Face id or a preset such as mobilevlm-v2-1.7b).")


# A held-out picture (never seen in training): a blue star, a purple circle and a green cross.
DEMO_SEED = 1_000_000_007
DEMO_QUESTION = "What color is the circle?"


def demo_picture():
    """The demo's picture, drawn by the seeded shapes generator (numpy + Pillow only)."""
    from .shapes import picture

    return picture(DEMO_SEED)[0]


def demo(cache_dir=None, out=sys.stdout, question: str = DEMO_QUESTION) -> str:
    from ..loader import load_engine
    from .shapes import make_scene

    cache_dir = Path(cache_dir or default_cache_dir())
    try:
        model = bundled_model()
        note = "bundled nano MobileVLM (trained on synthetic shapes)"
    except MvlmError:
        from ..model.tiny import build_tiny_checkpoint

        model = cache_dir / "tiny-random-mobilevlm"
        if not (model / "config.json").is_file():
            build_tiny_checkpoint(model)
        note = "tiny random checkpoint (the bundled model is missing: expect noise, not sense)"
    expected = {q: a for _, q, a in make_scene(DEMO_SEED).questions}.get(question)
    print(f"model: {note}\npicture: shapes #{DEMO_SEED} "
          f"({describe_scene(DEMO_SEED)})\nquestion: {question}\nanswer: ", end="", file=out, flush=True)
    engine = load_engine(model, "int8", cache_dir=cache_dir)
    stream = engine.new_chat(demo_picture(), prepare=False).ask(question, max_new_tokens=24)
    for chunk in stream:
        print(chunk, end="", file=out, flush=True)
    answer = stream.result()
    print(f"\n({answer.timings.summary()})", file=out)
    if expected is not None:
        print(f"expected: {expected}", file=out)
    return answer.text


def describe_scene(seed: int) -> str:
    from .shapes import make_scene

    things = sorted(make_scene(seed).things, key=lambda t: (t.row, t.col))
    return ", ".join(f"{t.size} {t.colour} {t.shape} {t.where}" for t in things)
