"""One request's settings, from the page (or the API) to the pipeline, and the one set of limits they obey.

Every task takes a :class:`Settings`. The page's validators, the API and the Python methods all check it with
:meth:`Settings.problems`, so a rule is written once and its message is the same everywhere. Problems are keyed by
the API's input names (:data:`INPUTS`), which is also how the page puts each message on its field.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

# The model limits come from the library (the benchmark runner obeys the same ones); the app adds its own below.
from deepgen.contestants import MAX_GUIDANCE, MAX_REFERENCE_IMAGES, MAX_SIDE, MAX_STEPS  # noqa: F401
from deepgen.pipeline import DEFAULT_SIZE

MAX_PROMPT_CHARS = 2000
MAX_IMAGES = 4  # images per Generate/Edit request
MIN_CONTESTANTS, MAX_CONTESTANTS = 2, 4
MAX_SWEEP_SEEDS = 8
MAX_BATCH_PROMPTS = 16
MAX_MATRIX_RUNS = 32  # contestants x prompts x seeds in one request
MIN_SIDE = 64
SIZE_STEP = 32
MAX_SEED = 2**32 - 1

# Aspect-ratio presets: (width, height) ratios. Sizes are derived with the long side kept.
ASPECT_PRESETS = {
    "1:1 square": (1, 1),
    "4:3 landscape": (4, 3),
    "3:4 portrait": (3, 4),
    "3:2 landscape": (3, 2),
    "2:3 portrait": (2, 3),
    "16:9 wide": (16, 9),
    "9:16 tall": (9, 16),
}

# The API's inputs, in order, per task (the page's components and the endpoint signatures follow these).
_SIZE_AND_SEED = ("width", "height", "steps", "guidance", "seed", "randomize_seed")
INPUTS: dict[str, tuple[str, ...]] = {
    "generate": ("prompt", "negative_prompt", *_SIZE_AND_SEED, "num_images"),
    "edit": ("images", "instruction", "negative_prompt", "follow_source", *_SIZE_AND_SEED, "num_images"),
    "compare": ("contestants", "prompt", "negative_prompt", "images", *_SIZE_AND_SEED, "recommended_settings"),
    "seed_sweep": ("contestants", "prompt", "negative_prompt", "images", *_SIZE_AND_SEED, "recommended_settings",
                   "num_seeds"),
    "prompt_batch": ("contestants", "prompt_file", "negative_prompt", *_SIZE_AND_SEED, "recommended_settings"),
}
MATRIX_TASKS = ("compare", "seed_sweep", "prompt_batch")  # tasks that run chosen contestants


class StudioInputError(ValueError):
    """A request the Studio refuses before doing any model work; the message is shown to the user as is."""


_LABELS = {"follow_source": "Follow source", "recommended_settings": "Recommended settings",
           "randomize_seed": "Randomize seed"}


def kind_of(value: Any) -> str:
    """A value as a message shows it: numbers and short text as they are, anything else by its type."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"text of {len(value)} characters"
    return f"a {type(value).__name__}"


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


def is_whole(value: Any) -> bool:
    """An int (not a bool) or a float with no fractional part: what a whole-number field accepts."""
    return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, float) and value.is_integer())


def aspect_size(preset: str, long_side: int) -> tuple[int, int]:
    """(width, height) for an aspect preset with the given long side, both multiples of 32 within limits."""
    if preset not in ASPECT_PRESETS:
        raise StudioInputError(f"Unknown aspect ratio {preset!r}; choose one of {list(ASPECT_PRESETS)}.")
    ratio_w, ratio_h = ASPECT_PRESETS[preset]
    long_side = min(MAX_SIDE, max(MIN_SIDE, int(long_side)))
    scale = long_side / max(ratio_w, ratio_h)
    snap = lambda v: max(MIN_SIDE, int(round(v * scale / SIZE_STEP)) * SIZE_STEP)  # noqa: E731
    return snap(ratio_w), snap(ratio_h)


def raise_for_problems(problems: Union[dict[str, str], Optional[str]]) -> None:
    """Raise one :class:`StudioInputError` with every problem's message (no-op when there are none)."""
    if isinstance(problems, dict):
        problems = " ".join(problems.values()) or None
    if problems:
        raise StudioInputError(problems)


@dataclass(frozen=True)
class Settings:
    """What one request asks for. Fields hold what the caller sent (checked by :meth:`problems`) until
    :meth:`resolved` turns them into the exact values the runs use.

    Attributes:
        task: ``generate``, ``edit``, ``compare``, ``seed_sweep`` or ``prompt_batch``.
        prompt: the prompt (Edit: the instruction); None for a prompt list, whose prompts come from its file.
        negative_prompt: what to avoid; ``""`` for none.
        images: uploaded reference images (an edit's sources; optional in Compare and the seed sweep).
        contestants: contestant ids for the matrix tasks; None runs the running model.
        prompt_file: an uploaded ``.txt``/``.jsonl`` prompt list (``prompt_batch``).
        follow_source: the output size follows the first reference image (Edit); width/height are then unused.
        width, height: output size in pixels (multiples of 16 within the running model's limit).
        steps: denoising steps.
        guidance: classifier-free guidance scale (the one name for it in the app).
        seed: the first seed; None draws one. Further images use ``seed+1, seed+2, …``.
        randomize_seed: the caller's checkbox (API/page): True draws a seed, False requires ``seed``; None (the
            Python default) draws one only when ``seed`` is None.
        count: images per contestant and prompt: Generate/Edit's ``num_images``, the sweep's ``num_seeds``.
        recommended_settings: each contestant uses its own recommended steps and guidance (matrix tasks).
    """

    task: str = "generate"
    prompt: Any = None
    negative_prompt: Any = ""
    images: Any = None
    contestants: Any = None
    prompt_file: Any = None
    follow_source: Any = False
    width: Any = DEFAULT_SIZE
    height: Any = DEFAULT_SIZE
    steps: Any = 30
    guidance: Any = 4.0
    seed: Any = 0
    count: Any = 1
    recommended_settings: Any = False
    randomize_seed: Any = None

    @classmethod
    def from_inputs(cls, task: str, **inputs: Any) -> "Settings":
        """Settings from an endpoint's named inputs (:data:`INPUTS`), as sent (checked by :meth:`problems`): the
        instruction is the prompt, ``num_images``/``num_seeds`` are the count."""
        if task not in INPUTS:
            raise ValueError(f"Unknown task {task!r}; expected one of {list(INPUTS)}.")
        unknown = set(inputs) - set(INPUTS[task])
        if unknown:
            raise TypeError(f"{task} takes the inputs {list(INPUTS[task])}, not {sorted(unknown)}.")
        values = {name: value for name, value in inputs.items() if name not in ("instruction", "num_images",
                                                                                "num_seeds")}
        if "instruction" in inputs:
            values["prompt"] = inputs["instruction"]
        for name in ("num_images", "num_seeds"):
            if name in inputs:
                values["count"] = inputs[name]
        return cls(task=task, **values)

    def input_name(self, field: str) -> str:
        """The API input a field comes from (what a problem is keyed by)."""
        if field == "prompt" and self.task == "edit":
            return "instruction"
        if field == "count":
            return "num_seeds" if self.task == "seed_sweep" else "num_images"
        return field

    def problems(self, max_side: int = MAX_SIDE) -> dict[str, str]:
        """What is wrong with the text and numbers (empty when all is well), keyed by input name.

        Uploads and contestants are checked by :meth:`studio.tasks.Studio.problems`, which calls this.
        """
        problems: dict[str, str] = {}
        if self.task != "prompt_batch":
            if not isinstance(self.prompt, str):
                what = "instruction" if self.task == "edit" else "prompt"
                problems["prompt"] = f"The {what} must be text, got {kind_of(self.prompt)}."
            elif not self.prompt.strip():
                problems["prompt"] = "The prompt is empty: describe the image (or the edit) you want."
            elif len(self.prompt) > MAX_PROMPT_CHARS:
                problems["prompt"] = f"The prompt has {len(self.prompt)} characters; the limit is {MAX_PROMPT_CHARS}."
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            problems["negative_prompt"] = f"The negative prompt must be text, got {kind_of(self.negative_prompt)}."
        elif self.negative_prompt and len(self.negative_prompt) > MAX_PROMPT_CHARS:
            problems["negative_prompt"] = f"The negative prompt is longer than {MAX_PROMPT_CHARS} characters."
        for name in ("follow_source", "recommended_settings", "randomize_seed"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "randomize_seed" and value is None):
                problems[name] = f"{_LABELS[name]} must be true or false, got {kind_of(value)}."
        if self.follow_source is not True:
            for name, value in (("width", self.width), ("height", self.height)):
                if not is_whole(value) or not MIN_SIDE <= int(value) <= max_side or int(value) % 16:
                    problems[name] = (f"{name.capitalize()} must be a multiple of 16 between {MIN_SIDE} and "
                                      f"{max_side} pixels, got {kind_of(value)}.")
        if not is_whole(self.steps) or not 1 <= int(self.steps) <= MAX_STEPS:
            problems["steps"] = f"Steps must be a whole number from 1 to {MAX_STEPS}, got {kind_of(self.steps)}."
        guidance = self.guidance
        if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not math.isfinite(guidance) \
                or not 0 <= guidance <= MAX_GUIDANCE:
            problems["guidance"] = f"Guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {kind_of(guidance)}."
        seed_required = self.randomize_seed is False or (self.randomize_seed is None and self.seed is not None)
        if seed_required and (not is_whole(self.seed) or not 0 <= int(self.seed) <= MAX_SEED):
            problems["seed"] = f"The seed must be a whole number from 0 to {MAX_SEED}, got {kind_of(self.seed)}."
        if self.task == "seed_sweep":
            if not is_whole(self.count) or not 1 <= int(self.count) <= MAX_SWEEP_SEEDS:
                problems["count"] = f"A seed sweep takes 1 to {MAX_SWEEP_SEEDS} seeds, got {kind_of(self.count)}."
        elif not is_whole(self.count) or not 1 <= int(self.count) <= MAX_IMAGES:
            problems["count"] = f"Ask for 1 to {MAX_IMAGES} images, got {kind_of(self.count)}."
        return {self.input_name(field): message for field, message in problems.items()}

    def resolved(self) -> "Settings":
        """The values the runs use: whole numbers, a drawn seed when none was given, no size when following the
        source. Call after :meth:`problems` found nothing."""
        return replace(self, negative_prompt=self.negative_prompt or "",
                       width=None if self.follow_source else int(self.width),
                       height=None if self.follow_source else int(self.height),
                       steps=int(self.steps), guidance=float(self.guidance),
                       seed=random_seed() if self.randomize_seed or self.seed is None else int(self.seed),
                       randomize_seed=False, count=int(self.count),
                       follow_source=bool(self.follow_source),
                       recommended_settings=bool(self.recommended_settings))

    @property
    def seeds(self) -> list[int]:
        """``seed, seed+1, …`` (``count`` of them, wrapping at :data:`MAX_SEED`) of resolved settings."""
        return seed_list(self.seed, self.count)


def seed_list(seed: int, count: int) -> list[int]:
    """``count`` consecutive seeds from ``seed``, wrapping past :data:`MAX_SEED` to 0."""
    return [(int(seed) + i) % (MAX_SEED + 1) for i in range(int(count))]
