"""Shapes World v1 vocabulary of things: canvas, colours, shapes, sizes (shared WORLD.md).

Every length here is given on the reference 64 x 64 canvas; `Canvas` scales them to another size
(a 32 x 32 video uses half of each length and a quarter of each area).
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_SIZE = 64

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 190),
    "orange": (240, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                           "cross": "crosses"}

# Bounding-box side in px on the reference canvas, inclusive.
SIZE_BANDS: dict[str, tuple[int, int]] = {"small": (10, 14), "large": (20, 26)}
ANY_SIZE: tuple[int, int] = (10, 26)
# No shape is drawn smaller on any canvas: below 8 px a rasterised triangle is as concave as a
# cross and the oracle could not tell them apart (a 32 x 32 canvas's small band is 8 px).
MIN_SIDE = 8

# Never shown in training, asked for only by the `novel` task.
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("purple", "triangle"), ("orange", "cross")})
TRAINING_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT)

MAX_OBJECTS = 4
GAP = 2  # px between objects' bounding boxes
EDGE = 1  # px between a bounding box and the canvas edge

# The oracle's thresholds on the reference canvas.
MIN_COMPONENT_AREA = 12  # px^2
RELATION_MARGIN = 4.0  # px of centroid difference for left of / above ...
MOTION_MIN_DISPLACEMENT = 6.0  # px of net centroid displacement
AREA_CHANGE = 0.30  # relative area change for growing / shrinking


@dataclass(frozen=True)
class Canvas:
    """A square canvas and the world's lengths scaled to it."""

    size: int = REFERENCE_SIZE

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"canvas size must be at least 16 px, got {self.size}")

    @property
    def scale(self) -> float:
        return self.size / REFERENCE_SIZE

    def length(self, px: float) -> int:
        """A reference length in whole pixels on this canvas (at least 1)."""
        return max(1, int(round(px * self.scale)))

    def size_band(self, size_word: str | None) -> tuple[int, int]:
        low, high = SIZE_BANDS[size_word] if size_word else ANY_SIZE
        return max(MIN_SIDE, self.length(low)), max(MIN_SIDE, self.length(high))

    @property
    def small_large_split(self) -> float:
        """Bounding-box side between the small and the large band (17 px on 64 x 64)."""
        return (SIZE_BANDS["small"][1] + SIZE_BANDS["large"][0]) / 2 * self.scale

    @property
    def min_area(self) -> float:
        return MIN_COMPONENT_AREA * self.scale**2

    @property
    def relation_margin(self) -> float:
        return RELATION_MARGIN * self.scale

    @property
    def motion_displacement(self) -> float:
        return MOTION_MIN_DISPLACEMENT * self.scale


def article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"
