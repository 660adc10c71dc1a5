"""Training configuration for the stage scripts: dataclasses loaded from YAML, overridable from the command line.

A run is described by one :class:`TrainConfig`. ``load_config("train/configs/x.yaml", ["optim.lr=3e-4"])``
reads the YAML file, applies ``key.sub=value`` overrides (values are parsed as YAML, so ``true``, ``1e-4``,
``null``, ``[0.9, 0.95]`` and ``{rank: 8, alpha: 16}`` work; list items are addressed by index,
``data.sources.0.path=x.parquet``) and builds the dataclasses, raising a ``ValueError`` that names any unknown
key and the valid ones. The freeze/LoRA schedule of a stage is config (``train_connector``,
``train_transformer``, ``vlm_lora``, ``transformer_lora``), not code.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

from .flow_matching import LOSS_WEIGHTING_SCHEMES, TIMESTEP_SAMPLING_SCHEMES

DATA_FORMATS = ("auto", "parquet", "imagefolder", "webdataset", "hub")
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("cosine", "constant", "linear", "constant_with_warmup")
CONNECTOR_INITS = ("pytorch", "xavier")
IMAGE_PROCESSES = ("center_crop", "fix_pixels")


@dataclass
class ModelConfig:
    """Where the starting weights come from: ``pretrained``, or the base models ``base_vlm`` + ``base_dit``."""

    # A folder written by ``DeepGenPipeline.save_pretrained`` (or a diffusers-format release / hub id), or a
    # preset name from ``deepgen.config.PRESETS`` ("tiny", "deepgen-1.0") for random weights. Set it to null to
    # start from the base models below instead.
    pretrained: Optional[str] = "tiny"
    # The authors' starting point for stage 1: Qwen2.5-VL (folder or hub id, with its tokenizer) ...
    base_vlm: Optional[str] = None
    # ... and a Kontext DiT folder/hub id holding transformer/, vae/ and scheduler/ (UniPic2-SD3.5M-Kontext-2B).
    base_dit: Optional[str] = None
    # Preset whose think-token count, SCB layers and connector size a fresh bridge takes (with base models).
    bridge_preset: str = "deepgen-1.0"
    # Seed of random weights: the whole model for a preset, the fresh bridge for base models.
    seed: int = 0
    # Initialisation of a fresh bridge's connector encoder (with base models): "pytorch" (nn.Linear's default) or
    # "xavier" (the authors': xavier-uniform attention and MLP weights; docs/training.md).
    connector_init: str = "pytorch"


@dataclass
class DataSourceConfig:
    """One dataset of text-to-image pairs and/or edit triplets; rows without a source image are text-to-image."""

    # A parquet file/glob/folder, an imagefolder directory (images + metadata.jsonl), webdataset ``.tar`` shard(s)
    # (file, glob or brace pattern) or a hub dataset id.
    path: str = ""
    # One of DATA_FORMATS; "auto" guesses from ``path`` (.parquet, .tar, an existing directory, else hub).
    format: str = "auto"
    # Split name for hub datasets (and for the datasets library's packaged loaders).
    split: str = "train"
    # Relative sampling weight when several sources are mixed (normalised over all sources).
    weight: float = 1.0
    # Stream the source (hub datasets and large shards) instead of downloading/preparing it first.
    streaming: bool = False
    # Hub dataset configuration name, if the dataset has several.
    name: Optional[str] = None
    # Column holding the target image (webdataset shards usually call it "png"/"jpg").
    image_column: str = "image"
    # Column holding the caption or edit instruction ("txt" in most webdataset shards).
    prompt_column: str = "prompt"
    # Column holding the edit source image; null (or a missing/None value in a row) means text-to-image.
    source_image_column: Optional[str] = "source_image"


@dataclass
class DataConfig:
    """Data sources and the authors' preprocessing."""

    # The datasets mixed; null = none configured (stage 3 without the SFT-aux loss reads no data).
    sources: Optional[list[DataSourceConfig]] = None
    # Side of the square training images (512 for DeepGen 1.0), or of the bucket area with fix_pixels. Edit
    # sources are brought to their target's size so that their Kontext tokens align with the target's.
    resolution: int = 512
    # "center_crop" (the square above) or "fix_pixels" (the authors' aspect buckets: aspect kept at about
    # resolution² pixels, sides rounded up to multiples of 32; batches group rows of one size).
    image_process: str = "center_crop"
    # Probability of replacing a caption by "" so the model also learns the unconditional velocity for CFG.
    caption_dropout: float = 0.1
    # The same for edit batches; null = caption_dropout. The authors drop captions of text-to-image rows only (0.0).
    edit_caption_dropout: Optional[float] = None
    # Shuffle buffer for streamed sources (map-style sources are shuffled exactly by a seeded permutation).
    shuffle_buffer: int = 1000
    # Where the datasets library caches prepared parquet/imagefolder/webdataset data (null = its default).
    cache_dir: Optional[str] = None


@dataclass
class LoraSpec:
    """A LoRA adapter (peft) on the VLM or the DiT."""

    rank: int = 64
    alpha: float = 128.0  # alpha / rank = 2 as the authors; the update is scaled by alpha / rank
    dropout: float = 0.0
    # Full module names to adapt; null = every nn.Linear and nn.Embedding (the authors' "auto").
    target_modules: Optional[list[str]] = None


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (the authors' recipe), gradient clipping."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    # Decay only tensors of 2 or more dimensions (matrices, embeddings, the think tokens), never biases or norm
    # scales: the authors' CustomAdamW (deepgen src/optimisers/custom_adamw.py:12-19). false = decay everything.
    decay_matrices_only: bool = False
    eps: float = 1e-8
    # One of LR_SCHEDULERS (diffusers.optimization.get_scheduler names).
    lr_scheduler: str = "cosine"
    # Fraction of ``max_steps`` spent warming up linearly from 0 (1% in the paper).
    warmup_ratio: float = 0.01
    # Warm-up length in optimizer steps; when set it replaces ``warmup_ratio`` (stage 3: the authors' 20).
    warmup_steps: Optional[int] = None
    # Clip the global gradient norm to this value; null disables clipping.
    max_grad_norm: Optional[float] = 1.0


@dataclass
class EMAConfig:
    """Optional exponential moving average of the trainable weights (diffusers' EMAModel)."""

    enabled: bool = False
    decay: float = 0.9999
    # The EMA starts tracking after this many optimizer steps (before that it copies the weights).
    update_after_step: int = 0
    # Save ``final/`` with the EMA weights instead of the raw ones.
    use_for_final: bool = True


@dataclass
class LossConfig:
    """Flow-matching timestep density and loss weighting (diffusers.training_utils, SD3 §3.1)."""

    # Timestep density: "logit_normal" (SD3's, pairs with dynamic shifting), "mode" or "none" (uniform).
    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    # Per-sample loss weight: "none" (the density already emphasises mid timesteps), "sigma_sqrt" or "cosmap".
    loss_weighting: str = "none"


@dataclass
class TrainConfig:
    """One training run of stage 1 (alignment) or stage 2 (joint SFT)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)

    # --- freeze/LoRA schedule (what a stage trains). The VAE is always frozen. ---
    # Train the think tokens, the SCB projectors and the connector (``pipe.scb``): stages 1 and 2.
    train_connector: bool = True
    # Train every DiT weight (stage 2). Mutually exclusive with ``transformer_lora``.
    train_transformer: bool = False
    # Train the VLM (base weights). The authors never do; they use ``vlm_lora`` instead.
    train_vlm: bool = False
    # LoRA on the VLM (stage 2: rank 64, alpha 128, every Linear and Embedding); null = none.
    vlm_lora: Optional[LoraSpec] = None
    # LoRA on the DiT (a cheaper stage 2); null = none.
    transformer_lora: Optional[LoraSpec] = None

    # --- optimisation loop ---
    # Number of optimizer steps (each one is ``gradient_accumulation_steps`` micro-batches).
    max_steps: int = 1000
    # Micro-batch size per process.
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    # "no", "fp16" or "bf16" (the authors train in bf16 on GPUs; CPU runs should use "no").
    mixed_precision: str = "no"
    # Store frozen weights in the mixed-precision dtype to save memory (diffusers' scripts do this); the saved
    # ``final/`` then holds those frozen weights in that dtype.
    cast_frozen_weights: bool = True
    # Recompute activations in backward to save memory (VLM and DiT blocks).
    gradient_checkpointing: bool = False
    # Seeds weights-independent randomness: data order, caption dropout, noise, timesteps.
    seed: int = 0
    # DDP: allow trainable parameters unused in a step (the ViT's LoRA on text-only batches, lm_head's LoRA);
    # null = only when VLM weights are trained (an extra graph traversal per step otherwise wasted).
    find_unused_parameters: Optional[bool] = None

    # --- logging and checkpoints ---
    output_dir: str = "runs/train"
    # Append one JSON line to ``output_dir/loss_log.jsonl`` every N optimizer steps.
    log_every: int = 10
    # Save a resumable checkpoint every N optimizer steps (and always at the end); 0 = only at the end.
    checkpoint_every: int = 1000
    # Keep only the newest N checkpoints (null keeps all).
    keep_checkpoints: Optional[int] = 3
    # Resume from "latest" (newest checkpoint in output_dir, if any), a checkpoint folder, or null (fresh run).
    resume: Optional[str] = "latest"
    # Write ``output_dir/final`` (a DeepGenPipeline.save_pretrained folder) at the end.
    save_final: bool = True

    def __post_init__(self) -> None:
        validate(self)


# --- validation -------------------------------------------------------------------------------------------------


def _choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}.")


def validate(config: TrainConfig) -> None:
    """Check values that the types cannot express; raise ``ValueError`` saying how to fix them."""
    _choice("mixed_precision", config.mixed_precision, MIXED_PRECISION)
    _choice("optim.lr_scheduler", config.optim.lr_scheduler, LR_SCHEDULERS)
    _choice("loss.weighting_scheme", config.loss.weighting_scheme, TIMESTEP_SAMPLING_SCHEMES)
    _choice("loss.loss_weighting", config.loss.loss_weighting, LOSS_WEIGHTING_SCHEMES)
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}.")
    if config.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0 = only at the end), got {config.checkpoint_every}.")
    if config.keep_checkpoints is not None and config.keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints must be >= 1 or null, got {config.keep_checkpoints}.")
    if config.optim.warmup_steps is not None and config.optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0 or null, got {config.optim.warmup_steps}.")
    if not 0.0 <= config.optim.warmup_ratio < 1.0:
        raise ValueError(f"optim.warmup_ratio must be in [0, 1), got {config.optim.warmup_ratio}.")
    if not 0.0 <= config.data.caption_dropout <= 1.0:
        raise ValueError(f"data.caption_dropout must be in [0, 1], got {config.data.caption_dropout}.")
    edit_dropout = config.data.edit_caption_dropout
    if edit_dropout is not None and not 0.0 <= edit_dropout <= 1.0:
        raise ValueError(f"data.edit_caption_dropout must be in [0, 1] or null, got {edit_dropout}.")
    _choice("data.image_process", config.data.image_process, IMAGE_PROCESSES)
    if config.data.resolution < 16 or config.data.resolution % 16:
        raise ValueError(f"data.resolution must be a multiple of 16 (>= 16), got {config.data.resolution}.")
    model = config.model
    _choice("model.connector_init", model.connector_init, CONNECTOR_INITS)
    if (model.pretrained is None) == (model.base_vlm is None or model.base_dit is None):
        raise ValueError("Give either model.pretrained (a pipeline folder or preset name) or both model.base_vlm and "
                         f"model.base_dit (with model.pretrained=null); got {model}.")
    if config.data.sources is not None and not config.data.sources:
        raise ValueError("data.sources is empty; give at least one dataset (see DataSourceConfig), or null for none.")
    for i, source in enumerate(config.data.sources or []):
        _choice(f"data.sources.{i}.format", source.format, DATA_FORMATS)
        if not source.path:
            raise ValueError(f"data.sources.{i}.path is empty; give a parquet file, folder, .tar shards or hub id.")
        if source.weight <= 0:
            raise ValueError(f"data.sources.{i}.weight must be > 0, got {source.weight}.")
    if config.train_transformer and config.transformer_lora is not None:
        raise ValueError("train_transformer and transformer_lora are exclusive: train the whole DiT or a LoRA on it.")
    if config.train_vlm and config.vlm_lora is not None:
        raise ValueError("train_vlm and vlm_lora are exclusive: train the whole VLM or a LoRA on it.")
    for name in ("vlm_lora", "transformer_lora"):
        spec = getattr(config, name)
        if spec is not None and (spec.rank < 1 or not 0.0 <= spec.dropout < 1.0):
            raise ValueError(f"{name} needs rank >= 1 and dropout in [0, 1), got {spec}.")
    if not (config.train_connector or config.train_transformer or config.train_vlm or config.vlm_lora
            or config.transformer_lora):
        raise ValueError("Nothing to train: set train_connector/train_transformer or a vlm_lora/transformer_lora.")


# --- building dataclasses from plain data ---------------------------------------------------------------------


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Turn YAML data into an instance of type hint ``tp`` (dataclasses, Optional, list, tuple, scalars)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if _is_dataclass_type(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where or 'config'} must be a mapping of {tp.__name__} fields, got {value!r}.")
        return build_config(tp, value, where)
    if tp is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}.")
        _, item = typing.get_args(tp)
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}.")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list like [0.9, 0.95], got {value!r}.")
        items = typing.get_args(tp)
        if len(items) != len(value):
            raise ValueError(f"{where} must have {len(items)} items, got {list(value)}.")
        return tuple(_convert(t, v, f"{where}.{i}") for i, (t, v) in enumerate(zip(items, value)))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, bool, str) and not (isinstance(value, tp) and (tp is bool or not isinstance(value, bool))):
        raise ValueError(f"{where} must be of type {tp.__name__}, got {value!r}.")
    return value


def build_config(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build the config dataclass ``cls`` from nested plain data, converting and checking every field;
    ``where`` prefixes key names in errors (``"grpo"`` -> ``grpo.kl_beta``)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"Unknown config key(s) {[prefix + k for k in unknown]}; valid keys under "
                         f"{where or 'the top level'}: {names}.")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from nested plain data (missing keys keep their defaults)."""
    return build_config(TrainConfig, data or {})


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Nested plain data (tuples as lists), the inverse of :func:`config_from_dict`."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


# --- overrides --------------------------------------------------------------------------------------------------


def apply_override(data: dict[str, Any], override: str, schema: type = TrainConfig, section: str = "") -> None:
    """Apply one ``key.sub=value`` override to nested plain data in place (the value is parsed as YAML).

    A missing or null section is created empty, so its other fields keep their defaults: ``vlm_lora.rank=8``
    works even when the YAML says ``vlm_lora: null``. List items are addressed by index
    (``data.sources.0.path=...``); replace a whole list with YAML (``data.sources=[{path: a.parquet}]``).
    ``schema`` is the config dataclass ``data`` describes (keys are checked against it); with ``section``
    (e.g. ``"grpo"``), ``data`` is that top-level section and overrides are spelled ``grpo.key=value``.
    """
    if "=" not in override:
        raise ValueError(f"Override {override!r} must look like key.sub=value (e.g. optim.lr=1e-4).")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = key.strip().split(".")
    if section:
        if parts[0] != section or len(parts) < 2:
            raise ValueError(f"Override {override!r} must start with {section}. (e.g. {section}.key=value).")
        parts = parts[1:]
    node: Any = data
    hint: Any = schema
    for depth, part in enumerate(parts):
        where = ".".join(([section] if section else []) + parts[: depth + 1])
        last = depth == len(parts) - 1
        tp = _unwrap_optional(hint)
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"Override {override!r}: {where} needs a list index in [0, {len(node) - 1}].")
            slot: Union[str, int] = int(part)
            child = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:  # a mapping field (e.g. grpo.rewards): any key
            slot, child = part, typing.get_args(tp)[1]
        else:
            hints = typing.get_type_hints(tp)
            if part not in hints:
                raise ValueError(f"Unknown config key {where!r} in override {override!r}; valid keys here: "
                                 f"{sorted(hints)}.")
            slot, child = part, hints[part]
        if last:
            node[slot] = value
            return
        current = node[slot] if isinstance(node, list) else node.get(slot)
        if current is None:
            # A missing section: a list field starts from its default items, anything else empty (defaults).
            default = getattr(tp(), part) if _is_dataclass_type(tp) else None
            node[slot] = _plain(default or []) if typing.get_origin(_unwrap_optional(child)) is list else {}
        node = node[slot]
        hint = child


def _unwrap_optional(tp: Any) -> Any:
    """``Optional[X]`` -> X; any other hint unchanged."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: dataclasses.asdict(o)))


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply ``key=value`` overrides, and validate.

    Args:
        path: YAML file whose keys mirror :class:`TrainConfig`; None uses the defaults.
        overrides: ``"key.sub=value"`` strings, applied in order after the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"Config file {path} does not exist.")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a YAML mapping of TrainConfig fields, got {type(data).__name__}.")
    for override in overrides:
        apply_override(data, override)
    return config_from_dict(data)


def parse_args(argv: Optional[Sequence[str]] = None, description: str = "") -> TrainConfig:
    """Command line of the stage scripts: ``--config file.yaml`` then any number of ``key.sub=value``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=str, default=None, help="YAML file of TrainConfig fields.")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=1e-4 max_steps=10")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides)
