"""The contestants registry: the models a user can run and compare, and one call signature to run any of them.

``contestants.yaml`` lists DeepGen checkpoints (built-in, local, hub, native ``model.pt``) and stock diffusers
baselines with what each supports and its recommended settings. :func:`load_registry` reads and checks it,
:func:`load_contestant` loads one entry, and :class:`LoadedModel` runs generate/edit the same way for all kinds.
Used by the app's model manager and by the benchmark runner; nothing here knows about Gradio.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import yaml
from PIL import Image

from .builtin import BUILTIN_CHECKPOINTS, OFFICIAL_DIT, OFFICIAL_VLM, RANDOM_PRESETS, load_pipeline
from .pipeline import DEFAULT_SIZE, default_dtype

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TASKS = ("t2i", "edit")
KINDS = ("deepgen", "diffusers")
GUIDANCE_ARGUMENTS = ("guidance_scale", "true_cfg_scale")
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_SIDE = 2048  # further capped by each model's own limit
MAX_REFERENCE_IMAGES = 4
MAX_EXAMPLE_CHARS = 1000
EXAMPLES_KEYS = ("prompts", "edits")
EDIT_EXAMPLE_KEYS = ("image", "instruction")


@dataclass(frozen=True)
class EditExample:
    """An Edit example: source image paths (one, or several for multi-reference edits) and an instruction."""

    images: tuple[str, ...]
    instruction: str


@dataclass(frozen=True)
class Examples:
    """A contestant's own example prompts (Generate) and edits (Edit), shown while it is the running model."""

    prompts: tuple[str, ...] = ()
    edits: tuple[EditExample, ...] = ()

    def resolved(self, folder: Union[str, Path]) -> "Examples":
        """The same examples with relative image paths taken relative to ``folder``; every image must exist."""
        edits = []
        for number, edit in enumerate(self.edits, start=1):
            images = tuple(str((Path(folder) / image).absolute()) for image in edit.images)
            missing = [image for image in images if not Path(image).is_file()]
            if missing:
                raise ValueError(f"examples.edits #{number}: image file(s) {missing} do not exist; image paths are "
                                 f"relative to the registry's folder {Path(folder)}.")
            edits.append(replace(edit, images=images))
        return replace(self, edits=tuple(edits))


def _example_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_EXAMPLE_CHARS:
        raise ValueError(f"{where} must be a non-empty string of at most {MAX_EXAMPLE_CHARS} characters, "
                         f"got {value!r:.80}.")
    return value


def parse_examples(data: Any, where: str = "examples") -> Examples:
    """Check and convert a registry's ``examples`` mapping::

        examples:
          prompts: ["a large red square at the top", ...]
          edits:
            - {image: assets/examples/nano/two-shapes.png, instruction: "make the square yellow"}
            - {image: [first.png, second.png], instruction: "..."}   # several reference images

    Raises ``ValueError`` naming the entry at fault.
    """
    if isinstance(data, Examples):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping with 'prompts' and/or 'edits', got {type(data).__name__}.")
    unknown = sorted(set(data) - set(EXAMPLES_KEYS))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; expected {list(EXAMPLES_KEYS)}.")
    prompts, edits = data.get("prompts") or [], data.get("edits") or []
    if not isinstance(prompts, list) or not isinstance(edits, list):
        raise ValueError(f"{where}.prompts and {where}.edits must be lists.")
    parsed = []
    for number, edit in enumerate(edits, start=1):
        at = f"{where}.edits #{number}"
        if not isinstance(edit, dict) or set(edit) != set(EDIT_EXAMPLE_KEYS):
            raise ValueError(f"{at} must be a mapping with exactly {list(EDIT_EXAMPLE_KEYS)}, got {edit!r:.120}.")
        images = edit["image"] if isinstance(edit["image"], list) else [edit["image"]]
        if not 1 <= len(images) <= MAX_REFERENCE_IMAGES:
            raise ValueError(f"{at}: image must be one path or a list of 1-{MAX_REFERENCE_IMAGES} paths.")
        parsed.append(EditExample(tuple(_example_text(image, f"{at} image") for image in images),
                                  _example_text(edit["instruction"], f"{at} instruction")))
    return Examples(tuple(_example_text(prompt, f"{where}.prompts #{n}") for n, prompt in enumerate(prompts, 1)),
                    tuple(parsed))


@dataclass
class Contestant:
    """One entry of ``contestants.yaml``: a model that can be run in the Studio.

    Attributes:
        id: stable identifier used by the API (``/compare``'s ``contestants``) and in records.
        label: what the page shows.
        kind: ``deepgen`` (loaded with :func:`deepgen.builtin.load_pipeline`) or ``diffusers`` (a stock diffusers
            pipeline class).
        source: a built-in name (``tiny``, ``deepgen-nano``), a local folder or checkpoint file, or a hub repo id.
        filename: for a native DeepGen checkpoint inside a hub repo, the file to download (e.g. ``model.pt``).
        revision: hub revision (branch, tag or commit); recorded in every export.
        vlm, dit: base models for a native DeepGen checkpoint.
        pipeline_class: for ``diffusers``: the class in ``diffusers`` (e.g. ``StableDiffusion3Pipeline``).
        tasks: what it can do: ``t2i`` and/or ``edit``.
        dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``bfloat16``, ``float16`` or ``float32``.
        steps, guidance: recommended settings (used in Compare when "each model's recommended settings" is on).
        guidance_argument: the call argument guidance goes to (``guidance_scale``, or ``true_cfg_scale`` for
            Qwen-Image).
        negative_prompt: whether the pipeline takes a negative prompt.
        max_reference_images: how many reference images an edit may pass (the rest are dropped, and the record
            says so).
        gpu_seconds_per_step: seconds per denoising step for one 1024x1024 image on the Space's GPU (ZeroGPU
            duration estimate).
        gpu_load_seconds: seconds to load it inside a GPU call when it is not loaded yet.
        preload: load at start-up (the running model always is).
        note: a line shown next to it (license, gating, …).
        examples: its own example prompts and edits (:func:`parse_examples`), shown while it is the running
            model; ``None``: the app's shipped examples. :func:`load_registry` resolves their image paths
            relative to the registry's folder.
    """

    id: str
    label: str
    kind: str
    source: str
    filename: Optional[str] = None
    revision: Optional[str] = None
    vlm: str = OFFICIAL_VLM
    dit: str = OFFICIAL_DIT
    pipeline_class: Optional[str] = None
    tasks: tuple[str, ...] = ("t2i", "edit")
    dtype: str = "auto"
    steps: int = 50
    guidance: float = 4.0
    guidance_argument: str = "guidance_scale"
    negative_prompt: bool = True
    max_reference_images: int = MAX_REFERENCE_IMAGES
    gpu_seconds_per_step: float = 0.3
    gpu_load_seconds: float = 60.0
    preload: bool = False
    note: str = ""
    examples: Optional[Examples] = None

    def __post_init__(self) -> None:
        where = f"contestant {self.id!r}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", str(self.id)):
            raise ValueError(f"{where}: ids are 1-64 letters, digits, '.', '_' or '-' (they name files), "
                             f"got {self.id!r}.")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}.")
        self.tasks = tuple(self.tasks)
        if not self.tasks or not set(self.tasks) <= set(TASKS):
            raise ValueError(f"{where}: tasks must be a non-empty subset of {TASKS}, got {list(self.tasks)}.")
        if self.kind == "diffusers":
            self._check_pipeline_class(where)
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"{where}: dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}.")
        if self.guidance_argument not in GUIDANCE_ARGUMENTS:
            raise ValueError(f"{where}: guidance_argument must be one of {GUIDANCE_ARGUMENTS}, "
                             f"got {self.guidance_argument!r}.")
        if not 1 <= int(self.steps) <= MAX_STEPS or not 0 <= float(self.guidance) <= MAX_GUIDANCE:
            raise ValueError(f"{where}: steps must be in [1, {MAX_STEPS}] and guidance in [0, {MAX_GUIDANCE}].")
        if int(self.max_reference_images) < 1:
            raise ValueError(f"{where}: max_reference_images must be at least 1.")
        if self.examples is not None:
            self.examples = parse_examples(self.examples, f"{where}: examples")

    def _check_pipeline_class(self, where: str) -> None:
        import diffusers

        cls = getattr(diffusers, str(self.pipeline_class), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
            raise ValueError(f"{where}: pipeline_class must name a diffusers pipeline class (e.g. "
                             f"'StableDiffusion3Pipeline'), got {self.pipeline_class!r}.")

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        return default_dtype(device) if self.dtype == "auto" else DTYPES[self.dtype]

    def negative_prompt_argument(self, negative_prompt: str) -> Optional[str]:
        """What this pipeline's ``negative_prompt`` argument gets for ``negative_prompt`` (None: leave it out)."""
        if self.guidance_argument == "true_cfg_scale":
            # Qwen-Image's true CFG only runs when a negative prompt is given; " " is its documented empty one.
            return negative_prompt or " "
        if self.negative_prompt and (negative_prompt or self.kind == "deepgen"):
            return negative_prompt
        return None

    def describe(self) -> dict:
        """The fields an export records about the model (the revision is added once it is loaded)."""
        keys = ("id", "label", "kind", "source", "filename", "revision", "pipeline_class", "dtype")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


def load_registry(path: Union[str, Path]) -> list[Contestant]:
    """Read a contestants registry (YAML or JSON: ``{"contestants": [ {...}, ... ]}``).

    Raises ``ValueError`` naming the entry and field at fault; ids must be unique.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"Cannot read the contestants registry {path}: {error}") from error
    entries = (data or {}).get("contestants") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path} must hold a mapping with a 'contestants' list.")
    known = {f.name for f in Contestant.__dataclass_fields__.values()}
    contestants: list[Contestant] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: contestant #{index + 1} must be a mapping, got {type(entry).__name__}.")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"{path}: contestant #{index + 1} has unknown fields {unknown}; known: {sorted(known)}.")
        try:
            contestant = Contestant(**entry)
            if contestant.examples is not None:
                contestant.examples = contestant.examples.resolved(path.parent)
        except TypeError as error:  # a required field is missing
            raise ValueError(f"{path}: contestant #{index + 1}: {error}") from error
        except ValueError as error:
            raise ValueError(f"{path}: contestant #{index + 1} ({entry.get('id')!r}): {error}") from error
        contestants.append(contestant)
    ids = [c.id for c in contestants]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{path}: contestant ids must be unique; repeated: {duplicates}.")
    return contestants


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_builtin(source: str) -> bool:
    return source in BUILTIN_CHECKPOINTS or source in RANDOM_PRESETS


def hub_cache_path(repo_id: str, filename: str, revision: Optional[str]) -> Optional[Path]:
    """The cached copy of ``filename`` in hub repo ``repo_id``, or None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def _snapshot_revision(path: Path) -> Optional[str]:
    """The commit hash of a hub cache path (``.../snapshots/<sha>/...``), else None."""
    parts = path.parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        return parts[parts.index("snapshots") + 1]
    return None


def _file_fingerprint(path: Path, limit: int = 1 << 20) -> str:
    """A short content hash of a local file or of a folder's small config files, for records."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.json") if p.is_file())
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            digest.update(handle.read(limit))
    return "sha256:" + digest.hexdigest()[:16]


def explain_load_error(error: BaseException) -> str:
    """A one-line, path-free explanation of why a contestant could not load (the details go to the log)."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(error, GatedRepoError):
        return ("the model is gated: accept its license on the Hugging Face Hub and give the app a token "
                "(HF_TOKEN; a Space secret on Spaces).")
    if isinstance(error, RepositoryNotFoundError):
        return "no such repository on the Hugging Face Hub (or it is private and no token was given)."
    if isinstance(error, LocalEntryNotFoundError) or (hub_offline() and isinstance(error, OSError)):
        return "not in the local cache, and the hub is offline (HF_HUB_OFFLINE=1); download it first."
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "not enough GPU memory to load it next to the other loaded models."
    if isinstance(error, ValueError):
        return str(error).splitlines()[0][:300]
    return f"it failed to load ({type(error).__name__}); see the server log."


# --- runners: one loaded model behind one call signature ------------------------------------------------------


class LoadedModel:
    """A loaded contestant: ``run(prompt, references, seed, ...)`` -> one PIL image, with a step callback."""

    def __init__(self, contestant: Contestant, pipe: Any, revision: str, device: torch.device):
        self.contestant = contestant
        self.pipe = pipe
        self.revision = revision
        self.device = device

    @property
    def max_side(self) -> int:
        """The largest output side this model accepts (DeepGen's position embedding limit; baselines: MAX_SIDE)."""
        limit = getattr(self.pipe, "max_side", None)
        return min(MAX_SIDE, limit) if isinstance(limit, int) else MAX_SIDE

    @property
    def default_side(self) -> int:
        """The output side the model is made for (DeepGen: its ``default_sample_size``; baselines: 512)."""
        return min(getattr(self.pipe, "default_sample_size", DEFAULT_SIZE), self.max_side)

    def run(self, prompt: str, negative_prompt: str, references: list[Image.Image], width: Optional[int],
            height: Optional[int], steps: int, guidance: float, seed: int,
            on_step: Callable[[int], None]) -> Image.Image:
        """Generate (no references) or edit; ``width``/``height`` None lets an edit follow its source."""
        c = self.contestant

        def callback(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            on_step(step)
            return tensors

        kwargs: dict[str, Any] = dict(prompt=prompt, height=height, width=width, num_inference_steps=steps,
                                      generator=torch.Generator("cpu").manual_seed(seed),
                                      callback_on_step_end=callback)
        kwargs[c.guidance_argument] = guidance
        negative = c.negative_prompt_argument(negative_prompt)
        if negative is not None:
            kwargs["negative_prompt"] = negative
        if references:
            refs = references[: c.max_reference_images]
            kwargs["image"] = refs if len(refs) > 1 else refs[0]
        return self.pipe(**kwargs).images[0]


def load_contestant(contestant: Contestant, device: torch.device) -> LoadedModel:
    """Load one contestant on ``device`` (may download from the hub unless HF_HUB_OFFLINE is set)."""
    c = contestant
    dtype = c.torch_dtype(device)
    if c.kind == "deepgen":
        source = c.source
        if c.filename:  # a native checkpoint inside a hub repo
            from huggingface_hub import hf_hub_download

            source = hf_hub_download(c.source, c.filename, revision=c.revision)
        pipe = load_pipeline(source, vlm=c.vlm, dit=c.dit, device=device, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        if c.source in RANDOM_PRESETS:
            revision = "random-init:seed0"
        elif is_builtin(c.source):
            revision = _file_fingerprint(BUILTIN_CHECKPOINTS[c.source])
        elif Path(source).exists():
            revision = _snapshot_revision(Path(source)) or _file_fingerprint(Path(source))
        else:
            cached = hub_cache_path(c.source, "model_index.json", c.revision)
            revision = (cached and _snapshot_revision(cached)) or c.revision or "main"
        return LoadedModel(c, pipe, revision, device)
    import diffusers

    pipeline_class = getattr(diffusers, str(c.pipeline_class))
    pipe = pipeline_class.from_pretrained(c.source, torch_dtype=dtype, revision=c.revision).to(device)
    pipe.set_progress_bar_config(disable=True)
    cached = hub_cache_path(c.source, "model_index.json", c.revision)
    revision = (cached and _snapshot_revision(cached)) or c.revision or "main"
    return LoadedModel(c, pipe, revision, device)
