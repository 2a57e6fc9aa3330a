"""Classroom conversations (issue 14) about the pictures of shapes.py, from a second seeded stream so that
shapes.py's own questions stay the same:
    What colour is the square?          -> "There is no square."   (absent: no square in the picture)
    Is there a red circle?              -> "yes" / "no"
    How many shapes are there?          -> "4"               (count_all)
    How many red objects are there?     -> "2"               (count_colour)
    How many stars are there?           -> "2"               (count_shape: shapes.py's "count" questions)
    Describe the image in detail.       -> "A large red circle is at the top left. A small ..." (detail)
and conversations of 1-4 turns over all of them (`conversation`), questions in other spellings (`vary`: "picture"
or "photo" for "image", color, case, no "?", "a" for "the"), and pictures from outside this world
(`outside_picture`: noise, drawings, gradients, textures), answered "I only know pictures of simple shapes.".

The held-out sets of each kind (`heldout_set`, HELDOUT_SETS) and every word the tokenizer must know (`corpus_texts`)
are here too. Only numpy and Pillow are used.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .shapes import (
    CELL_NAMES,
    COLOURS,
    GRID,
    HELDOUT_SEEDS,
    IMAGE_SIZE,
    NUMBER_WORDS,
    PLURALS,
    QUESTION_TEMPLATES,
    SHAPES,
    SIZES,
    Scene,
    Thing,
    article,
    describe,
    make_scene,
    picture,
)

OUTSIDE_ANSWER = "I only know pictures of simple shapes."
NEW_TEMPLATES = {
    "absent": ("What colour is the {shape}?", "What color is the {shape}?", "Where is the {shape}?",
               "How big is the {shape}?", "Is the {shape} small or large?"),
    "absent_colour": ("What shape is the {colour} object?", "What is the {colour} shape?"),
    "yesno": ("Is there a {shape}?", "Is there a {colour} {shape}?", "Are there any {plural}?",
              "Is there a {colour} object?"),
    "count_all": ("How many shapes are there?", "How many objects are there?", "How many shapes are in the image?",
                  "Count the shapes."),
    "count_colour": ("How many {colour} objects are there?", "How many {colour} shapes are there?"),
    "detail": ("Describe the image in detail.", "Describe every object.", "Tell me about each shape."),
}
NEW_KINDS = ("absent", "yesno", "count_all", "count_colour", "detail")
PLACES = {"top left": "at the top left", "top": "at the top", "top right": "at the top right",
          "left": "on the left", "center": "in the center", "right": "on the right",
          "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right"}
OUTSIDE_GENERATORS = ("noise", "drawing", "gradient", "texture")


def reading_order(things: list[Thing]) -> list[Thing]:
    return sorted(things, key=lambda t: (t.row, t.col))


def describe_in_detail(things: list[Thing]) -> str:
    """One sentence per object in reading order: 'A large red circle is at the top left. A small ...'"""
    return " ".join(f"{article(t.size).capitalize()} {t.size} {t.colour} {t.shape} is {PLACES[t.where]}."
                    for t in reading_order(things))


def new_questions(scene: Scene) -> list[tuple[str, str, str]]:
    """The issue-14 kinds about a scene (absent, yesno, count_all, count_colour, detail), from their own seeded
    stream so `scene.questions` (the old benchmark) does not change."""
    rng = np.random.default_rng([scene.seed, 2])
    qa: list[tuple[str, str, str]] = []

    def add(kind: str, template_kind: str, answer: str, **fields):
        templates = NEW_TEMPLATES[template_kind]
        qa.append((kind, templates[int(rng.integers(len(templates)))].format(**fields), answer))

    present = {t.shape for t in scene.things}
    colours = {t.colour for t in scene.things}
    for shape in SHAPES:
        if shape not in present:
            add("absent", "absent", f"There is no {shape}.", shape=shape)
    for colour in rng.permutation(list(COLOURS))[:2]:
        if colour not in colours:
            add("absent", "absent_colour", f"There is no {colour} object.", colour=colour)
    for _ in range(2):  # one "yes" and one "no" per round, each asked about a thing chosen for that answer
        for want in ("yes", "no"):
            template = int(rng.integers(4))
            fields = yes_no_fields(scene, template, want, rng)
            if fields is not None:
                qa.append(("yesno", NEW_TEMPLATES["yesno"][template].format(**fields), want))
    add("count_all", "count_all", str(len(scene.things)))
    for colour in rng.permutation(list(COLOURS))[:3]:
        add("count_colour", "count_colour", str(sum(t.colour == colour for t in scene.things)), colour=colour)
    add("detail", "detail", describe_in_detail(scene.things))
    order = rng.permutation(len(qa))
    return [qa[i] for i in order]


def yes_no_fields(scene: Scene, template: int, want: str, rng) -> dict | None:
    """Shape and colour for yes/no template `template` whose answer about `scene` is `want` (None: none exists).
    Drawn for the answer, not drawn at random and kept when they fit: "Is there a blue cross?" is almost always
    "no" at random, and weights trained that way answered "no" about a blue cross in the picture."""
    present = {(t.shape, t.colour) for t in scene.things}
    shapes_in, colours_in = {t.shape for t in scene.things}, {t.colour for t in scene.things}
    if template == 1:  # "Is there a {colour} {shape}?"
        if want == "yes":
            pairs = sorted(present)
        else:  # near misses first: a shape of the picture in another colour, or a colour of it on another shape
            near = sorted({(s, c) for s in shapes_in for c in COLOURS} | {(s, c) for s in SHAPES for c in colours_in})
            pairs = [pair for pair in near if pair not in present]
            if rng.random() < 0.3:
                pairs = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present]
    elif template == 3:  # "Is there a {colour} object?"
        pairs = [(SHAPES[0], c) for c in COLOURS if (c in colours_in) == (want == "yes")]
    else:  # "Is there a {shape}?", "Are there any {plural}?"
        pairs = [(s, next(iter(COLOURS))) for s in SHAPES if (s in shapes_in) == (want == "yes")]
    if not pairs:
        return None
    shape, colour = pairs[int(rng.integers(len(pairs)))]
    return {"shape": shape, "colour": colour, "plural": PLURALS[shape]}


def vary(question: str, rng) -> str:
    """The same question as a pupil might type it: "picture" or "photo" for "image", "in every detail",
    colour/color, lower or upper case, no trailing "?" or ".", "a" for "the"."""
    if "image" in question and rng.random() < 0.6:  # a class says "picture"; the tokenizer splits it into new pieces
        question = question.replace("image", "photo" if rng.random() < 0.3 else "picture")
    if "in detail" in question and rng.random() < 0.3:
        question = question.replace("in detail", "in every detail")
    if rng.random() < 0.3:
        question = question.replace("colour", "color") if "colour" in question else question.replace("color", "colour")
    if rng.random() < 0.25:
        question = question.replace(" the ", " a ", 1)
    if rng.random() < 0.3:
        question = question.rstrip("?.")
    case = rng.random()
    if case < 0.2:
        question = question.lower()
    elif case < 0.3:
        question = question.upper()
    return question


def follow_up(question: str, rng) -> str:
    """A later turn as people ask it: 'And what colour is the square?' now and then."""
    if rng.random() < 0.3 and question[:1].isupper() and not question.isupper():
        return "And " + question[0].lower() + question[1:]
    return question


def conversation(questions: list[tuple[str, str, str]], rng, turns: int) -> list[tuple[str, str, str]]:
    """`turns` of the given questions as one chat: later turns sometimes start with "And"."""
    chosen = [questions[int(i)] for i in rng.permutation(len(questions))[:turns]]
    return [(kind, follow_up(q, rng) if i else q, a) for i, (kind, q, a) in enumerate(chosen)]


def outside_picture(seed: int, generator: str | None = None) -> Image.Image:
    """A 336 x 336 picture from outside the shapes world (training only: noise, a drawing, a gradient, a texture)."""
    rng = np.random.default_rng([seed, 5])
    generator = generator or OUTSIDE_GENERATORS[int(rng.integers(len(OUTSIDE_GENERATORS)))]
    size = IMAGE_SIZE
    if generator == "noise":
        low = int(rng.choice([4, 8, 21, 42, 84, 336]))
        small = rng.uniform(0, 255, (low, low, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.BICUBIC if rng.random() < 0.7 else Image.NEAREST)
        if rng.random() < 0.5:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 4))))
    elif generator == "drawing":
        background = tuple(int(v) for v in rng.integers(0, 256, 3)) if rng.random() < 0.5 else (250, 250, 250)
        image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(4, 40))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            points = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(int(rng.integers(2, 8)))]
            width = int(rng.integers(1, 9))
            style = rng.random()
            if style < 0.5:
                draw.line(points, fill=colour, width=width)
            elif style < 0.8:
                x, y = points[0]
                r = float(rng.uniform(5, 80))
                draw.arc((x - r, y - r, x + r, y + r), float(rng.uniform(0, 360)), float(rng.uniform(0, 360)),
                         fill=colour, width=width)
            elif len(points) >= 3:
                draw.polygon(points, fill=colour)
    elif generator == "gradient":
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
        a, b, c = (rng.uniform(0, 255, 3) for _ in range(3))
        t = (xs * np.cos(rng.uniform(0, 6.3)) + ys * np.sin(rng.uniform(0, 6.3))) if rng.random() < 0.5 else \
            np.hypot(xs - rng.uniform(0, 1), ys - rng.uniform(0, 1))
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        pixels = np.where(t[..., None] < 0.5, (1 - 2 * t[..., None]) * a + 2 * t[..., None] * b,
                          (2 - 2 * t[..., None]) * b + (2 * t[..., None] - 1) * c)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    else:  # texture: stripes, plaid, checkerboard or smooth blobs, in random colours
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 60)
        u = xs * np.cos(angle) + ys * np.sin(angle)
        v = -xs * np.sin(angle) + ys * np.cos(angle)
        style = int(rng.integers(4))
        if style == 0:
            t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
        elif style == 1:
            t = 0.25 * (2 + np.sin(2 * np.pi * u / period) + np.sin(2 * np.pi * v / rng.uniform(4, 60)))
        elif style == 2:
            t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
        else:
            low = int(rng.integers(3, 30))
            t = np.asarray(Image.fromarray(rng.uniform(0, 255, (low, low)).astype(np.uint8)).resize(
                (size, size), Image.BICUBIC), np.float32) / 255
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pixels = (1 - t[..., None]) * a + t[..., None] * b + rng.normal(0, rng.uniform(0, 25), (size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.2:
        image = image.convert("L").convert("RGB")
    return image


def outside_questions(seed: int, n: int) -> list[tuple[str, str, str]]:
    """`n` questions of any kind about a picture from outside the shapes world; all answered OUTSIDE_ANSWER."""
    rng = np.random.default_rng([seed, 6])
    templates = [t for group in (QUESTION_TEMPLATES, NEW_TEMPLATES) for ts in group.values() for t in ts]
    out = []
    for _ in range(n):
        shape, colour = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)))
        template = templates[int(rng.integers(len(templates)))]
        out.append(("outside", template.format(shape=shape, colour=colour, plural=PLURALS[shape]), OUTSIDE_ANSWER))
    return out


def all_questions(scene: Scene) -> list[tuple[str, str, str]]:
    return scene.questions + new_questions(scene)


# held-out sets of issue 14: each a list of (picture key, [(kind, question, answer), ...turns]); a picture key is a
# held-out seed, or ("photo", name, crop) for the outside-world pictures (scikit-image's sample photos: training
# never sees a photo, it draws its outside pictures from `outside_picture`)
MAX_TURNS = 4  # the longest chat of training and of the held-out sets
# (a new set goes last: each set's pictures start at its index, so the others keep theirs)
HELDOUT_SETS = ("followup", "absent", "yesno", "count_all", "count_colour", "detail", "variants", "outside",
                "count_shape")
_SET_KIND = {"count_shape": "count"}  # the sets asked as shapes.py asks them ("How many stars are there?")
_SET_START = {name: HELDOUT_SEEDS.start + 1000 * (i + 1) for i, name in enumerate(HELDOUT_SETS)}
PHOTOS = ("astronaut", "binary_blobs", "brick", "camera", "cell", "checkerboard", "chelsea", "clock", "coffee",
          "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
          "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text")


def heldout_set(name: str, n: int) -> list[tuple[object, list[tuple[str, str, str]]]]:
    """About `n` held-out questions of one set (counting every turn; "followup" counts turns 2-4 only)."""
    out: list[tuple[object, list[tuple[str, str, str]]]] = []
    counted = 0
    if name == "outside":
        # 48 views only: a large set asks each view several chats of at most MAX_TURNS turns (training never goes
        # past 4 turns, and 13 turns of the honest line would also fill the 512-token context)
        keys = [("photo", photo, crop) for crop in ("full", "centre") for photo in PHOTOS]
        per = -(-n // len(keys))
        for i, key in enumerate(keys):
            questions = outside_questions(HELDOUT_SEEDS.stop - 1 - i, per)
            out += [(key, questions[j:j + MAX_TURNS]) for j in range(0, per, MAX_TURNS)]
        return out
    seed = _SET_START[name]
    while counted < n:
        if seed not in HELDOUT_SEEDS:
            raise ValueError(f"held-out seeds run out after {counted} questions")
        scene = make_scene(seed)
        rng = np.random.default_rng([seed, 7])
        if name == "followup":
            pool = [q for q in all_questions(scene) if q[0] != "detail"]
            turns = conversation(pool, rng, MAX_TURNS)
            out.append((seed, turns))
            counted += len(turns) - 1
        elif name == "variants":
            picked = [scene.questions[int(i)] for i in rng.permutation(len(scene.questions))[:2]]
            out += [(seed, [(kind, vary(q, rng), a)]) for kind, q, a in picked]
            counted += len(picked)
        else:
            kind = _SET_KIND.get(name, name)
            hits = [q for q in all_questions(scene) if q[0] == kind][:2]
            out += [(seed, [q]) for q in hits]
            counted += len(hits)
        seed += 1
    return out


def heldout_picture(key) -> Image.Image:
    """The picture of a held-out key: a shapes picture, or a scikit-image sample photo (full or its centre)."""
    if not isinstance(key, tuple):
        return picture(key)[0]
    from skimage import data  # test / train extra only: the demo never needs it

    _, name, crop = key
    array = np.asarray(getattr(data, name)())
    if array.dtype == bool or array.dtype.kind == "f":
        array = (np.clip(array.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    image = Image.fromarray(array).convert("RGB")
    if crop == "centre":
        w, h = image.size
        image = image.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2))
    return image


def corpus_texts() -> list[str]:
    """Every word the questions and answers can use (for training the tokenizer)."""
    texts = []
    for templates in QUESTION_TEMPLATES.values():
        for template in templates:
            for shape in SHAPES:
                for colour in COLOURS:
                    texts.append(template.format(shape=shape, plural=PLURALS[shape], colour=colour))
    texts += [describe([Thing(s, c, "small", 0, 0)]) for s in SHAPES for c in COLOURS]
    texts += list(COLOURS) + list(SHAPES) + [n for row in CELL_NAMES for n in row] + list(SIZES)
    texts += [str(i) for i in range(10)] + list(NUMBER_WORDS)
    for templates in NEW_TEMPLATES.values():
        for template in templates:
            texts += [template.format(shape=s, plural=PLURALS[s], colour=c) for s in SHAPES for c in COLOURS]
    texts += [f"There is no {s}." for s in SHAPES] + [f"There is no {c} object." for c in COLOURS]
    texts += [describe_in_detail([Thing(s, c, z, r, k)]) for s in SHAPES for c in COLOURS for z in SIZES
              for r in range(GRID) for k in range(GRID)][::7]
    texts += ["yes", "no", OUTSIDE_ANSWER]
    return texts
