"""Configuration of stage 3, MR-GRPO: the ``grpo:`` section of a stage-3 YAML, its checks and its loader.

A stage-3 YAML holds the shared :class:`deepgen.training.config.TrainConfig` fields (model, the SFT-aux ``data``,
``optim``, ``loss``, checkpoints; ``max_steps`` counts RL steps, ``batch_size`` is the SFT-aux batch) plus a
``grpo:`` section, :class:`GRPOConfig`. Overrides address it as ``grpo.kl_beta=0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .config import TrainConfig, apply_override, build_config, config_from_dict
from .grpo import KL_FORMS, LOG_PROB_FORMS, SDE_TYPES

ADVANTAGES = ("gdpo", "grpo")
SAMPLE_WEIGHTS_ON = ("rewards", "advantages")


@dataclass
class PromptSourceConfig:
    """Where RL (or evaluation) prompts come from; every prompt carries metadata for the rewards."""

    # A prompt-source format registered with ``deepgen.training.prompts.register_prompt_source``: "jsonl" (one
    # object per line with "prompt", optional "metadata" -- a dict, may hold per-sample "reward_weights" -- and
    # optional "image", the path of an edit source); DeepGen-nano registers "world" (deepgen/nano/prompts.py).
    format: str = "jsonl"
    # The jsonl path, or what the registered format reads (the world's split for "world").
    path: str = ""
    # Keyword arguments of the registered loader (for "world": samples, seed, capabilities).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardSpec:
    """One reward of the mixture, under a name registered with ``deepgen.training.rewards.register_reward``."""

    weight: float = 1.0
    # Score only prompts that ask for text (quoted text, or metadata "text"/"glyph"); others get weight 0 for it.
    text_prompts_only: bool = False
    # Keyword arguments of the reward's factory, e.g. {model_id: ...} for clip, {criterion: overall} for shapeeval.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class GRPOConfig:
    """MR-GRPO settings (defaults: the authors' where they published them, else flow_grpo's)."""

    prompts: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    # The reward mixture by registered name (generic: clip, ocr, vlm_judge; DeepGen-nano: shapeeval, glyph,
    # glyph_iou); a null entry is off. Weights combine them (GDPO: after per-group normalisation).
    rewards: dict[str, Optional[RewardSpec]] = field(default_factory=dict)
    # Rollouts: G images per prompt, prompts per process per step, sampler settings.
    group_size: int = 8
    prompts_per_step: int = 4
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    negative_prompt: str = ""
    sde_type: str = "cps"  # "cps" (DeepGen's default) or "flow_grpo"
    noise_level: float = 0.7  # flow_grpo's SDE noise strength (the authors' sde_eta is 1.0)
    # One initial noise per prompt group, repeated G times (the authors' init_same_noise) instead of G draws.
    shared_noise: bool = False
    # "gaussian" (the exact density, textbook) or "negative_squared_error" (the authors' CPS form).
    log_prob_form: str = "gaussian"
    # "velocity" (mean (v − v_ref)², the step constant folded into β) or "velocity_over_variance" (the authors':
    # divided by 2·std² + 1e-7).
    kl_form: str = "velocity"
    # Where per-sample ``reward_weights`` (prompt metadata) act: "rewards" scales each reward before the group
    # normalisation (so a weight only switches a reward on or off), "advantages" weights the normalised
    # per-reward advantages (GDPO; the authors' per-dataset weights), on top of the config weights.
    sample_weights_on: str = "rewards"
    # Share of the stochastic denoising steps trained per prompt group (drawn afresh per group and step).
    timestep_fraction: float = 0.6
    # Policy update: optimizer steps per RL step (the step's prompt groups split into this many minibatches;
    # all but the first see a policy ratio != 1, which is where the clip acts), passes over the rollouts.
    updates_per_step: int = 2
    inner_epochs: int = 1
    advantage: str = "gdpo"  # "gdpo" or "grpo" (on the weighted sum of the rewards)
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    kl_beta: float = 5e-7  # β of the velocity KL to the frozen reference; 0 skips the reference forward
    sft_lambda: float = 1e-4  # λ of the convex mix with the flow-matching loss on ``data``; 0 skips it
    # Held-out evaluation every N steps (0 = never): the rewards on ``eval_prompts``, ODE sampling, fixed seeds.
    eval_every: int = 0
    eval_prompts: Optional[PromptSourceConfig] = None
    eval_num_inference_steps: Optional[int] = None  # default: num_inference_steps


def validate_grpo(config: GRPOConfig, train: TrainConfig) -> None:
    """Check what the types cannot say; raise ``ValueError`` explaining the fix."""
    if config.sde_type not in SDE_TYPES:
        raise ValueError(f"grpo.sde_type={config.sde_type!r}; choose one of {SDE_TYPES}.")
    if config.advantage not in ADVANTAGES:
        raise ValueError(f"grpo.advantage={config.advantage!r}; choose one of {ADVANTAGES}.")
    for name, choices in (("log_prob_form", LOG_PROB_FORMS), ("kl_form", KL_FORMS),
                          ("sample_weights_on", SAMPLE_WEIGHTS_ON)):
        if getattr(config, name) not in choices:
            raise ValueError(f"grpo.{name}={getattr(config, name)!r}; choose one of {choices}.")
    if config.sample_weights_on == "advantages" and config.advantage != "gdpo":
        raise ValueError("grpo.sample_weights_on=advantages weights the per-reward advantages of GDPO; set "
                         "grpo.advantage=gdpo or grpo.sample_weights_on=rewards.")
    for name in ("group_size", "prompts_per_step", "num_inference_steps", "updates_per_step", "inner_epochs"):
        if getattr(config, name) < 1:
            raise ValueError(f"grpo.{name} must be >= 1, got {getattr(config, name)}.")
    if config.group_size < 2:
        raise ValueError("grpo.group_size must be >= 2: advantages compare the rollouts of one prompt.")
    if config.updates_per_step > config.prompts_per_step:
        raise ValueError(f"grpo.updates_per_step={config.updates_per_step} exceeds grpo.prompts_per_step="
                         f"{config.prompts_per_step}: each update needs at least one prompt group.")
    if not 0.0 < config.timestep_fraction <= 1.0:
        raise ValueError(f"grpo.timestep_fraction must be in (0, 1], got {config.timestep_fraction}.")
    if config.sde_type == "cps" and config.num_inference_steps < 2:
        raise ValueError("With sde_type=cps the last step is deterministic; use num_inference_steps >= 2.")
    if config.kl_beta < 0 or not 0.0 <= config.sft_lambda <= 1.0:
        raise ValueError(f"grpo.kl_beta must be >= 0 and grpo.sft_lambda in [0, 1]; got {config.kl_beta}, "
                         f"{config.sft_lambda}.")
    if not any(spec is not None for spec in config.rewards.values()):
        raise ValueError("grpo.rewards enables no reward; give at least one, e.g. grpo.rewards.clip.weight=1 "
                         "(names registered in deepgen.training.rewards.REWARDS).")
    if not config.prompts.path:
        raise ValueError("grpo.prompts.path is empty; give the prompt pool, e.g. {format: jsonl, path: prompts.jsonl}.")
    if config.eval_every and config.eval_prompts is None:
        raise ValueError("grpo.eval_every > 0 needs grpo.eval_prompts (e.g. {format: jsonl, path: eval.jsonl}).")
    if train.gradient_accumulation_steps != 1:
        raise ValueError("Stage 3 accumulates over prompt groups and timesteps itself; set "
                         "gradient_accumulation_steps=1 and use grpo.prompts_per_step / updates_per_step.")
    if train.train_connector or train.train_vlm or train.vlm_lora is not None:
        raise ValueError("Stage 3 trains the DiT only (the conditioning is computed once per prompt): set "
                         "train_connector=false, train_vlm=false, vlm_lora=null and train_transformer=true or a "
                         "transformer_lora.")


def load_stage3_config(path: Optional[str], overrides: Sequence[str] = ()) -> tuple[TrainConfig, GRPOConfig]:
    """Read the YAML, apply ``key.sub=value`` overrides, build ``(TrainConfig, GRPOConfig)`` and validate.

    ``grpo.*`` keys go to :class:`GRPOConfig`, everything else to the shared ``TrainConfig`` loader.
    """
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"Config file {path} does not exist.")
        data = yaml.safe_load(Path(path).read_text()) or {}
    grpo_data = data.pop("grpo", None) or {}
    for override in overrides:
        if override.startswith("grpo."):
            apply_override(grpo_data, override, schema=GRPOConfig, section="grpo")
        else:
            apply_override(data, override)
    train = config_from_dict(data)
    grpo = build_config(GRPOConfig, grpo_data, "grpo")
    validate_grpo(grpo, train)
    return train, grpo
