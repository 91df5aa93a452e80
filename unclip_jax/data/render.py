"""Drawing the captioned-shapes scenes: attributes → (caption, RGB image). Pure and seedable.

A scene is one to three objects on a background. Each object has a shape, a colour, a size and
a position; positions are the cells of a 3×3 grid over the image, so two objects never share
a cell. Images are drawn with PIL at `SUPERSAMPLE`× the stored size and reduced with a box
filter (anti-aliasing), returned as uint8 [H, W, 3].
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLOURS = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 30),
    "green": (40, 170, 60), "cyan": (40, 200, 210), "blue": (40, 70, 220),
    "purple": (140, 50, 190), "pink": (245, 120, 180),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128),
               "beige": (225, 205, 165)}
SIZES = {"small": 0.07, "medium": 0.11, "large": 0.14}   # radius as a fraction of the side
# 3×3 grid: name → (row, col); cell centres at (col + 0.5) / 3, (row + 0.5) / 3.
POSITIONS = {
    "top left": (0, 0), "top": (0, 1), "top right": (0, 2),
    "left": (1, 0), "centre": (1, 1), "right": (1, 2),
    "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2),
}
POSITION_PHRASES = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
# Colour–shape pairs that only the `test_heldout` split contains.
HELDOUT_PAIRS = (("red", "triangle"), ("blue", "circle"), ("green", "star"), ("yellow", "square"))
SUPERSAMPLE = 4
SPLIT_IDS = {"train": 0, "validation": 1, "test_heldout": 2}


def object_phrase(obj: dict) -> str:
    """'a small red circle on the left'."""
    return f"a {obj['size']} {obj['colour']} {obj['shape']} {POSITION_PHRASES[obj['position']]}"


def caption(objects: list[dict], background: str, template: int) -> str:
    """One of four caption templates over the object phrases."""
    phrases = [object_phrase(o) for o in objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if template == 0:
        return listed
    if template == 1:
        return f"there is {listed}"
    if template == 2:
        return f"{listed} on a {background} background"
    return f"a {background} picture with {listed}"


NUM_TEMPLATES = 4


def sample_scene(seed: int, split: str, index: int) -> dict:
    """Attributes of example `index` of `split`: a pure function of (seed, split, index).

    train/validation never contain a HELDOUT_PAIRS colour–shape pair; every test_heldout scene
    contains at least one (its first object), the others drawn freely.
    """
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    n = int(rng.integers(1, 4))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    positions = list(POSITIONS)
    heldout = set(HELDOUT_PAIRS)
    objects = []
    for k in range(n):
        if split == "test_heldout" and k == 0:
            colour, shape = HELDOUT_PAIRS[int(rng.integers(len(HELDOUT_PAIRS)))]
        else:
            while True:
                colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                if split == "test_heldout" or (colour, shape) not in heldout:
                    break
        objects.append(dict(shape=shape, colour=colour,
                            size=list(SIZES)[int(rng.integers(len(SIZES)))],
                            position=positions[int(cells[k])],
                            jitter=rng.uniform(-0.02, 0.02, size=2),
                            angle=float(rng.uniform(-0.25, 0.25))))
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return dict(objects=objects, background=background,
                caption=caption(objects, background, int(rng.integers(NUM_TEMPLATES))))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.pi / 4 + k * math.pi / 2, r * math.sqrt(2) * 0.85) for k in range(4)]
    elif shape == "triangle":
        pts = [(-math.pi / 2 + k * 2 * math.pi / 3, r) for k in range(3)]
    elif shape == "diamond":
        pts = [(k * math.pi / 2, r * (1.0 if k % 2 else 0.7)) for k in range(4)]
    elif shape == "hexagon":
        pts = [(k * math.pi / 3, r) for k in range(6)]
    elif shape == "star":
        pts = [(-math.pi / 2 + k * math.pi / 5, r if k % 2 == 0 else 0.45 * r) for k in range(10)]
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    return [(cx + d * math.cos(a + angle), cy + d * math.sin(a + angle)) for a, d in pts]


def render(scene: dict, size: int = 256) -> np.ndarray:
    """uint8 [size, size, 3] image of `scene`, drawn at SUPERSAMPLE× and box-reduced."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(img)
    for obj in scene["objects"]:
        row, col = POSITIONS[obj["position"]]
        cx = ((col + 0.5) / 3 + obj["jitter"][0]) * big
        cy = ((row + 0.5) / 3 + obj["jitter"][1]) * big
        r = SIZES[obj["size"]] * big
        fill = COLOURS[obj["colour"]]
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(obj["shape"], cx, cy, r, obj["angle"]), fill=fill)
    return np.asarray(img.reduce(SUPERSAMPLE))


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 [H, W, 3] array (fast zlib level)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
