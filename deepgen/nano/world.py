"""Shape world: a procedural, seeded miniature of DeepGen's five capabilities.

DeepGen-nano is trained and evaluated on CPU, so instead of web images it learns a tiny world of flat coloured
shapes on a 3x3 grid. Every sample is generated from a seed, rendered without anti-aliasing, and carries a
JSON-serialisable ``metadata`` dict that states what must be true of a correct output; ShapeEval
(:mod:`deepgen.nano.shapeeval`) reads it back to score generated images and RL rewards.

The five capabilities, in miniature:

- ``generation``: "a large red circle on the left", "two small blue squares", "a red circle and a green square".
- ``editing``: (source, instruction, target) triplets -- recolour, move, remove, add, change the background.
- ``reasoning_generation``: indirect wording the text model must resolve ("a shape with three corners in the
  colour of grass at the top").
- ``reasoning_editing``: edits with indirect wording ("paint the circle the colour of the sun").
- ``text_rendering``: one large digit or capital letter in a colour ("the digit 7 in red").

Prompt versions. ``prompt_version=1`` (the default of :func:`sample` and :func:`dataset`) is the wording every
committed model and evaluation was made with: a single-object prompt always states a size and a position, so the
only prompts without them are pairs and counts, and a model trained on it reads a bare "a red circle" as "some red
circles". ``prompt_version=2`` leaves out the size, the position or both in :data:`PLAIN_FRACTION` of
single-object generation and reasoning prompts (the image still has them, at random; the metadata then does not
check them) and words :data:`ONE_FRACTION` of those plain prompts with "one" instead of "a"/"an": "a"/"an"/"one"
always means exactly one object. ``prompt_version=3`` (:data:`LATEST_PROMPT_VERSION`, what
``train/nano/make_data.py`` writes) words :data:`PLAIN_FRACTION_V3` of them plainly, half of those with neither
size nor position, and draws what a prompt leaves out at the world's default -- :data:`DEFAULT_SIZE`, in the
:data:`DEFAULT_POSITION` cell -- as a photographer centres what they are asked to show. Random placements gave
a bare "a red circle" eighteen equally likely images, and models this small answered with several objects at
once (docs/nano.md, "The plain-prompt chain"). Version 1 draws are bit-identical to those made before version 2
existed, and version 2 draws to those made before version 3. :func:`plain_samples` draws the plain prompts
ShapeEval reports as its ``plain`` subset ("a red circle": colour, shape, count = 1).

Held-out combinations. A (subject, colour) pair -- subject being a shape or a glyph -- is reserved for the
``eval`` split iff ``(index of subject + index of colour) % 4 == 0`` (indices into :data:`SHAPES` or
:data:`GLYPHS` and :data:`OBJECT_COLOURS`), except the pairs of :data:`TRAINING_EXCEPTIONS`. For shapes that is
exactly :data:`HELD_OUT_SHAPE_COLOURS`: red and blue circles, green and black squares, the white triangle, orange
and purple diamonds; every shape and every colour still appears in training, only these combinations never do.
``train`` samples contain no held-out pair anywhere (source or target). Every ``eval`` sample is built around one:
the described object of a generation prompt, the recoloured-to / moved / removed / added object of an edit, an
object of the scene of a background edit, and the (glyph, colour) of a text prompt.

Why the exception: the modular rule alone holds out yellow and white -- the palette's only light colours -- for
the triangle, so training would never show a light triangle, and every model trained on it (VAE, base DiT, the
DeepGen stages) learned "light, so not a triangle" and failed both pairs (docs/nano.md). Keeping the yellow
triangle in training leaves every shape a light and a dark colour. It is yellow rather than white that stays
because the nano VAE pretrained on the rule alone could not reconstruct small yellow triangles at all (white ones
about half the time), so a held-out yellow triangle would have measured the VAE, not composition. The held-out
pairs are a subset of the modular rule's, so components trained on the rule alone never saw any of them.
"""

from __future__ import annotations

import json
import os
import random
import string
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from PIL import Image, ImageDraw

CAPABILITIES = ("generation", "editing", "reasoning_generation", "reasoning_editing", "text_rendering")
SPLITS = ("train", "eval")

SHAPES = ("circle", "square", "triangle", "diamond")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}

# Objects use eight colours at least ~100 RGB units apart so that ShapeEval can tell them apart in blurry
# outputs; orange/yellow are the closest pair (103). Grey is background-only, so a grey-ish blend between an
# object and a white or black background is never mistaken for an object.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 135, 0),
    "yellow": (250, 230, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "purple": (140, 50, 190),
    "white": (255, 255, 255),
    "black": (20, 20, 20),
    "grey": (180, 180, 180),
}
OBJECT_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
BACKGROUND_COLOURS = ("grey", "white", "black")
DEFAULT_BACKGROUND = "grey"

SIZES = ("small", "large")
# Side of an object's square bounding box as a fraction of its grid cell; "large" leaves a 3 px gap between
# neighbours at 64 px so that objects never touch, even after a blur.
SIZE_FRACTIONS = {"small": 0.5, "large": 0.84}

# Cells of the 3x3 grid in row-major order; the name doubles as the caption wording ("move it to the top left").
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}

# 5x7 block glyphs. "I" and "O" are left out because they would be indistinguishable from "1" and "0".
GLYPH_BITMAPS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}
GLYPHS = tuple(GLYPH_BITMAPS)
GLYPH_BLOCK_FRACTION = 0.1  # one bitmap cell is 10% of the image side: a 64 px image gets a 30x42 px glyph

EDIT_OPERATIONS = ("recolour", "move", "remove", "add", "background")

# World knowledge for the reasoning capabilities: "<shape riddle>" names a shape, "the colour of <thing>" a colour.
SHAPE_RIDDLES: dict[str, tuple[str, ...]] = {
    "circle": ("round shape", "shape with no corners"),
    "square": ("shape with four equal sides", "shape with four right angles"),
    "triangle": ("shape with three corners", "shape with three sides"),
    "diamond": ("square standing on one corner", "shape like a kite"),
}
COLOUR_RIDDLES: dict[str, tuple[str, ...]] = {
    "red": ("a ripe strawberry", "a fire truck"),
    "orange": ("a carrot", "a pumpkin"),
    "yellow": ("a banana", "the sun"),
    "green": ("grass", "a frog"),
    "blue": ("the sky", "the sea"),
    "purple": ("an eggplant", "lavender"),
    "white": ("snow", "milk"),
    "black": ("coal", "a crow"),
    "grey": ("an elephant", "a storm cloud"),
}

NUMBER_WORDS = {2: "two", 3: "three"}
RECOLOUR_TEMPLATES = ("make the {shape} {colour}", "paint the {shape} {colour}", "turn the {shape} {colour}",
                      "change the {shape} to {colour}")
MOVE_TEMPLATES = ("move the {shape} to the {position}", "put the {shape} {position_phrase}")
REMOVE_TEMPLATES = ("remove the {shape}", "delete the {shape}", "erase the {shape}")
ADD_TEMPLATES = ("add {noun_phrase} {position_phrase}", "draw {noun_phrase} {position_phrase}")
BACKGROUND_TEMPLATES = ("make the background {colour}", "change the background to {colour}")
TEXT_TEMPLATES = ("the {kind} {glyph} in {colour}", "write the {kind} {glyph} in {colour}",
                  "draw the {kind} {glyph} in {colour}")
PAIR_TEMPLATE = "{first} and {second}"
_ALL_TEMPLATES = (RECOLOUR_TEMPLATES + MOVE_TEMPLATES + REMOVE_TEMPLATES + ADD_TEMPLATES + BACKGROUND_TEMPLATES
                  + TEXT_TEMPLATES + (PAIR_TEMPLATE,))

PROMPT_VERSIONS = (1, 2, 3)
LATEST_PROMPT_VERSION = 3
# Version 2: share of single-object prompts that leave out size, position or both (a third each), and share of
# those plain prompts that say "one" rather than "a"/"an".
PLAIN_FRACTION = 0.3
ONE_FRACTION = 0.25
OMISSIONS = (("size",), ("position",), ("size", "position"))
# Version 3: half the single-object prompts leave something out, half of those both size and position (the
# bare "a red circle"), and what a prompt leaves out takes the world's default instead of a random draw.
PLAIN_FRACTION_V3 = 0.5
OMISSIONS_V3 = OMISSIONS + (("size", "position"),)
DEFAULT_SIZE = "large"
DEFAULT_POSITION = "center"

HELD_OUT_MODULUS = 4
TRAINING_EXCEPTIONS = frozenset({("triangle", "yellow")})  # pairs the modular rule would hold out (module doc)
MIN_RENDER_SIZE = 16  # below this a small shape is a few pixels and a glyph stroke is under 2 px


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {tuple(choices)}.")


def is_held_out(subject: str, colour: str) -> bool:
    """Whether the (shape or glyph, colour) pair is reserved for the ``eval`` split (rule in the module doc)."""
    if subject in SHAPES:
        index = SHAPES.index(subject)
    elif subject in GLYPHS:
        index = GLYPHS.index(subject)
    else:
        raise ValueError(f"Unknown subject {subject!r}; expected one of SHAPES {SHAPES} or GLYPHS.")
    _check_choice("colour", colour, OBJECT_COLOURS)
    return ((index + OBJECT_COLOURS.index(colour)) % HELD_OUT_MODULUS == 0
            and (subject, colour) not in TRAINING_EXCEPTIONS)


HELD_OUT_SHAPE_COLOURS = frozenset((s, c) for s in SHAPES for c in OBJECT_COLOURS if is_held_out(s, c))


# ---------------------------------------------------------------------------------------------------------------
# Scenes and rendering
# ---------------------------------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), inclusive pixel bounds as PIL's ImageDraw uses them


def object_box(position: str, size: str, image_size: int) -> Box:
    """Bounding box of an object of ``size`` centred in grid cell ``position`` of an ``image_size`` image."""
    cell = image_size / 3
    row, col = divmod(POSITIONS.index(position), 3)
    side = max(2, round(SIZE_FRACTIONS[size] * cell))
    x0 = round((col + 0.5) * cell - side / 2)
    y0 = round((row + 0.5) * cell - side / 2)
    return x0, y0, x0 + side - 1, y0 + side - 1


def glyph_box(image_size: int) -> Box:
    """Bounding box of the centred 5x7 glyph; its cells are whole pixels so strokes have a uniform width."""
    block = max(1, round(GLYPH_BLOCK_FRACTION * image_size))
    x0 = (image_size - 5 * block) // 2
    y0 = (image_size - 7 * block) // 2
    return x0, y0, x0 + 5 * block - 1, y0 + 7 * block - 1


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill: Union[int, tuple[int, int, int]]) -> None:
    """Draw a filled ``shape`` inside ``box``; triangles point up and diamonds touch the middle of each side."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def draw_glyph(draw: ImageDraw.ImageDraw, glyph: str, box: Box, fill: Union[int, tuple[int, int, int]]) -> None:
    """Draw ``glyph``'s 5x7 bitmap scaled to fill ``box``."""
    _check_choice("glyph", glyph, GLYPHS)
    x0, y0, x1, y1 = box
    block_w, block_h = (x1 - x0 + 1) / 5, (y1 - y0 + 1) / 7
    for row, line in enumerate(GLYPH_BITMAPS[glyph]):
        for col, cell in enumerate(line):
            if cell == "#":
                draw.rectangle((round(x0 + col * block_w), round(y0 + row * block_h),
                                round(x0 + (col + 1) * block_w) - 1, round(y0 + (row + 1) * block_h) - 1),
                               fill=fill)


@dataclass(frozen=True)
class ShapeSpec:
    """One flat shape: ``shape`` in ``colour``, ``size`` "small"/"large", centred in grid cell ``position``."""

    shape: str
    colour: str
    position: str
    size: str = "large"

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("object colour", self.colour, OBJECT_COLOURS)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("size", self.size, SIZES)


@dataclass(frozen=True)
class GlyphSpec:
    """A large centred digit or capital letter (one of :data:`GLYPHS`) in ``colour``."""

    glyph: str
    colour: str

    def __post_init__(self) -> None:
        _check_choice("glyph", self.glyph, GLYPHS)
        _check_choice("glyph colour", self.colour, OBJECT_COLOURS)


@dataclass(frozen=True)
class Scene:
    """A background colour plus either shapes in distinct grid cells or a single glyph.

    Args:
        objects: the shapes; a list is accepted and stored as a tuple. At most one object per grid cell, and no
            object in the background colour (it would be invisible).
        background: one of :data:`BACKGROUND_COLOURS`.
        glyph: a glyph drawn in the centre; scenes with a glyph have no objects.
    """

    objects: tuple[ShapeSpec, ...] = ()
    background: str = DEFAULT_BACKGROUND
    glyph: Optional[GlyphSpec] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        _check_choice("background", self.background, BACKGROUND_COLOURS)
        positions = [obj.position for obj in self.objects]
        if len(set(positions)) != len(positions):
            raise ValueError(f"Objects must occupy distinct grid cells, got positions {positions}.")
        hidden = [obj for obj in self.objects if obj.colour == self.background]
        if hidden or (self.glyph is not None and self.glyph.colour == self.background):
            raise ValueError(f"Nothing may be drawn in the background colour {self.background!r}; "
                             "pick another object/glyph colour or background.")
        if self.glyph is not None and self.objects:
            raise ValueError("A scene holds either a glyph or shapes, not both; drop the objects or the glyph.")

    def render(self, size: int = 64) -> Image.Image:
        """Render the scene as a ``size`` x ``size`` RGB image, deterministically and without anti-aliasing."""
        if size < MIN_RENDER_SIZE:
            raise ValueError(f"size must be at least {MIN_RENDER_SIZE} px to keep shapes legible, got {size}.")
        image = Image.new("RGB", (size, size), PALETTE[self.background])
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            draw_shape(draw, obj.shape, object_box(obj.position, obj.size, size), PALETTE[obj.colour])
        if self.glyph is not None:
            draw_glyph(draw, self.glyph.glyph, glyph_box(size), PALETTE[self.glyph.colour])
        return image

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, the form edits store in their metadata."""
        return {"background": self.background, "objects": [asdict(obj) for obj in self.objects],
                "glyph": None if self.glyph is None else asdict(self.glyph)}


@dataclass
class Sample:
    """One training/eval example.

    Args:
        capability: one of :data:`CAPABILITIES`.
        prompt: the caption (generation, text) or the instruction (edits).
        target: the scene a perfect model outputs.
        source: the input scene of an edit; ``None`` for the generation capabilities.
        metadata: JSON-serialisable statement of what a correct output satisfies (read by ShapeEval). Always has
            ``capability``; generation has ``groups`` of required objects, edits ``operation``, ``source`` and
            ``target`` scene dicts, text rendering ``glyph`` and ``colour``.
    """

    capability: str
    prompt: str
    target: Scene
    source: Optional[Scene] = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def target_image(self, size: int = 64) -> Image.Image:
        return self.target.render(size)

    def source_image(self, size: int = 64) -> Optional[Image.Image]:
        return None if self.source is None else self.source.render(size)


# ---------------------------------------------------------------------------------------------------------------
# Wording
# ---------------------------------------------------------------------------------------------------------------


def _with_article(phrase: str, one: bool = False) -> str:
    if one:
        return "one " + phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _shape_words(rng: random.Random, shape: str, indirect: bool) -> str:
    return rng.choice(SHAPE_RIDDLES[shape]) if indirect else shape


def _colour_words(rng: random.Random, colour: str, indirect: bool) -> str:
    return f"the colour of {rng.choice(COLOUR_RIDDLES[colour])}" if indirect else colour


def _noun_phrase(rng: random.Random, shape: str, colour: str, size: Optional[str] = None,
                 shape_indirect: bool = False, colour_indirect: bool = False, one: bool = False) -> str:
    """"a large red circle"; indirectly "a large shape with three corners in the colour of grass"; with ``one``,
    "one large red circle"."""
    words = [size] if size else []
    if not colour_indirect:
        words.append(colour)
    words.append(_shape_words(rng, shape, shape_indirect))
    if colour_indirect:
        words.append("in " + _colour_words(rng, colour, True))
    return _with_article(" ".join(words), one)


def _indirection(rng: random.Random, indirect: bool) -> tuple[bool, bool]:
    """Which of (shape, colour) a prompt words indirectly: neither, or at least one when ``indirect``."""
    if not indirect:
        return False, False
    return rng.choice(((True, False), (False, True), (True, True)))


# ---------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------


def _colour_options(subject: str, held_out: bool, exclude: Iterable[str] = ()) -> list[str]:
    """The colours whose pair with ``subject`` is held out (or not), minus ``exclude``."""
    excluded = set(exclude)
    return [c for c in OBJECT_COLOURS if c not in excluded and is_held_out(subject, c) == held_out]


def _pick_colour(rng: random.Random, subject: str, held_out: bool, exclude: Iterable[str] = ()) -> str:
    """A colour for ``subject`` whose pair is held out (eval focus) or not (everything else), avoiding ``exclude``."""
    return rng.choice(_colour_options(subject, held_out, exclude))


def _random_objects(rng: random.Random, shapes: Sequence[str], positions: Sequence[str],
                    exclude_colours: Iterable[str]) -> list[ShapeSpec]:
    """Objects with training-split colours and random sizes, one per (shape, position)."""
    excluded = tuple(exclude_colours)
    return [ShapeSpec(shape, _pick_colour(rng, shape, False, excluded), position, rng.choice(SIZES))
            for shape, position in zip(shapes, positions)]


def _group(shape: str, colour: str, count: int = 1, size: Optional[str] = None,
           position: Optional[str] = None) -> dict[str, Any]:
    """A generation requirement: ``count`` objects of (shape, colour); ``None`` size/position is not checked."""
    return {"shape": shape, "colour": colour, "count": count, "size": size, "position": position}


def _single_object(rng: random.Random, shape: str, colour: str, size: str, indirect: bool,
                   omitted: tuple[str, ...], one: bool,
                   defaults: bool = False) -> tuple[str, list[ShapeSpec], dict[str, Any]]:
    """Prompt, objects and metadata of one object; ``omitted`` names what the prompt leaves to the image, which
    draws it at random or, with ``defaults`` (version 3), uses :data:`DEFAULT_SIZE` / :data:`DEFAULT_POSITION`."""
    position = rng.choice(POSITIONS)
    if defaults:
        size = DEFAULT_SIZE if "size" in omitted else size
        position = DEFAULT_POSITION if "position" in omitted else position
    shape_indirect, colour_indirect = _indirection(rng, indirect)
    stated_size = None if "size" in omitted else size
    stated_position = None if "position" in omitted else position
    prompt = _noun_phrase(rng, shape, colour, stated_size, shape_indirect, colour_indirect, one)
    if stated_position is not None:
        prompt += f" {POSITION_PHRASES[stated_position]}"
    metadata: dict[str, Any] = {"groups": [_group(shape, colour, 1, stated_size, stated_position)]}
    if indirect:
        metadata["indirect"] = [name for name, flag in (("shape", shape_indirect), ("colour", colour_indirect))
                                if flag]
    if omitted:
        metadata["omitted"] = list(omitted)
    return prompt, [ShapeSpec(shape, colour, position, size)], metadata


def _plain_wording(rng: random.Random, prompt_version: int) -> tuple[tuple[str, ...], bool]:
    """(what a single-object prompt omits, whether it says "one"); version 1 draws nothing from ``rng``."""
    if prompt_version == 1:
        return (), False
    fraction, omissions = (PLAIN_FRACTION, OMISSIONS) if prompt_version == 2 else (PLAIN_FRACTION_V3, OMISSIONS_V3)
    if rng.random() >= fraction:
        return (), False
    return rng.choice(omissions), rng.random() < ONE_FRACTION


def _sample_generation(rng: random.Random, split: str, indirect: bool, prompt_version: int = 1) -> Sample:
    """Single objects (with size and position unless plain), counts of 2-3, or pairs of objects; reasoning uses
    single objects."""
    capability = "reasoning_generation" if indirect else "generation"
    held_out = split == "eval"
    task = "single" if indirect else rng.choice(("single", "counting", "pair"))
    shape = rng.choice(SHAPES)
    colour = _pick_colour(rng, shape, held_out)
    size = rng.choice(SIZES)
    metadata: dict[str, Any] = {"capability": capability, "task": task, "background": DEFAULT_BACKGROUND}
    if task == "single":
        omitted, one = _plain_wording(rng, prompt_version)
        prompt, objects, single = _single_object(rng, shape, colour, size, indirect, omitted, one,
                                                 defaults=prompt_version >= 3)
        metadata.update(single)
    elif task == "counting":
        count = rng.choice(tuple(NUMBER_WORDS))
        prompt = f"{NUMBER_WORDS[count]} {size} {colour} {SHAPE_PLURALS[shape]}"
        objects = [ShapeSpec(shape, colour, position, size) for position in rng.sample(POSITIONS, count)]
        metadata["groups"] = [_group(shape, colour, count, size)]
    else:
        other_shape = rng.choice(SHAPES)
        other_colour = _pick_colour(rng, other_shape, False, exclude=[colour] if other_shape == shape else [])
        pairs = [(shape, colour), (other_shape, other_colour)]
        rng.shuffle(pairs)
        prompt = PAIR_TEMPLATE.format(first=_noun_phrase(rng, *pairs[0]), second=_noun_phrase(rng, *pairs[1]))
        objects = [ShapeSpec(s, c, position, rng.choice(SIZES))
                   for (s, c), position in zip(pairs, rng.sample(POSITIONS, 2))]
        metadata["groups"] = [_group(s, c) for s, c in pairs]
    return Sample(capability, prompt, Scene(objects), metadata=metadata)


def _edit_backgrounds(rng: random.Random, operation: str) -> tuple[str, str]:
    """(source, target) backgrounds: mostly grey, differing only for a background edit."""
    source = rng.choices(BACKGROUND_COLOURS, weights=(2, 1, 1))[0]
    if operation != "background":
        return source, source
    return source, rng.choice([bg for bg in BACKGROUND_COLOURS if bg != source])


def _sample_edit(rng: random.Random, split: str, indirect: bool, prompt_version: int = 1) -> Sample:
    """An edit triplet. Objects have distinct shapes, so "the circle" always names exactly one object.

    The edited object is the first source object (shapes and cells are drawn in random order), or the new one
    for "add". In the eval split its (shape, colour) pair is held out: the new colour for "recolour", the object
    as it is for the other operations (for "background", the first object stands in).
    """
    held_out = split == "eval"
    operation = rng.choice(EDIT_OPERATIONS)
    source_bg, target_bg = _edit_backgrounds(rng, operation)
    backgrounds = {source_bg, target_bg}
    shape_indirect, colour_indirect = _indirection(rng, indirect)
    count = rng.randint(0, 2) if operation == "add" else rng.randint(1, 3)
    # count + 1 shapes and cells: the spare ones are used by "add" and "move".
    if held_out:  # the edited shape needs a held-out colour unlike the backgrounds (the triangle has only white)
        focus = rng.choice([shape for shape in SHAPES if _colour_options(shape, True, backgrounds)])
        others = rng.sample([shape for shape in SHAPES if shape != focus], count)
        shapes = others + [focus] if operation == "add" else [focus] + others
    else:
        shapes = rng.sample(SHAPES, count + 1)
    cells = rng.sample(POSITIONS, count + 1)
    objects = _random_objects(rng, shapes[:count], cells[:count], backgrounds)
    if held_out and operation in ("move", "remove", "background"):
        objects[0] = replace(objects[0], colour=_pick_colour(rng, objects[0].shape, True, backgrounds))
    target_objects = list(objects)

    if operation == "recolour":
        edited = objects[0]
        new_colour = _pick_colour(rng, edited.shape, held_out, backgrounds | {edited.colour})
        target_objects[0] = replace(edited, colour=new_colour)
        instruction = rng.choice(RECOLOUR_TEMPLATES).format(
            shape=_shape_words(rng, edited.shape, shape_indirect),
            colour=_colour_words(rng, new_colour, colour_indirect))
    elif operation == "move":
        edited, destination = objects[0], cells[count]
        target_objects[0] = replace(edited, position=destination)
        instruction = rng.choice(MOVE_TEMPLATES).format(
            shape=_shape_words(rng, edited.shape, indirect), position=destination,
            position_phrase=POSITION_PHRASES[destination])
    elif operation == "remove":
        del target_objects[0]
        instruction = rng.choice(REMOVE_TEMPLATES).format(shape=_shape_words(rng, objects[0].shape, indirect))
    elif operation == "add":
        shape, position = shapes[count], cells[count]
        added = ShapeSpec(shape, _pick_colour(rng, shape, held_out, backgrounds), position, rng.choice(SIZES))
        target_objects.insert(0, added)
        instruction = rng.choice(ADD_TEMPLATES).format(
            noun_phrase=_noun_phrase(rng, shape, added.colour, added.size, shape_indirect, colour_indirect),
            position_phrase=POSITION_PHRASES[position])
    else:
        instruction = rng.choice(BACKGROUND_TEMPLATES).format(colour=_colour_words(rng, target_bg, indirect))

    source, target = Scene(objects, source_bg), Scene(target_objects, target_bg)
    capability = "reasoning_editing" if indirect else "editing"
    metadata = {"capability": capability, "operation": operation,
                "source": source.to_dict(), "target": target.to_dict()}
    return Sample(capability, instruction, target, source, metadata)


def _sample_text(rng: random.Random, split: str, indirect: bool, prompt_version: int = 1) -> Sample:
    glyph = rng.choice(GLYPHS)
    colour = _pick_colour(rng, glyph, split == "eval")
    kind = "digit" if glyph.isdigit() else "letter"
    prompt = rng.choice(TEXT_TEMPLATES).format(kind=kind, glyph=glyph, colour=colour)
    metadata = {"capability": "text_rendering", "glyph": glyph, "colour": colour, "background": DEFAULT_BACKGROUND}
    return Sample("text_rendering", prompt, Scene(glyph=GlyphSpec(glyph, colour)), metadata=metadata)


# sampler(rng, split, indirect, prompt_version); edits and text are worded the same in every prompt version.
_SAMPLERS: dict[str, tuple[Callable[[random.Random, str, bool, int], Sample], bool]] = {
    "generation": (_sample_generation, False),
    "editing": (_sample_edit, False),
    "reasoning_generation": (_sample_generation, True),
    "reasoning_editing": (_sample_edit, True),
    "text_rendering": (_sample_text, False),
}


def sample(capability: str, rng: Union[int, random.Random], split: str = "train", prompt_version: int = 1) -> Sample:
    """Draw one sample of ``capability`` from ``split``.

    Args:
        capability: one of :data:`CAPABILITIES`.
        rng: a seed or a ``random.Random``; the same seed always gives the same sample.
        split: "train" (no held-out combination anywhere) or "eval" (built around a held-out combination).
        prompt_version: 1 (every single-object prompt states size and position; the draws of the committed
            models and evaluations), 2 (plain prompts too) or 3 (more plain prompts, whose objects take the
            default size and position; see the module doc). Only generation and reasoning generation differ;
            edits and text are the same in all three.
    """
    _check_choice("capability", capability, CAPABILITIES)
    _check_choice("split", split, SPLITS)
    _check_choice("prompt_version", prompt_version, PROMPT_VERSIONS)
    generator = rng if isinstance(rng, random.Random) else random.Random(rng)
    sampler, indirect = _SAMPLERS[capability]
    return sampler(generator, split, indirect, prompt_version)


def dataset(split: str, n: int, seed: int = 0, capabilities: Sequence[str] = CAPABILITIES,
            prompt_version: int = 1) -> list[Sample]:
    """``n`` samples cycling through ``capabilities``, deterministic in (split, n, seed, prompt_version).

    Sample ``i`` depends only on (split, seed, i, prompt_version), so a smaller ``n`` gives a prefix of a larger
    one. ``prompt_version`` 1 (the default) reproduces every draw made before version 2 existed.
    """
    if not capabilities:
        raise ValueError(f"capabilities must name at least one of {CAPABILITIES}.")
    for capability in capabilities:
        _check_choice("capability", capability, CAPABILITIES)
    if n < 0:
        raise ValueError(f"n must be a non-negative number of samples, got {n}.")
    return [sample(capabilities[i % len(capabilities)], random.Random(f"shapeworld/{split}/{seed}/{i}"), split,
                   prompt_version) for i in range(n)]


def plain_samples(split: str, n: int, seed: int = 0, prompt_version: int = LATEST_PROMPT_VERSION) -> list[Sample]:
    """``n`` plain single-object generation prompts of ``split`` -- no size, no position: "a red circle", "one
    blue square" -- scored for colour, shape and count = 1 (ShapeEval's ``plain`` subset).

    Drawn from their own stream (sample ``i`` depends only on (split, seed, i)), so they never change the draws
    of :func:`dataset`. In the ``eval`` split every (shape, colour) pair is held out. The prompts are the same in
    versions 2 and 3; the image's object is at a random size and cell in version 2, large and in the center in
    version 3 (the scores never check either).
    """
    _check_choice("split", split, SPLITS)
    if prompt_version < 2:
        raise ValueError(f"plain prompts exist from prompt_version 2 on, got {prompt_version}.")
    _check_choice("prompt_version", prompt_version, PROMPT_VERSIONS)
    if n < 0:
        raise ValueError(f"n must be a non-negative number of samples, got {n}.")
    samples = []
    for i in range(n):
        rng = random.Random(f"shapeworld/{split}/{seed}/plain/{i}")
        shape = rng.choice(SHAPES)
        colour = _pick_colour(rng, shape, split == "eval")
        one = rng.random() < ONE_FRACTION
        prompt, objects, metadata = _single_object(rng, shape, colour, rng.choice(SIZES), False,
                                                   ("size", "position"), one, defaults=prompt_version >= 3)
        metadata = {"capability": "generation", "task": "plain", "background": DEFAULT_BACKGROUND, **metadata}
        samples.append(Sample("generation", prompt, Scene(objects), metadata=metadata))
    return samples


def to_records(samples: Iterable[Sample], size: int = 64) -> list[dict[str, Any]]:
    """Rows for ``datasets.Dataset.from_list``; ``metadata`` is a JSON string, ``source_image`` None if no edit."""
    return [{"image": s.target_image(size), "source_image": s.source_image(size), "prompt": s.prompt,
             "capability": s.capability, "metadata": json.dumps(s.metadata, sort_keys=True)}
            for s in samples]


def write_parquet(samples: Sequence[Sample], path: Union[str, Path], size: int = 64) -> Path:
    """Write :func:`to_records` rows of ``samples`` as one parquet file (a ``format: parquet`` training source).

    Written to a temporary file beside ``path`` and renamed into place, so a failure leaves no partial file.
    """
    from datasets import Dataset  # imported here: the world itself needs only PIL

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        Dataset.from_list(to_records(samples, size=size)).to_parquet(str(temp))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def caption_corpus(prompt_version: int = 1) -> list[str]:
    """Every word and phrase a prompt of ``prompt_version`` can contain (sorted, unique), e.g. to train a tiny
    tokenizer. Version 2 adds "one"; the version 1 list is unchanged, so tokenizers trained on it stay the same
    (a byte-level BPE still spells "one", in two pieces)."""
    _check_choice("prompt_version", prompt_version, PROMPT_VERSIONS)
    phrases = set(SHAPES) | set(SHAPE_PLURALS.values()) | set(PALETTE) | set(SIZES) | set(POSITIONS)
    phrases |= set(POSITION_PHRASES.values()) | set(NUMBER_WORDS.values()) | set(GLYPHS) | {"digit", "letter"}
    phrases |= {"a", "an", "in", "the colour of", "to the"} | ({"one"} if prompt_version >= 2 else set())
    phrases |= {riddle for riddles in SHAPE_RIDDLES.values() for riddle in riddles}
    phrases |= {f"the colour of {thing}" for things in COLOUR_RIDDLES.values() for thing in things}
    for template in _ALL_TEMPLATES:
        phrases |= {literal.strip() for literal, *_ in string.Formatter().parse(template) if literal.strip()}
    return sorted(phrases)
