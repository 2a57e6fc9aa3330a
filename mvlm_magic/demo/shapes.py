"""Seeded synthetic pictures of shapes and the question/answer pairs about them.

One integer seed makes one picture and its questions, byte for byte the same on every machine
(numpy's PCG64 and Pillow's drawing are deterministic). The splits are seed ranges that never
overlap, so training and held-out data never share a picture:

    TRAIN_SEEDS    = range(0, 100_000_000)
    HELDOUT_SEEDS  = range(1_000_000_000, 1_000_010_000)

A picture is 336 x 336 (the model's own input size, so preprocessing is the exact MobileVLM pipeline
with a no-op resize) and is divided into a 3 x 3 grid; each object sits inside its own cell, so
objects never overlap and "Where is ...?" always has one right answer. Backgrounds are muted solid
colours or gradients with Gaussian noise; objects are solid shapes in six clear colours, small or large.

Questions (short, exact answers):
    What colour is the triangle?        -> "red"             (only when there is one triangle)
    How many circles are there?         -> "3"               (0..5)
    Where is the square?                -> "top left"        (3 x 3 grid: top left ... bottom right)
    What shape is the red object?       -> "star"            (only when one object is red)
    How big is the star?                -> "small" / "large" (only when there is one star)
    Describe the image.                 -> "a red circle and a blue square" (scenes of 1-3 single objects)

Classroom conversations (issue 14) add, from a second seeded stream so the questions above stay the same:
    What colour is the square?          -> "There is no square."   (absent: no square in the picture)
    Is there a red circle?              -> "yes" / "no"
    How many shapes are there?          -> "4"               (count_all)
    How many red objects are there?     -> "2"               (count_colour)
    Describe the image in detail.       -> "A large red circle is at the top left. A small ..." (detail)
and conversations of 1-4 turns over all of them (`conversation`), questions in other spellings (`vary`:
color, case, no "?", "a" for "the"), and pictures from outside this world (`outside_picture`: noise, drawings,
gradients, textures), answered "I only know pictures of simple shapes.".

Only numpy and Pillow are used, so the demo can draw a picture without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 336
GRID = 3
CELL = IMAGE_SIZE // GRID  # 112 px

TRAIN_SEEDS = range(0, 100_000_000)
HELDOUT_SEEDS = range(1_000_000_000, 1_000_010_000)

SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
COLOURS = {
    "red": (220, 30, 35),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 215, 30),
    "purple": (140, 40, 180),
    "orange": (250, 130, 20),
}
CELL_NAMES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
SIZES = {"small": (22, 28), "large": (38, 46)}  # half-width of the shape in pixels
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")

QUESTION_TEMPLATES = {
    "colour": ("What colour is the {shape}?", "What color is the {shape}?", "Which colour is the {shape}?"),
    "count": ("How many {plural} are there?", "How many {plural} are in the image?", "Count the {plural}."),
    "where": ("Where is the {shape}?", "Where is the {shape} in the image?"),
    "shape": ("What shape is the {colour} object?", "What is the {colour} shape?"),
    "size": ("How big is the {shape}?", "Is the {shape} small or large?"),
    "describe": ("Describe the image.", "What is in the image?", "What do you see?"),
}
KINDS = tuple(QUESTION_TEMPLATES)


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str  # "small" | "large"
    row: int
    col: int

    @property
    def where(self) -> str:
        return CELL_NAMES[self.row][self.col]

    @property
    def phrase(self) -> str:
        return f"{article(self.colour)} {self.colour} {self.shape}"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass
class Scene:
    seed: int
    things: list[Thing]
    background: tuple
    questions: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, question, answer)

    def count(self, shape: str) -> int:
        return sum(t.shape == shape for t in self.things)

    def only(self, **attrs) -> Thing | None:
        hits = [t for t in self.things if all(getattr(t, k) == v for k, v in attrs.items())]
        return hits[0] if len(hits) == 1 else None


# --- scenes ------------------------------------------------------------------------------------


def make_scene(seed: int) -> Scene:
    """The objects of picture `seed` (what to draw), with all its answerable questions."""
    rng = np.random.default_rng(seed)
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    order = rng.permutation(len(cells))
    things: list[Thing] = []
    if rng.random() < 0.45:
        # simple: 1-3 objects, distinct shapes and distinct colours (every question type is answerable)
        n = int(rng.integers(1, 4))
        shapes = rng.choice(SHAPES, n, replace=False)
        colours = rng.choice(list(COLOURS), n, replace=False)
        for i in range(n):
            size = "small" if rng.random() < 0.5 else "large"
            things.append(Thing(str(shapes[i]), str(colours[i]), size, *cells[order[i]]))
    else:
        # counting: one shape 1-5 times, plus 0-2 other shapes once or twice; colours free
        main = str(rng.choice(SHAPES))
        counts = {main: int(rng.integers(1, 6))}
        others = [s for s in SHAPES if s != main]
        for shape in rng.choice(others, int(rng.integers(0, 3)), replace=False):
            counts[str(shape)] = int(rng.integers(1, 3))
        i = 0
        for shape, n in counts.items():
            for _ in range(n):
                if i >= len(cells):
                    break
                size = "small" if rng.random() < 0.5 else "large"
                things.append(Thing(shape, str(rng.choice(list(COLOURS))), size, *cells[order[i]]))
                i += 1
    background = _background_spec(rng)
    scene = Scene(seed, things, background)
    scene.questions = _questions(scene, rng)
    return scene


def _background_spec(rng) -> tuple:
    def muted():
        grey = rng.uniform(60, 225)
        tint = rng.uniform(-22, 22, size=3)
        return tuple(float(np.clip(grey + t, 0, 255)) for t in tint)

    kind = "solid" if rng.random() < 0.5 else "gradient"
    return (kind, muted(), muted(), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(3, 14)),
            int(rng.integers(2**31)))


def describe(things: list[Thing]) -> str:
    """'a red circle', 'a red circle and an orange square', 'a red circle, a blue square and a green star'
    (reading order: rows top to bottom, then left to right)."""
    phrases = [t.phrase for t in sorted(things, key=lambda t: (t.row, t.col))]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _questions(scene: Scene, rng) -> list[tuple[str, str, str]]:
    """Every answerable question about the scene, one per (kind, subject), in a seeded order."""
    qa: list[tuple[str, str, str]] = []

    def add(kind: str, answer: str, **fields):
        templates = QUESTION_TEMPLATES[kind]
        qa.append((kind, templates[int(rng.integers(len(templates)))].format(**fields), answer))

    present = sorted({t.shape for t in scene.things}, key=SHAPES.index)
    for shape in present:
        thing = scene.only(shape=shape)
        if thing is not None:
            add("colour", thing.colour, shape=shape)
            add("where", thing.where, shape=shape)
            add("size", thing.size, shape=shape)
        add("count", str(scene.count(shape)), plural=PLURALS[shape])
    absent = [s for s in SHAPES if s not in present]
    if absent:
        shape = str(rng.choice(absent))
        add("count", "0", plural=PLURALS[shape])
    for colour in COLOURS:
        thing = scene.only(colour=colour)
        if thing is not None:
            add("shape", thing.shape, colour=colour)
    if len(scene.things) <= 3 and all(scene.count(t.shape) == 1 for t in scene.things):
        add("describe", describe(scene.things))
    order = rng.permutation(len(qa))
    return [qa[i] for i in order]


# --- drawing -----------------------------------------------------------------------------------


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.96, cy + r * 0.8), (cx - r * 0.96, cy + r * 0.8)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "cross":
        a = r * 0.36
        return [(cx - a, cy - r), (cx + a, cy - r), (cx + a, cy - a), (cx + r, cy - a), (cx + r, cy + a),
                (cx + a, cy + a), (cx + a, cy + r), (cx - a, cy + r), (cx - a, cy + a), (cx - r, cy + a),
                (cx - r, cy - a), (cx - a, cy - a)]
    raise ValueError(shape)


def _draw_thing(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = r * 0.88
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def layout(scene: Scene) -> list[tuple[Thing, float, float, float, tuple[int, int, int]]]:
    """Where and how each object is drawn: (thing, centre x, centre y, half-width, RGB fill)."""
    rng = np.random.default_rng([scene.seed, 1])
    placed = []
    for thing in scene.things:
        low, high = SIZES[thing.size]
        r = float(rng.uniform(low, high))
        margin = CELL / 2 - r - 4
        cx = CELL * (thing.col + 0.5) + float(rng.uniform(-margin, margin))
        cy = CELL * (thing.row + 0.5) + float(rng.uniform(-margin, margin))
        jitter = rng.integers(-12, 13, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[thing.colour], jitter))
        placed.append((thing, cx, cy, r, fill))
    return placed


def render(scene: Scene) -> Image.Image:
    """The picture of a scene: 336 x 336 RGB."""
    kind, colour_a, colour_b, angle, noise, noise_seed = scene.background
    if kind == "solid":
        pixels = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
        pixels[:] = colour_a
    else:
        ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / (IMAGE_SIZE - 1)
        t = (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) / math.sqrt(0.5) * 0.5 + 0.5
        pixels = (1 - t)[..., None] * np.asarray(colour_a, np.float32) + t[..., None] * np.asarray(colour_b, np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for thing, cx, cy, r, fill in layout(scene):
        _draw_thing(draw, thing.shape, cx, cy, r, fill)
    noise_pixels = np.random.default_rng(noise_seed).normal(0, noise, (IMAGE_SIZE, IMAGE_SIZE, 3))
    noisy = np.asarray(image, np.float32) + noise_pixels
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def object_map(scene: Scene) -> np.ndarray:
    """(336, 336) uint8: 0 for background, i + 1 where scene.things[i] is drawn (training-only labels)."""
    image = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(image)
    for i, (thing, cx, cy, r, _) in enumerate(layout(scene)):
        _draw_thing(draw, thing.shape, cx, cy, r, i + 1)
    return np.asarray(image)


def picture(seed: int) -> tuple[Image.Image, list[tuple[str, str, str]]]:
    """The picture of `seed` and its (kind, question, answer) list."""
    scene = make_scene(seed)
    return render(scene), scene.questions


def heldout_questions(n: int, start: int = HELDOUT_SEEDS.start,
                      per_picture: int = 2) -> list[tuple[int, str, str, str]]:
    """A fixed held-out sample: (seed, kind, question, answer), `per_picture` questions from each picture,
    drawn round-robin over question kinds so every kind is well represented."""
    out: list[tuple[int, str, str, str]] = []
    seed = start
    turn = 0
    while len(out) < n:
        if seed not in HELDOUT_SEEDS:
            raise ValueError(f"held-out seeds run out after {len(out)} questions")
        scene = make_scene(seed)
        chosen: list[tuple[str, str, str]] = []
        for _ in range(per_picture):
            for shift in range(len(KINDS)):
                want = KINDS[(turn + shift) % len(KINDS)]
                hits = [q for q in scene.questions if q[0] == want and q not in chosen]
                if hits:
                    chosen.append(hits[0])
                    turn = (turn + shift + 1) % len(KINDS)
                    break
        out += [(seed, kind, question, answer) for kind, question, answer in chosen]
        seed += 1
    return out[:n]


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


# --- classroom conversations (issue 14) ----------------------------------------------------------

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
    for _ in range(2):  # one "yes" and one "no" (when both exist), so yes/no stay balanced
        for want in ("yes", "no"):
            shape, colour = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)))
            template = int(rng.integers(4))
            if template == 3:
                answer = "yes" if colour in colours else "no"
            elif template == 1:
                answer = "yes" if any(t.shape == shape and t.colour == colour for t in scene.things) else "no"
            else:
                answer = "yes" if shape in present else "no"
            if answer == want:
                qa.append(("yesno", NEW_TEMPLATES["yesno"][template].format(
                    shape=shape, colour=colour, plural=PLURALS[shape]), answer))
    add("count_all", "count_all", str(len(scene.things)))
    for colour in rng.permutation(list(COLOURS))[:3]:
        add("count_colour", "count_colour", str(sum(t.colour == colour for t in scene.things)), colour=colour)
    add("detail", "detail", describe_in_detail(scene.things))
    order = rng.permutation(len(qa))
    return [qa[i] for i in order]


def vary(question: str, rng) -> str:
    """The same question as a pupil might type it: colour/color, lower or upper case, no trailing "?" or ".",
    "a" for "the"."""
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
HELDOUT_SETS = ("followup", "absent", "yesno", "count_all", "count_colour", "detail", "variants", "outside")
_SET_START = {name: HELDOUT_SEEDS.start + 1000 * (i + 1) for i, name in enumerate(HELDOUT_SETS)}
PHOTOS = ("astronaut", "binary_blobs", "brick", "camera", "cell", "checkerboard", "chelsea", "clock", "coffee",
          "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
          "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text")


def heldout_set(name: str, n: int) -> list[tuple[object, list[tuple[str, str, str]]]]:
    """About `n` held-out questions of one set (counting every turn; "followup" counts turns 2-4 only)."""
    out: list[tuple[object, list[tuple[str, str, str]]]] = []
    counted = 0
    if name == "outside":
        keys = [("photo", photo, crop) for crop in ("full", "centre") for photo in PHOTOS]
        per = -(-n // len(keys))
        return [(key, outside_questions(HELDOUT_SEEDS.stop - 1 - i, per)) for i, key in enumerate(keys)]
    seed = _SET_START[name]
    while counted < n:
        if seed not in HELDOUT_SEEDS:
            raise ValueError(f"held-out seeds run out after {counted} questions")
        scene = make_scene(seed)
        rng = np.random.default_rng([seed, 7])
        if name == "followup":
            pool = [q for q in all_questions(scene) if q[0] != "detail"]
            turns = conversation(pool, rng, 4)
            out.append((seed, turns))
            counted += len(turns) - 1
        elif name == "variants":
            picked = [scene.questions[int(i)] for i in rng.permutation(len(scene.questions))[:2]]
            out += [(seed, [(kind, vary(q, rng), a)]) for kind, q, a in picked]
            counted += len(picked)
        else:
            hits = [q for q in new_questions(scene) if q[0] == name][:2]
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
