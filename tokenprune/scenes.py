"""Synthetic shape scenes and POPE-style questions about them, generated from a seed.

A scene is a 336 x 336 picture of 2 to 4 flat objects (a colour and a shape each, no two
alike) at random, non-overlapping places on a grey background. Each object is 26 to 34 px
wide, so it covers a handful of LLaVA-1.5's 14 px patches (about 4 to 9 of the 576): the
answer to a question about it depends on a few visual tokens, and which tokens survive
pruning can change it.

Questions are yes/no, balanced, in two kinds:

- ``exists``: "is there a red triangle ?" (POPE). A negative names a colour and shape
  that is not in the scene: half of them *adversarial* (its colour or its shape is in the
  scene, on another object), half *random* (any absent pair).
- ``where``: "is the red triangle on the left ?" about an object that is in the scene;
  objects sit clear of the middle column (at least 24 px from it), so the answer is
  unambiguous.

    >>> split = make_split(seed=0, questions=4)
    >>> [q.kind for q in split.questions], [q.answer for q in split.questions]
    (['exists', 'where', 'exists', 'where'], ['yes', 'yes', 'no', 'no'])
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "COLOURS",
    "SHAPES",
    "WORDS",
    "Question",
    "Scene",
    "SceneObject",
    "Split",
    "draw",
    "make_split",
    "object_map",
    "random_scene",
]

SIZE = 336
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
}
SHAPES = ("circle", "square", "triangle")
#: Every word a prompt or an answer uses (the trained model's tokenizer is built from it).
WORDS = ("is", "there", "a", "the", "on", "left", "right", "?", "yes", "no", *COLOURS, *SHAPES)
_MIDDLE_MARGIN = 24
_GAP = 6


@dataclass(frozen=True)
class SceneObject:
    """One object: its colour and shape names, centre ``(x, y)`` and width in pixels."""

    colour: str
    shape: str
    x: float
    y: float
    size: float

    @property
    def side(self) -> str:
        return "left" if self.x < SIZE / 2 else "right"


@dataclass(frozen=True)
class Scene:
    """Objects on a grey background of brightness ``background``."""

    objects: tuple[SceneObject, ...]
    background: int

    def has(self, colour: str, shape: str) -> bool:
        return any(o.colour == colour and o.shape == shape for o in self.objects)


@dataclass(frozen=True)
class Question:
    """A question about ``scenes[scene]``: its words, the answer and its kind
    (``exists`` or ``where``; ``negative`` says how an ``exists`` "no" was drawn)."""

    scene: int
    text: str
    answer: str
    kind: str
    negative: str = ""


@dataclass(frozen=True)
class Split:
    scenes: tuple[Scene, ...]
    questions: tuple[Question, ...]


def random_scene(rng: random.Random) -> Scene:
    """2 to 4 objects, each a distinct (colour, shape), placed without overlap."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.sample(pairs, rng.randint(2, 4))
    objects: list[SceneObject] = []
    for colour, shape in chosen:
        size = rng.uniform(26, 34)
        while True:
            x = rng.uniform(size / 2 + 2, SIZE - size / 2 - 2)
            y = rng.uniform(size / 2 + 2, SIZE - size / 2 - 2)
            if abs(x - SIZE / 2) < _MIDDLE_MARGIN:
                continue
            if all(
                max(abs(x - o.x), abs(y - o.y)) > (size + o.size) / 2 + _GAP for o in objects
            ):
                break
        objects.append(SceneObject(colour, shape, x, y, size))
    return Scene(tuple(objects), background=rng.randint(150, 210))


def _paint(pen: Any, o: SceneObject, fill: Any, stripes: Any = None) -> None:
    """Draw ``o`` in ``fill``; with ``stripes`` (a light and a dark colour), squares get
    light and triangles dark horizontal stripes, one 2 px line every 6 px."""
    half = o.size / 2
    box = (o.x - half, o.y - half, o.x + half, o.y + half)
    top, bottom = o.y - half, o.y + half
    if o.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif o.shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(o.x, top), (o.x - half, bottom), (o.x + half, bottom)], fill=fill)
    if stripes is None or o.shape == "circle":
        return
    light, dark = stripes
    y = top + 2
    while y + 2 <= bottom:
        # the triangle's half width grows linearly from its apex to its base
        w = half if o.shape == "square" else half * (y + 1 - top) / o.size
        pen.rectangle((o.x - w, y, o.x + w, y + 1), fill=light if o.shape == "square" else dark)
        y += 6


def draw(scene: Scene) -> PILImage.Image:
    """The scene as a 336 x 336 RGB picture. Circles are plain, squares have light and
    triangles dark stripes: a 14 px patch then tells the shapes apart, which the tiny
    trained model's tower did not learn from outlines alone in its CPU budget."""
    from PIL import Image, ImageDraw

    grey = scene.background
    image = Image.new("RGB", (SIZE, SIZE), (grey, grey, grey))
    pen = ImageDraw.Draw(image)
    for o in scene.objects:
        _paint(pen, o, COLOURS[o.colour], stripes=((255, 255, 255), (20, 20, 20)))
    return image


def object_map(scene: Scene) -> PILImage.Image:
    """A 336 x 336 greyscale map: pixel value ``i + 1`` where ``scene.objects[i]`` is
    drawn, 0 on the background (the same geometry as `draw`)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (SIZE, SIZE), 0)
    pen = ImageDraw.Draw(image)
    for i, o in enumerate(scene.objects):
        _paint(pen, o, i + 1)
    return image


def _exists(rng: random.Random, scene: Scene, index: int, positive: bool) -> Question:
    if positive:
        o = rng.choice(scene.objects)
        colour, shape, negative = o.colour, o.shape, ""
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if not scene.has(c, s)]
        near = [
            (c, s)
            for c, s in absent
            if any(o.colour == c or o.shape == s for o in scene.objects)
        ]
        negative = "adversarial" if rng.random() < 0.5 and near else "random"
        colour, shape = rng.choice(near if negative == "adversarial" else absent)
    text = f"is there a {colour} {shape} ?"
    return Question(index, text, "yes" if positive else "no", "exists", negative)


def _where(rng: random.Random, scene: Scene, index: int, positive: bool) -> Question:
    o = rng.choice(scene.objects)
    side = o.side if positive else ("right" if o.side == "left" else "left")
    return Question(index, f"is the {o.colour} {o.shape} on the {side} ?", "yes" if positive else "no", "where")


def make_split(seed: int, questions: int, per_scene: int = 2) -> Split:
    """``questions`` questions about ``ceil(questions / per_scene)`` scenes, all drawn
    from ``random.Random(seed)``. Kinds alternate ``exists``, ``where``; answers cycle
    yes, yes, no, no, so both kinds are balanced."""
    rng = random.Random(seed)
    scenes: list[Scene] = []
    out: list[Question] = []
    for i in range(questions):
        if i % per_scene == 0:
            scenes.append(random_scene(rng))
        positive = (i // 2) % 2 == 0
        make = _exists if i % 2 == 0 else _where
        out.append(make(rng, scenes[-1], len(scenes) - 1, positive))
    return Split(tuple(scenes), tuple(out))
