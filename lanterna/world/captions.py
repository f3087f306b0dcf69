"""The caption grammar: `Requirements` <-> lower-case English (shared WORLD.md).

    caption  := [prefix] body [background]
    prefix   := an image of | an image showing | a picture of | a picture showing | a photo of
              | a photo showing | a drawing of | a scene with | there is | there are
    body     := item (and item)* | item relation item
    item     := (a | an | one | two | three | four) [small | large] colour shape[s] [place] [motion]
    place    := (in | at | on) the (top left | top | top right | left | center | middle | right
              | bottom left | bottom | bottom right)
    motion   := moving (left | right | up | down) | growing | shrinking | standing still
    relation := [to the] left of | [to the] right of | above | below
    background := (on | with) a (white | black | gray) background

`caption_of(requirements, rng)` picks among the template variants; `parse_caption` reads any of
them back (and raises ValueError, naming the word it stopped at, for anything else).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from lanterna.world.palette import BACKGROUNDS, COLOURS, PLURALS, SIZE_BANDS, article
from lanterna.world.spec import PLACE_CELLS, ObjectRequirement, Relation, Requirements

PREFIXES: tuple[str, ...] = ("an image of", "an image showing", "a picture of", "a picture showing",
                             "a photo of", "a photo showing", "a drawing of", "a scene with")
NUMBERS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
COUNT_WORDS: dict[str, int] = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
SINGULARS: dict[str, str] = {plural: shape for shape, plural in PLURALS.items()}
PLACE_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "at the top left"),
    "top": ("at the top",),
    "top right": ("in the top right", "at the top right"),
    "left": ("on the left", "at the left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right"),
    "bottom left": ("in the bottom left", "at the bottom left"),
    "bottom": ("at the bottom",),
    "bottom right": ("in the bottom right", "at the bottom right"),
}
PLACE_WORDS: dict[str, str] = {**{name: name for name in PLACE_CELLS}, "middle": "center"}
MOTION_PHRASES: dict[str, str] = {"left": "moving left", "right": "moving right", "up": "moving up",
                                  "down": "moving down", "growing": "growing",
                                  "shrinking": "shrinking", "still": "standing still"}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"), "right of": ("to the right of", "right of"),
    "above": ("above",), "below": ("below",)}

# What the parser accepts: phrases as tuples of words -> their meaning.
PREFIX_WORDS: dict[tuple[str, ...], str] = {
    **{tuple(p.split()): p for p in PREFIXES}, ("there", "is"): "there is", ("there", "are"): "there are"}
RELATION_WORDS: dict[tuple[str, ...], str] = {
    tuple(p.split()): r for r, phrases in RELATION_PHRASES.items() for p in phrases}
MOTION_WORDS: dict[tuple[str, ...], str] = {tuple(p.split()): m for m, p in MOTION_PHRASES.items()}
BACKGROUND_WORDS: dict[tuple[str, ...], str] = {
    (lead, det, name, "background"): name
    for lead in ("on", "with") for det in ("a", "an") for name in BACKGROUNDS}


# ---------------------------------------------------------------- spec -> caption

def pick(rng: np.random.Generator | None, options: tuple[str, ...]) -> str:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def noun_phrase(obj: ObjectRequirement) -> str:
    words = [w for w in (obj.size, obj.colour) if w]
    noun = obj.shape if obj.count == 1 else PLURALS[obj.shape]
    det = article(words[0]) if obj.count == 1 else NUMBERS[obj.count]
    return " ".join([det, *words, noun])


def item_text(obj: ObjectRequirement, rng: np.random.Generator | None) -> str:
    parts = [noun_phrase(obj)]
    if obj.place:
        parts.append(pick(rng, PLACE_PHRASES[obj.place]))
    if obj.motion:
        parts.append(MOTION_PHRASES[obj.motion])
    return " ".join(parts)


def caption_of(req: Requirements, rng: np.random.Generator | None = None) -> str:
    """The caption of `req`: the plain form without `rng`, a random template variant with it."""
    items = [item_text(o, rng) for o in req.objects]
    if req.relation is not None:
        r = req.relation
        body = f"{items[r.subject]} {pick(rng, RELATION_PHRASES[r.relation])} {items[r.reference]}"
    else:
        body = " and ".join(items)
    if rng is not None:
        choice = int(rng.integers(len(PREFIXES) + 3))
        if choice < len(PREFIXES):
            body = f"{PREFIXES[choice]} {body}"
        elif choice == len(PREFIXES):
            body = f"there {'is' if req.objects[0].count == 1 else 'are'} {body}"
    if req.background:
        body = f"{body} on a {req.background} background"
    return body


def object_captions(req: Requirements) -> list[str]:
    """One plain caption per object a caption asks for, each with the caption's background; none
    for one object (or group). A relation between the objects is dropped: each caption describes
    its object alone."""
    if len(req.objects) < 2:
        return []
    return [caption_of(Requirements((obj,), None, req.background)) for obj in req.objects]


# ---------------------------------------------------------------- caption -> spec

@lru_cache(maxsize=None)
def first_words(phrases: tuple[tuple[str, ...], ...]) -> dict[str, list[tuple[str, ...]]]:
    index: dict[str, list[tuple[str, ...]]] = {}
    for phrase in phrases:
        index.setdefault(phrase[0], []).append(phrase)
    return index


def by_first_word(phrases: dict[tuple[str, ...], str]) -> dict[str, list[tuple[str, ...]]]:
    return first_words(tuple(phrases))


class Words:
    """A cursor over a caption's words that knows where it is, for error messages."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.words = text.strip().lower().rstrip(".").strip().split()
        self.i = 0
        for i, word in enumerate(self.words):
            if not re.fullmatch(r"[a-z]+", word):
                self.i = i
                self.fail(f"the word {word!r} is not in the grammar")

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.words[j] if j < len(self.words) else None

    def take_phrase(self, phrase: tuple[str, ...]) -> bool:
        """Step over `phrase` (a tuple of words) if the caption continues with it."""
        if tuple(self.words[self.i:self.i + len(phrase)]) == phrase:
            self.i += len(phrase)
            return True
        return False

    def take_any(self, phrases: dict[tuple[str, ...], str]) -> str | None:
        """Step over the first of `phrases` the caption continues with; its value, or None."""
        for phrase in by_first_word(phrases).get(self.peek(), ()):
            if self.take_phrase(phrase):
                return phrases[phrase]
        return None

    def take(self) -> str:
        word = self.peek()
        if word is None:
            self.fail("the caption ends too early")
        self.i += 1
        return word

    @property
    def done(self) -> bool:
        return self.i >= len(self.words)

    def fail(self, why: str) -> None:
        where = f" (at word {self.i + 1})" if self.i < len(self.words) else ""
        raise ValueError(f"not a Shapes World caption: {why}{where}: {self.text!r}")


def parse_caption(text: str) -> Requirements:
    """The requirements a caption states; ValueError for text outside the grammar."""
    words = Words(text)
    if not words.words:
        words.fail("the caption is empty")
    words.take_any(PREFIX_WORDS)
    items = [parse_item(words)]
    relation = words.take_any(RELATION_WORDS)
    if relation is not None:
        items.append(parse_item(words))
    else:
        while words.take_phrase(("and",)):
            items.append(parse_item(words))
    background = words.take_any(BACKGROUND_WORDS)
    if not words.done:
        words.fail(f"unexpected {' '.join(words.words[words.i:])!r}")
    try:
        return Requirements(tuple(items), Relation(0, relation, 1) if relation else None, background)
    except ValueError as e:
        raise ValueError(f"not a Shapes World caption: {e}: {text!r}") from None


def try_parse(text: str) -> Requirements | None:
    """`parse_caption`, or None for text outside the grammar."""
    try:
        return parse_caption(text)
    except ValueError:
        return None


def parse_item(words: Words) -> ObjectRequirement:
    det = words.take()
    if det not in COUNT_WORDS:
        words.i -= 1
        words.fail(f"expected a, an or a number (one to four), got {det!r}")
    count = COUNT_WORDS[det]
    size = words.take() if words.peek() in SIZE_BANDS else None
    colour = words.take()
    if colour not in COLOURS:
        words.i -= 1
        words.fail(f"expected a colour ({', '.join(COLOURS)}), got {colour!r}")
    noun = words.take()
    shape = noun if count == 1 else SINGULARS.get(noun)
    if shape not in PLURALS:
        words.i -= 1
        form = "shape" if count == 1 else "plural shape"
        options = PLURALS if count == 1 else SINGULARS
        words.fail(f"expected a {form} ({', '.join(options)}) after {det!r}, got {noun!r}")
    place = parse_place(words)
    motion = parse_motion(words)
    try:
        return ObjectRequirement(colour, shape, count, size, place, motion)
    except ValueError as e:
        words.fail(str(e))
        raise  # unreachable: fail raises


def parse_place(words: Words) -> str | None:
    if words.peek() not in ("in", "at", "on") or words.peek(1) != "the":
        return None
    two = f"{words.peek(2)} {words.peek(3)}"
    if two in PLACE_WORDS:
        words.i += 4
        return PLACE_WORDS[two]
    one = words.peek(2)
    if one in PLACE_WORDS:
        words.i += 3
        return PLACE_WORDS[one]
    words.i += 2
    words.fail(f"expected a place ({', '.join(PLACE_WORDS)})")
    return None


def parse_motion(words: Words) -> str | None:
    motion = words.take_any(MOTION_WORDS)
    if motion is None and words.peek() == "moving":
        words.i += 1
        words.fail("expected a direction after 'moving' (left, right, up, down)")
    return motion
