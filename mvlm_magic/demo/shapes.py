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

The classroom conversations built on these pictures (issue 14) are in conversations.py.

Only numpy and Pillow are used, so the demo can draw a picture without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

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
