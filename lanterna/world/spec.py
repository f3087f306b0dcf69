"""What a caption asks for (`Requirements`) and a concrete scene that shows it (`Scene`).

A caption is a rendering of `Requirements`; the oracle judges an image against them. A `Scene` is
one layout satisfying them: every object with its bounding box, and for video its box in the
last frame (frames in between are interpolated).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lanterna.world.palette import BACKGROUNDS, COLOURS, MAX_OBJECTS, SHAPES, SIZE_BANDS, Canvas

MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "growing", "shrinking", "still")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

# The 3 x 3 grid: (row, column) -> the place's name.
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "middle", "right")
PLACES: dict[tuple[int, int], str] = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
PLACE_CELLS: dict[str, tuple[int, int]] = {name: cell for cell, name in PLACES.items()}


def place_of(x: float, y: float, canvas_size: int) -> str:
    """The grid place of a point: thirds of the canvas in x and in y."""
    third = canvas_size / 3
    column = min(2, max(0, int(x // third)))
    row = min(2, max(0, int(y // third)))
    return PLACES[(row, column)]


@dataclass(frozen=True)
class ObjectRequirement:
    colour: str
    shape: str
    count: int = 1
    size: str | None = None  # "small" | "large"
    place: str | None = None  # a name of PLACES
    motion: str | None = None  # one of MOTIONS (video)

    def __post_init__(self) -> None:
        check_choice("colour", self.colour, COLOURS)
        check_choice("shape", self.shape, SHAPES)
        if not 1 <= self.count <= MAX_OBJECTS:
            raise ValueError(f"count must be 1 to {MAX_OBJECTS}, got {self.count}")
        if self.size is not None:
            check_choice("size", self.size, SIZE_BANDS)
        if self.place is not None:
            check_choice("place", self.place, PLACE_CELLS)
        if self.motion is not None:
            check_choice("motion", self.motion, MOTIONS)
        if self.count > 1 and (self.place or self.motion):
            raise ValueError("a place or a motion is asked of one object, not of a counted group")

    @property
    def kind(self) -> tuple[str, str]:
        return self.colour, self.shape

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Relation:
    subject: int  # index into Requirements.objects
    relation: str  # one of RELATIONS
    reference: int

    def __post_init__(self) -> None:
        check_choice("relation", self.relation, RELATIONS)


@dataclass(frozen=True)
class Requirements:
    """The structured spec a caption asks for; the judge checks every field."""

    objects: tuple[ObjectRequirement, ...]
    relation: Relation | None = None
    background: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        if not self.objects:
            raise ValueError("a caption asks for at least one object")
        total = sum(o.count for o in self.objects)
        if total > MAX_OBJECTS:
            raise ValueError(f"at most {MAX_OBJECTS} objects an image, asked for {total}")
        kinds = [o.kind for o in self.objects]
        if len(set(kinds)) != len(kinds):
            raise ValueError("each coloured shape is named once; count repeated ones ('two red circles')")
        if self.background is not None:
            check_choice("background", self.background, BACKGROUNDS)
        if self.relation is not None:
            r = self.relation
            if len(self.objects) != 2 or {r.subject, r.reference} != {0, 1}:
                raise ValueError("a relation joins exactly two objects")
            if any(o.count != 1 or o.place or o.motion for o in self.objects):
                raise ValueError("a relation joins two single still objects without a place")
        if self.is_video and any(o.place for o in self.objects):
            raise ValueError("video captions give motions, not places")

    @property
    def is_video(self) -> bool:
        return any(o.motion is not None for o in self.objects)

    @property
    def total_objects(self) -> int:
        return sum(o.count for o in self.objects)


@dataclass(frozen=True)
class Box:
    """An axis-aligned square bounding box: top-left corner and side, in whole pixels."""

    x: int
    y: int
    size: int

    @property
    def x1(self) -> int:
        return self.x + self.size

    @property
    def y1(self) -> int:
        return self.y + self.size

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.size / 2, self.y + self.size / 2


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    box: Box  # in the first frame
    end: Box | None = None  # in the last frame of a video; None = the same as `box`
    motion: str = "still"

    def box_at(self, t: float) -> Box:
        """The box at time t in [0, 1]: position and size move linearly, about a fixed centre."""
        end = self.end or self.box
        if end == self.box:
            return self.box
        size = int(round(self.box.size + (end.size - self.box.size) * t))
        cx = self.box.x + self.box.size / 2 + (end.x + end.size / 2 - self.box.x - self.box.size / 2) * t
        cy = self.box.y + self.box.size / 2 + (end.y + end.size / 2 - self.box.y - self.box.size / 2) * t
        return Box(int(round(cx - size / 2)), int(round(cy - size / 2)), size)


@dataclass(frozen=True)
class Scene:
    """One image (or video) of the world and the requirements its caption states."""

    background: str
    objects: tuple[SceneObject, ...]
    requirements: Requirements
    canvas: Canvas = field(default_factory=Canvas)
    task: str = ""


def check_choice(what: str, value: object, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")
