"""ShapeEval: a deterministic evaluator for shape-world outputs, our miniature GenEval / WISE / ImgEdit.

An image is read back into objects in four steps, all at the canonical :data:`EVAL_SIZE`:

1. the background is the :data:`deepgen.nano.world.PALETTE` colour that most pixels are within
   :data:`COLOUR_TOLERANCE` RGB units of, provided it covers :data:`MIN_BACKGROUND_SHARE` of the image;
2. every other pixel is unmixed: it is explained by the object colour whose straight line from the background
   passes closest to it, and takes that colour if the line is within the tolerance and the pixel is at least
   half-way along it (where a symmetric blur leaves the true edge);
3. pixels of each object colour are grouped into 8-connected components; components smaller than
   :data:`MIN_AREA` pixels, or with fewer than :data:`MIN_CORE` pixels whose whole 3x3 neighbourhood is in the
   component (speckle, thin slivers), are ignored;
4. each component gets the shape and size of the template it overlaps best (IoU, aligned on centroids, at
   absolute scale) among the world's own renders of every shape and size, sharp and blurred, and the grid cell
   of its centroid. Absolute scale matters: blur rounds a small diamond's one-pixel tips off, and what still
   tells it from a circle is that it covers half the area.

Text images are read as the union of the components of the most frequent object colour, matched against every
glyph's template by IoU after cropping to the bounding box and padding to a square.

Scores, each in [0, 1], plus ``correct``: 1.0 only when every criterion is 1.0 (so its mean over a dataset is a
GenEval-style accuracy):

- generation, reasoning_generation -- per required group of objects, averaged over groups: ``colour`` (some
  object has that colour), ``shape`` (some object has that shape), ``count`` (exactly the required number of
  objects with that colour and shape, and no object outside every group), and when the prompt fixes them
  ``size`` (all matching objects have it) and ``position`` (one matching object sits in that cell).
  ``overall`` is the mean of the criteria.
- editing, reasoning_editing -- ``instruction``: (share of the objects the edit adds that are present with their
  shape, colour, cell and size, a changed background counting as one) x (share of the objects it removes --
  including the old version of a recoloured or moved object -- that are gone from their cell), so a blank
  output earns nothing unless removing was the whole instruction. ``preservation``: (share of untouched objects
  still present unchanged, 0 if a background that should stay changed) / (1 + number of objects nobody asked
  for). ``overall`` is their geometric mean, as GEdit-Bench combines its scores, so returning the source
  image unchanged scores 0 rather than 0.5.
- text_rendering -- ``glyph`` (the recognised digit/letter is the requested one) and ``colour`` (it is drawn in
  the requested colour); ``overall`` is their mean.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import world

EVAL_SIZE = 64  # images are resized to this side first, so thresholds below are in 64 px units
# RGB distance from a palette colour (or a background-to-colour blend) still accepted as that colour: a margin
# for colour drift in model outputs, while random colours mostly stay unlabelled. The closest object colours
# (orange and yellow) are 103 apart.
COLOUR_TOLERANCE = 70.0
# A scene's objects cover at most a third of it, so less than this share means no background (e.g. noise).
MIN_BACKGROUND_SHARE = 0.4
MIN_AREA = 12  # a small triangle covers ~60 px at 64 px, ~35 px after a radius-1 blur
MIN_CORE = 2
TEMPLATE_WINDOW = 32  # side of the centroid-centred masks compared for shape recognition; a large shape is 18 px
GLYPH_TEMPLATE_SIZE = 32

ImageLike = Union[Image.Image, np.ndarray]
MetadataLike = Union[world.Sample, Mapping[str, Any], str]

_PALETTE_NAMES = tuple(world.PALETTE)
_PALETTE_RGB = np.array([world.PALETTE[name] for name in _PALETTE_NAMES], dtype=np.float32)  # (K, 3)


@dataclass(frozen=True)
class Component:
    """One object found in an image: colour, shape, size, grid cell, IoU with its best template, and area."""

    colour: str
    shape: str
    size: str
    position: str
    match_iou: float
    area: int


@dataclass(frozen=True)
class SceneReading:
    """What ShapeEval sees in an image: the background colour (``None`` if none dominates) and the objects."""

    background: Optional[str]
    components: tuple[Component, ...]


@dataclass(frozen=True)
class GlyphReading:
    """The recognised glyph, its colour and the IoU with its template."""

    glyph: str
    colour: str
    iou: float


# ---------------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------------


def _canonical_rgb(image: ImageLike) -> np.ndarray:
    """(EVAL_SIZE, EVAL_SIZE, 3) float32 RGB from a PIL image or an HxWx3 uint8 array."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Expected an HxWx3 uint8 array, got shape {image.shape} and dtype {image.dtype}; "
                             "convert float images with (x * 255).round().astype(np.uint8).")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image or an HxWx3 uint8 numpy array, got {type(image).__name__}.")
    image = image.convert("RGB")
    if image.size != (EVAL_SIZE, EVAL_SIZE):
        image = image.resize((EVAL_SIZE, EVAL_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _squared_norm(vectors: np.ndarray) -> np.ndarray:
    return np.einsum("...c,...c->...", vectors, vectors)


def _background_of(rgb: np.ndarray) -> Optional[str]:
    """The palette colour most pixels are within ``COLOUR_TOLERANCE`` of, if it covers ``MIN_BACKGROUND_SHARE``."""
    distances = _squared_norm(rgb[:, :, None, :] - _PALETTE_RGB)  # (H, W, K)
    nearest = distances.argmin(axis=-1)[distances.min(axis=-1) <= COLOUR_TOLERANCE ** 2]
    counts = np.bincount(nearest, minlength=len(_PALETTE_NAMES))
    if counts.max() < MIN_BACKGROUND_SHARE * distances.shape[0] * distances.shape[1]:
        return None
    return _PALETTE_NAMES[int(counts.argmax())]


def _label_pixels(rgb: np.ndarray, background: str) -> dict[str, np.ndarray]:
    """(H, W) mask of the pixels of each object colour, unmixing edge blends with the background.

    A blurred edge pixel is a blend ``bg + alpha * (colour - bg)``. Each pixel is explained by the object colour
    whose bg-to-colour segment passes closest to it, and belongs to that colour when that segment is within
    ``COLOUR_TOLERANCE`` and ``alpha >= 0.5`` -- the half-way point, where a symmetric blur leaves the true edge.
    Thresholding the distance to the colour itself instead would shave the tips off small triangles and diamonds.
    """
    colours = [colour for colour in world.OBJECT_COLOURS if colour != background]
    bg = np.array(world.PALETTE[background], dtype=np.float32)
    directions = np.array([world.PALETTE[colour] for colour in colours], dtype=np.float32) - bg  # (K, 3)
    offsets = rgb - bg  # (H, W, 3)
    alpha = np.clip(offsets @ directions.T / (directions ** 2).sum(axis=1), 0.0, 1.0)  # (H, W, K)
    residual = _squared_norm(offsets[:, :, None, :] - alpha[..., None] * directions)  # (H, W, K), squared
    best = residual.argmin(axis=-1)  # (H, W)
    best_alpha = np.take_along_axis(alpha, best[..., None], axis=-1)[..., 0]
    labelled = (residual.min(axis=-1) <= COLOUR_TOLERANCE ** 2) & (best_alpha >= 0.5)
    return {colour: labelled & (best == k) for k, colour in enumerate(colours)}


def _erode(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose whole 3x3 neighbourhood is in ``mask``."""
    height, width = mask.shape
    padded = np.pad(mask, 1, constant_values=False)
    core = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            core &= padded[dy:dy + height, dx:dx + width]
    return core


def _connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """The (N, 2) (row, col) pixel coordinates of each 8-connected component of a boolean mask."""
    height, width = mask.shape
    inside = mask.tolist()  # plain lists: ~10x faster than numpy scalar indexing in this loop
    seen = [[False] * width for _ in range(height)]
    components = []
    for start_y, start_x in zip(*np.nonzero(mask)):
        if seen[start_y][start_x]:
            continue
        seen[start_y][start_x] = True
        stack, pixels = [(int(start_y), int(start_x))], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny in range(max(y - 1, 0), min(y + 2, height)):
                for nx in range(max(x - 1, 0), min(x + 2, width)):
                    if inside[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
        components.append(np.array(pixels))
    return components


def _segment(rgb: np.ndarray) -> tuple[Optional[str], list[tuple[str, np.ndarray]]]:
    """The background colour and the (colour, (N, 2) pixels) of every object component kept."""
    background = _background_of(rgb)
    if background is None:
        return None, []
    blobs = []
    for colour, mask in _label_pixels(rgb, background).items():
        core = _erode(mask)
        for pixels in _connected_components(mask):
            if len(pixels) >= MIN_AREA and core[pixels[:, 0], pixels[:, 1]].sum() >= MIN_CORE:
                blobs.append((colour, pixels))
    return background, blobs


def _crop(pixels: np.ndarray) -> np.ndarray:
    """Boolean mask of a component cropped to its bounding box."""
    top, left = pixels.min(axis=0)
    bottom, right = pixels.max(axis=0)
    crop = np.zeros((bottom - top + 1, right - left + 1), dtype=bool)
    crop[pixels[:, 0] - top, pixels[:, 1] - left] = True
    return crop


def _resize_mask(mask: np.ndarray, side: int) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(image) >= 128


def _pad_to_square(mask: np.ndarray) -> np.ndarray:
    """Centre ``mask`` in a square so that narrow glyphs (1, J) keep their aspect ratio when resized."""
    height, width = mask.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=bool)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = mask
    return square


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _mask_pixels(mask: np.ndarray) -> np.ndarray:
    return np.stack(np.nonzero(mask), axis=1)


def _window(pixels: np.ndarray, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A component as a (TEMPLATE_WINDOW, TEMPLATE_WINDOW) mask centred on its rounded centroid, plus ``shift``."""
    centre = np.round(pixels.mean(axis=0)).astype(int)
    coords = pixels - centre + TEMPLATE_WINDOW // 2 + np.array(shift)
    coords = coords[((coords >= 0) & (coords < TEMPLATE_WINDOW)).all(axis=1)]
    window = np.zeros((TEMPLATE_WINDOW, TEMPLATE_WINDOW), dtype=bool)
    window[coords[:, 0], coords[:, 1]] = True
    return window


@functools.cache
def _shape_templates() -> tuple[tuple[tuple[str, str], ...], np.ndarray]:
    """The world's render of every (shape, size), sharp and after a radius-1 Gaussian blur -- the crisp and the
    soft end of what a model outputs -- segmented like any image: ((shape, size) per row, (T, WINDOW**2) masks)."""
    labels, windows = [], []
    for shape in world.SHAPES:
        for size in world.SIZES:
            image = world.Scene([world.ShapeSpec(shape, world.OBJECT_COLOURS[0], "center", size)]).render(EVAL_SIZE)
            for variant in (image, image.filter(ImageFilter.GaussianBlur(1))):
                _, [(_, pixels)] = _segment(_canonical_rgb(variant))
                labels.append((shape, size))
                windows.append(_window(pixels).ravel())
    return tuple(labels), np.array(windows, dtype=np.float32)


@functools.cache
def _glyph_templates() -> dict[str, np.ndarray]:
    """Each glyph drawn by the world's renderer with 8 px blocks, normalised like a read glyph."""
    templates = {}
    for glyph in world.GLYPHS:
        canvas = Image.new("L", (40, 56), 0)
        world.draw_glyph(ImageDraw.Draw(canvas), glyph, (0, 0, 39, 55), 255)
        mask = np.asarray(canvas) > 0
        templates[glyph] = _resize_mask(_pad_to_square(_crop(_mask_pixels(mask))), GLYPH_TEMPLATE_SIZE)
    return templates


def _describe(colour: str, pixels: np.ndarray) -> Component:
    """Classify a component's shape and size by its best template, and its cell by its centroid."""
    labels, templates = _shape_templates()  # (T, WINDOW**2)
    # Trying every one-pixel shift absorbs the rounding of both centroids.
    shifted = np.array([_window(pixels, (dy, dx)).ravel() for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
                       dtype=np.float32)  # (9, WINDOW**2)
    intersection = shifted @ templates.T  # (9, T)
    union = shifted.sum(axis=1, keepdims=True) + templates.sum(axis=1) - intersection
    ious = (intersection / union).max(axis=0)  # (T,)
    shape, size = labels[int(ious.argmax())]
    cell = EVAL_SIZE / 3
    centre_y, centre_x = pixels.mean(axis=0)
    row, col = min(int(centre_y // cell), 2), min(int(centre_x // cell), 2)
    return Component(colour, shape, size, world.POSITIONS[3 * row + col], float(ious.max()), len(pixels))


def read_scene(image: ImageLike) -> SceneReading:
    """Segment ``image`` into its background colour and object components (see the module docstring)."""
    background, blobs = _segment(_canonical_rgb(image))
    return SceneReading(background, tuple(_describe(colour, pixels) for colour, pixels in blobs))


def _glyph_mask(image: ImageLike) -> Optional[tuple[str, np.ndarray]]:
    """The image's most frequent object colour and its pixels normalised like a glyph template; ``None`` if
    nothing is drawn."""
    _, blobs = _segment(_canonical_rgb(image))
    if not blobs:
        return None
    areas: dict[str, int] = defaultdict(int)
    for colour, pixels in blobs:
        areas[colour] += len(pixels)
    colour = max(areas, key=areas.get)
    pixels = np.concatenate([pixels for blob_colour, pixels in blobs if blob_colour == colour])
    return colour, _resize_mask(_pad_to_square(_crop(pixels)), GLYPH_TEMPLATE_SIZE)


def read_glyph(image: ImageLike) -> Optional[GlyphReading]:
    """Recognise the glyph drawn in ``image`` in its most frequent object colour; ``None`` if nothing is drawn."""
    found = _glyph_mask(image)
    if found is None:
        return None
    colour, normalised = found
    ious = {glyph: _iou(normalised, template) for glyph, template in _glyph_templates().items()}
    glyph = max(ious, key=ious.get)
    return GlyphReading(glyph, colour, ious[glyph])


def glyph_iou(image: ImageLike, glyph: str) -> float:
    """IoU in [0, 1] of what ``image`` draws (its most frequent object colour) with the template of ``glyph``: a
    dense version of the ``glyph`` criterion (0 when nothing is drawn), e.g. as an RL reward."""
    templates = _glyph_templates()
    if glyph not in templates:
        raise ValueError(f"Unknown glyph {glyph!r}; expected one of {world.GLYPHS}.")
    found = _glyph_mask(image)
    return 0.0 if found is None else _iou(found[1], templates[glyph])


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


def _is(component: Component, obj: Mapping[str, Any], check_size: bool = True) -> bool:
    """Whether ``component`` is the world object ``obj`` (shape, colour, cell and optionally size)."""
    return (component.shape == obj["shape"] and component.colour == obj["colour"]
            and component.position == obj["position"] and (not check_size or component.size == obj["size"]))


def _with_summary(scores: dict[str, float]) -> dict[str, float]:
    scores["overall"] = float(np.mean(list(scores.values())))
    scores["correct"] = float(all(value == 1.0 for key, value in scores.items() if key != "overall"))
    return scores


def _score_generation(reading: SceneReading, metadata: Mapping[str, Any]) -> dict[str, float]:
    components = reading.components
    per_group: dict[str, list[float]] = defaultdict(list)
    matched: set[int] = set()
    for group in metadata["groups"]:
        matches = [i for i, c in enumerate(components) if c.shape == group["shape"] and c.colour == group["colour"]]
        matched.update(matches)
        per_group["colour"].append(float(any(c.colour == group["colour"] for c in components)))
        per_group["shape"].append(float(any(c.shape == group["shape"] for c in components)))
        per_group["count"].append(float(len(matches) == group["count"]))
        if group["size"] is not None:
            per_group["size"].append(float(bool(matches) and all(components[i].size == group["size"]
                                                                   for i in matches)))
        if group["position"] is not None:
            per_group["position"].append(float(any(components[i].position == group["position"] for i in matches)))
    scores = {criterion: float(np.mean(values)) for criterion, values in per_group.items()}
    if len(matched) < len(components):  # an object nobody asked for makes the count wrong
        scores["count"] = 0.0
    return _with_summary(scores)


def _fraction(flags: Sequence[bool]) -> float:
    """Share of true flags; 1.0 for an empty list (nothing was required)."""
    return float(np.mean(flags)) if flags else 1.0


def _score_edit(reading: SceneReading, metadata: Mapping[str, Any]) -> dict[str, float]:
    source, target = metadata["source"], metadata["target"]
    components = reading.components
    added = [obj for obj in target["objects"] if obj not in source["objects"]]
    removed = [obj for obj in source["objects"] if obj not in target["objects"]]
    untouched = [obj for obj in target["objects"] if obj in source["objects"]]
    background_changes = target["background"] != source["background"]

    # Required changes are present AND replaced objects are gone; gone alone (a blank output) earns nothing
    # unless removing was the whole instruction. A removed object only has to leave its cell, at any size.
    present = [any(_is(c, obj) for c in components) for obj in added]
    if background_changes:
        present.append(reading.background == target["background"])
    gone = [not any(_is(c, obj, check_size=False) for c in components) for obj in removed]
    instruction = _fraction(present) * _fraction(gone)

    kept = _fraction([any(_is(c, obj) for c in components) for obj in untouched])
    if not background_changes and reading.background != source["background"]:
        kept = 0.0
    # Objects the edit should have removed are the instruction's failure, not extras that hurt preservation.
    expected = target["objects"] + removed
    extras = sum(not any(_is(c, obj, check_size=False) for obj in expected) for c in components)
    preservation = kept / (1 + extras)
    # Geometric mean, as GEdit-Bench combines its scores: doing nothing (or everything) scores 0, not 0.5.
    return {"instruction": instruction, "preservation": preservation,
            "overall": float(np.sqrt(instruction * preservation)),
            "correct": float(instruction == 1.0 and preservation == 1.0)}


def _score_text(image: ImageLike, metadata: Mapping[str, Any]) -> dict[str, float]:
    reading = read_glyph(image)
    if reading is None:
        return _with_summary({"glyph": 0.0, "colour": 0.0})
    return _with_summary({"glyph": float(reading.glyph == metadata["glyph"]),
                          "colour": float(reading.colour == metadata["colour"])})


def _metadata_of(sample_or_metadata: MetadataLike) -> Mapping[str, Any]:
    if isinstance(sample_or_metadata, world.Sample):
        return sample_or_metadata.metadata
    if isinstance(sample_or_metadata, str):
        return json.loads(sample_or_metadata)
    if isinstance(sample_or_metadata, Mapping):
        return sample_or_metadata
    raise TypeError("Expected a world.Sample, its metadata dict or that dict as a JSON string, "
                    f"got {type(sample_or_metadata).__name__}.")


def evaluate(image: ImageLike, sample_or_metadata: MetadataLike) -> dict[str, float]:
    """Score one generated or edited image against what its sample requires.

    Args:
        image: the model output, a PIL image or an HxWx3 uint8 array of any size (resized to ``EVAL_SIZE``).
        sample_or_metadata: the :class:`deepgen.nano.world.Sample`, its ``metadata``, or the metadata JSON string
            stored by :func:`deepgen.nano.world.to_records`.

    Returns:
        The capability's criteria (see the module docstring) plus ``overall`` and ``correct``, all in [0, 1].
    """
    metadata = _metadata_of(sample_or_metadata)
    capability = metadata.get("capability")
    if capability in ("generation", "reasoning_generation"):
        return _score_generation(read_scene(image), metadata)
    if capability in ("editing", "reasoning_editing"):
        return _score_edit(read_scene(image), metadata)
    if capability == "text_rendering":
        return _score_text(image, metadata)
    raise ValueError(f"metadata['capability'] is {capability!r}; expected one of {world.CAPABILITIES}. Pass the "
                     "metadata of a deepgen.nano.world.Sample.")


def evaluate_dataset(images: Sequence[ImageLike], samples: Sequence[MetadataLike]) -> dict[str, Any]:
    """Score ``images[i]`` against ``samples[i]`` and average.

    Returns:
        ``{"capabilities": {capability: {"n": count, criterion: mean, ...}}, "overall": mean, "per_sample": [...]}``
        where the top-level ``overall`` is the unweighted mean of the capabilities' ``overall`` (as GenEval averages
        its tasks) and ``per_sample[i]`` is ``{"capability": ..., "overall": ...}`` of ``samples[i]``, what
        :func:`compare` pairs up.
    """
    if len(images) != len(samples):
        raise ValueError(f"Got {len(images)} images for {len(samples)} samples; pass one image per sample.")
    collected: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_sample = []
    for image, sample in zip(images, samples):
        metadata = _metadata_of(sample)
        scores = evaluate(image, metadata)
        for criterion, score in scores.items():
            collected[metadata["capability"]][criterion].append(score)
        per_sample.append({"capability": metadata["capability"], "overall": scores["overall"]})
    capabilities: dict[str, dict[str, float]] = {}
    for capability in sorted(collected, key=world.CAPABILITIES.index):
        scores = collected[capability]
        capabilities[capability] = {"n": len(scores["overall"]),
                                    **{criterion: float(np.mean(values)) for criterion, values in scores.items()}}
    overall = float(np.mean([scores["overall"] for scores in capabilities.values()])) if capabilities else 0.0
    return {"capabilities": capabilities, "overall": overall, "per_sample": per_sample}


def pool_draws(groups: Sequence[Optional[Mapping[str, Any]]]) -> Optional[dict[str, float]]:
    """One capability's (or subset's) criteria over several draws, each weighted by its ``n``; missing draws
    (``None``) are left out, and ``None`` comes back when none is left. Keys are those every draw has."""
    groups = [group for group in groups if group is not None]
    if not groups:
        return None
    total = sum(group["n"] for group in groups)
    keys = set.intersection(*(set(group) for group in groups)) - {"n"}
    return {"n": total, **{key: sum(group[key] * group["n"] for group in groups) / total for key in keys}}


def compare(base: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]], n_resamples: int = 10_000,
            level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """Paired comparison of two models scored on the same samples, with bootstrap confidence intervals.

    Args:
        base, candidate: :func:`evaluate_dataset` results, one per draw of samples; ``candidate[k]`` must score the
            same samples as ``base[k]``, in the same order (e.g. ``train/evaluate.py`` with the same settings).
            Draws are pooled.
        n_resamples: bootstrap resamples. Samples are resampled within each capability (the capabilities'
            sizes are fixed by the evaluation design), the same indices for both models.
        level: coverage of the percentile interval.

    Returns:
        ``{capability: {"n", "base", "candidate", "delta", "low", "high"}}`` plus ``"overall"``, the unweighted
        mean over capabilities as in :func:`evaluate_dataset`; ``delta`` = candidate - base and
        ``[low, high]`` its interval.
    """
    if n_resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"n_resamples must be >= 1 and level in (0, 1); got {n_resamples} and {level}.")
    if len(base) != len(candidate) or not base:
        raise ValueError(f"Got {len(base)} base and {len(candidate)} candidate results; pass one of each per draw "
                         "of samples, in the same order.")
    paired: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for draw, (b, c) in enumerate(zip(base, candidate)):
        if "per_sample" not in b or "per_sample" not in c:
            raise ValueError("compare() needs per-sample scores; evaluate again with this version of "
                             "evaluate_dataset (train/evaluate.py writes them as 'per_sample').")
        rows_b, rows_c = b["per_sample"], c["per_sample"]
        if [r["capability"] for r in rows_b] != [r["capability"] for r in rows_c]:
            raise ValueError(f"Draw {draw}: the two results do not score the same samples (their capabilities "
                             "differ); evaluate both on the same split, seed and sample count.")
        for rb, rc in zip(rows_b, rows_c):
            paired[rb["capability"]].append((rb["overall"], rc["overall"]))
    order = sorted(paired, key=lambda name: world.CAPABILITIES.index(name) if name in world.CAPABILITIES else 99)
    rng = np.random.default_rng(seed)
    tail = (1.0 - level) / 2 * 100
    table: dict[str, dict[str, float]] = {}
    resampled = []
    for capability in order:
        scores = np.asarray(paired[capability], dtype=np.float64)  # (n, 2): base, candidate
        difference = scores[:, 1] - scores[:, 0]
        index = rng.integers(0, len(difference), size=(n_resamples, len(difference)))
        means = difference[index].mean(axis=1)
        resampled.append(means)
        table[capability] = {"n": len(difference), "base": float(scores[:, 0].mean()),
                             "candidate": float(scores[:, 1].mean()), "delta": float(difference.mean()),
                             "low": float(np.percentile(means, tail)), "high": float(np.percentile(means, 100 - tail))}
    overall = np.mean(resampled, axis=0)
    rows = list(table.values())
    table["overall"] = {"n": sum(row["n"] for row in rows),
                        "base": float(np.mean([row["base"] for row in rows])),
                        "candidate": float(np.mean([row["candidate"] for row in rows])),
                        "delta": float(np.mean([row["delta"] for row in rows])),
                        "low": float(np.percentile(overall, tail)), "high": float(np.percentile(overall, 100 - tail))}
    return table


_COLUMN_ORDER = ("overall", "correct", "colour", "shape", "count", "size", "position", "instruction",
                 "preservation", "glyph")


def format_table(results: Mapping[str, Any]) -> str:
    """Markdown table of :func:`evaluate_dataset` results: one row per capability, one column per criterion."""
    rows = results["capabilities"]
    columns = [column for column in _COLUMN_ORDER if any(column in scores for scores in rows.values())]
    lines = ["| capability | n | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for capability, scores in rows.items():
        cells = [f"{scores[column]:.3f}" if column in scores else "-" for column in columns]
        lines.append(f"| {capability} | {scores['n']} | " + " | ".join(cells) + " |")
    lines.append(f"| **overall** | {sum(s['n'] for s in rows.values())} | {results['overall']:.3f} |"
                 + " |" * (len(columns) - 1))
    return "\n".join(lines)
