"""Stage 3, MR-GRPO: reinforcement learning of the DiT with a mixture of rewards (ARCHITECTURE.md, Training).

Each step, every process draws ``grpo.prompts_per_step`` prompts and samples ``grpo.group_size`` (G) images of
each with the SDE sampler (CPS by default, or Flow-GRPO's), recording every step's log-probability. The images
are scored by the configured rewards; advantages are GDPO's (each reward normalised within its prompt group,
weighted sum, normalised over the whole batch of all processes) or GRPO's. The stored transitions of a random
``grpo.timestep_fraction`` of the stochastic steps are then re-scored under the current policy and the DiT is
updated ``grpo.updates_per_step`` times (one minibatch of prompt groups each) on

    (1 − λ)·[clipped PPO surrogate + β·KL(v, v_ref)] + λ·flow-matching loss on supervised data,

where v_ref is the frozen stage-2 policy (the DiT before RL; the adapters switched off when training a LoRA).
The VLM, think tokens and SCB stay frozen: their conditioning is computed once per prompt.

    accelerate launch train/stage3_grpo.py --config train/configs/deepgen-1.0-stage3.yaml [key.sub=value ...]
    python train/stage3_grpo.py --config train/configs/nano-stage3.yaml output_dir=runs/nano-rl

The YAML holds the shared training fields of ``deepgen.training.config.TrainConfig`` (model, SFT-aux ``data``,
``optim``, ``loss``, checkpoints, ``max_steps`` = RL steps, ``batch_size`` = SFT-aux batch) plus a ``grpo:``
section (:class:`GRPOConfig`). Writes ``output_dir/checkpoints/checkpoint-<step>`` (resumable: rerunning the same
command continues from the newest one), ``output_dir/loss_log.jsonl`` (``reward/<name>`` per step, for
``train/plot_rewards.py``), ``output_dir/train_config.json`` and ``output_dir/final`` (``save_pretrained``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml
from PIL import Image
from tqdm.auto import tqdm

from deepgen.image_processing import tensor_to_uint8
from deepgen.lora import lora_layers
from deepgen.model import DeepGenModel
from deepgen.training import trainer
from deepgen.training.config import TrainConfig, _build, apply_override, config_from_dict
from deepgen.training.data import build_stream
from deepgen.training.grpo import (
    SDE_TYPES,
    clipped_policy_loss,
    gdpo_advantages,
    group_advantages,
    mix_sft_loss,
    select_train_timesteps,
    velocity_kl,
)
from deepgen.training.rewards import (
    CLIPReward,
    MixedReward,
    OCRReward,
    ShapeEvalReward,
    VLMJudgeReward,
    glyph_recognizer,
)
from deepgen.training.rollout import (
    Condition,
    Trajectories,
    encode_condition,
    guided_velocity,
    initial_noise,
    sampling_schedule,
    sde_rollout,
    transition_log_prob,
)

logger = logging.getLogger("stage3_grpo")
ADVANTAGES = ("gdpo", "grpo")
OCR_ENGINES = ("glyph", "paddleocr")


# --- configuration ------------------------------------------------------------------------------------------------


@dataclass
class PromptSourceConfig:
    """Where RL (or evaluation) prompts come from; every prompt carries metadata for the rewards."""

    # "world": shape-world prompts with ShapeEval metadata (nano); "jsonl": one object per line with "prompt",
    # optional "metadata" (dict, may hold per-sample "reward_weights") and optional "image" (path of an edit source).
    format: str = "world"
    # World split ("train" for rewards, "eval" for held-out evaluation) or the jsonl path.
    path: str = "train"
    # World only: number of samples, their seed and capabilities (null = all five).
    world_samples: int = 512
    world_seed: int = 0
    world_capabilities: Optional[list[str]] = None


@dataclass
class ShapeEvalRewardConfig:
    weight: float = 1.0
    criterion: str = "overall"  # a ShapeEval criterion; "overall" averages the capability's criteria


@dataclass
class OCRRewardConfig:
    weight: float = 1.0
    # "glyph": ShapeEval's template matcher (shape world); "paddleocr": PaddleOCR 2.x (pip install paddleocr).
    engine: str = "glyph"
    # Apply OCR only to prompts with quoted text (or metadata "text"/"glyph"); others get weight 0 for it.
    text_prompts_only: bool = True


@dataclass
class CLIPRewardConfig:
    weight: float = 1.0
    model_id: str = "openai/clip-vit-large-patch14"


@dataclass
class VLMJudgeRewardConfig:
    weight: float = 1.0
    # OpenAI-compatible endpoint serving the judge, e.g. UnifiedReward-Think behind vLLM.
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "UnifiedReward-Think-qwen-7b"
    # Name of the environment variable holding the API key (keys never go into configs); null = no key.
    api_key_env: Optional[str] = None
    timeout: float = 60.0
    retries: int = 2


@dataclass
class RewardsConfig:
    """The reward mixture; a null entry is not used. Weights combine them (GDPO: after per-group normalisation)."""

    shapeeval: Optional[ShapeEvalRewardConfig] = None
    ocr: Optional[OCRRewardConfig] = None
    clip: Optional[CLIPRewardConfig] = None
    vlm_judge: Optional[VLMJudgeRewardConfig] = None


@dataclass
class GRPOConfig:
    """MR-GRPO settings (defaults: the authors' where they published them, else flow_grpo's)."""

    prompts: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    rewards: RewardsConfig = field(default_factory=lambda: RewardsConfig(shapeeval=ShapeEvalRewardConfig()))
    # Rollouts: G images per prompt, prompts per process per step, sampler settings.
    group_size: int = 8
    prompts_per_step: int = 4
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    negative_prompt: str = ""
    sde_type: str = "cps"  # "cps" (DeepGen's default) or "flow_grpo"
    noise_level: float = 0.7  # flow_grpo's SDE noise strength
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
    if not any(dataclasses.astuple(config.rewards)):
        raise ValueError("grpo.rewards enables no reward; set at least one of shapeeval, ocr, clip, vlm_judge.")
    if config.rewards.ocr is not None and config.rewards.ocr.engine not in OCR_ENGINES:
        raise ValueError(f"grpo.rewards.ocr.engine={config.rewards.ocr.engine!r}; choose one of {OCR_ENGINES}.")
    if config.eval_every and config.eval_prompts is None:
        raise ValueError("grpo.eval_every > 0 needs grpo.eval_prompts (e.g. {format: world, path: eval}).")
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
            _apply_grpo_override(grpo_data, override)
        else:
            apply_override(data, override)
    train = config_from_dict(data)
    grpo = _build(GRPOConfig, grpo_data, "grpo")
    validate_grpo(grpo, train)
    return train, grpo


def _apply_grpo_override(data: dict[str, Any], override: str) -> None:
    """``grpo.a.b=value`` into the plain ``grpo`` data (the YAML-parsed value; sections are created as needed).

    Unknown keys are reported when the dataclasses are built.
    """
    if "=" not in override:
        raise ValueError(f"Override {override!r} must look like grpo.key=value (e.g. grpo.kl_beta=0).")
    key, raw = override.split("=", 1)
    *parents, last = key.strip().split(".")[1:]
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = yaml.safe_load(raw) if raw.strip() else ""


# --- prompts and rewards ------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    text: str
    metadata: dict[str, Any]
    images: list[Image.Image] = field(default_factory=list)  # edit sources (empty for text-to-image)


def load_prompts(config: PromptSourceConfig, size: int) -> list[Prompt]:
    """The prompt pool (see :class:`PromptSourceConfig`); edit sources rendered/loaded at ``size``."""
    if config.format == "world":
        from deepgen import world

        samples = world.dataset(config.path, config.world_samples, seed=config.world_seed,
                                capabilities=config.world_capabilities or world.CAPABILITIES)
        return [Prompt(s.prompt, dict(s.metadata), [s.source_image(size)] if s.source is not None else [])
                for s in samples]
    if config.format == "jsonl":
        prompts = []
        for number, line in enumerate(Path(config.path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ValueError(f"{config.path}:{number} has no non-empty \"prompt\" string.")
            images = [Image.open(row["image"]).convert("RGB")] if row.get("image") else []
            prompts.append(Prompt(row["prompt"], dict(row.get("metadata") or {}), images))
        if not prompts:
            raise ValueError(f"{config.path} holds no prompts.")
        return prompts
    raise ValueError(f"Prompt source format {config.format!r} is not supported; use 'world' or 'jsonl'.")


def paddleocr_recognizer():
    """PaddleOCR 2.x as an ``image -> text`` engine (flow_grpo's OCR reward uses the same calls)."""
    try:
        import numpy as np
        from paddleocr import PaddleOCR
    except ImportError as error:
        raise ImportError("grpo.rewards.ocr.engine=paddleocr needs `pip install paddleocr paddlepaddle` "
                          "(or use engine=glyph for the shape world).") from error
    engine = PaddleOCR(use_angle_cls=False, lang="en", show_log=False)

    def recognize(image: Image.Image) -> str:
        result = engine.ocr(np.asarray(image.convert("RGB")), cls=False)
        return " ".join(line[1][0] for line in (result[0] or [])) if result else ""

    return recognize


def build_rewards(config: RewardsConfig, device: torch.device) -> MixedReward:
    """The configured rewards behind one interface, with their weights."""
    rewards, weights = {}, {}
    if config.shapeeval is not None:
        rewards["shapeeval"] = ShapeEvalReward(config.shapeeval.criterion)
        weights["shapeeval"] = config.shapeeval.weight
    if config.ocr is not None:
        recognize = glyph_recognizer if config.ocr.engine == "glyph" else paddleocr_recognizer()
        rewards["ocr"], weights["ocr"] = OCRReward(recognize), config.ocr.weight
    if config.clip is not None:
        rewards["clip"], weights["clip"] = CLIPReward(config.clip.model_id, device=str(device)), config.clip.weight
    if config.vlm_judge is not None:
        judge = config.vlm_judge
        api_key = os.environ.get(judge.api_key_env) if judge.api_key_env else None
        if judge.api_key_env and not api_key:
            raise ValueError(f"grpo.rewards.vlm_judge.api_key_env names ${judge.api_key_env}, which is not set.")
        rewards["vlm_judge"] = VLMJudgeReward(judge.base_url, judge.model, api_key, judge.timeout, judge.retries)
        weights["vlm_judge"] = judge.weight
    return MixedReward(rewards, weights)


def reward_metadata(prompt: Prompt, config: RewardsConfig) -> dict[str, Any]:
    """The prompt's metadata, with OCR switched off (weight 0) on prompts that ask for no text."""
    metadata = dict(prompt.metadata)
    if config.ocr is not None and config.ocr.text_prompts_only and "reward_weights" not in metadata:
        wants_text = bool(metadata.get("text") or metadata.get("glyph") or ('"' in prompt.text))
        metadata["reward_weights"] = {"ocr": 1.0 if wants_text else 0.0}
    return metadata


def to_pil(pipe, latents: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(array) for array in tensor_to_uint8(pipe.decode_latents(latents))]


# --- policy and reference -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def adapters_disabled(module: torch.nn.Module):
    """Run ``module`` as its base model: every LoRA layer bypassed (peft's ``enable_adapters(False)``)."""
    layers = lora_layers(module)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def reference_policy(pipe, train: TrainConfig):
    """``(model, context)`` of the frozen reference: the DiT as loaded, i.e. before RL.

    With a LoRA policy it is the same DiT with the adapters off; with full fine-tuning a frozen copy (made before
    any checkpoint is restored, so a resumed run keeps the stage-2 reference).
    """
    if train.transformer_lora is not None:
        return pipe.model, (lambda: adapters_disabled(pipe.transformer))
    frozen = copy.deepcopy(pipe.transformer).requires_grad_(False).eval()
    return DeepGenModel(pipe.vlm, pipe.connector, frozen), contextlib.nullcontext


def frozen_condition_velocity(model: torch.nn.Module, pipe):
    """``fn(latents, timestep, inputs, references)`` for ``trainer.flow_matching_loss_on_batch``: the frozen VLM +
    SCB encode ``inputs`` without grad, the (wrapped) policy DiT predicts the velocity."""

    def velocity(latents, timestep, inputs, reference_latents=None):
        with torch.no_grad():
            seq, pooled = pipe.model.encode_condition(inputs)
        return model(latents, timestep, seq, pooled, reference_latents)

    return velocity


def step_seed(seed: int, rank: int, step: int, salt: int) -> int:
    """A seed that depends only on (seed, rank, step, salt): a resumed run draws what an uninterrupted one would."""
    return ((((seed * 1_000_003 + rank) * 1_000_003 + step) * 1_000_003) + salt) % 2**63


# --- evaluation ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_rewards(pipe, prompts: Sequence[Prompt], rewards: MixedReward, grpo: GRPOConfig, size: int,
                     seed: int = 0) -> dict[str, float]:
    """Mean of every reward on ``prompts`` with the deterministic pipeline sampler (one image each, fixed seeds),
    plus ``<reward>/<capability>`` means where the metadata names a capability."""
    images = []
    for index, prompt in enumerate(prompts):
        images += pipe(prompt.text, image=prompt.images or None, negative_prompt=grpo.negative_prompt, height=size,
                       width=size, num_inference_steps=grpo.eval_num_inference_steps or grpo.num_inference_steps,
                       guidance_scale=grpo.guidance_scale,
                       generator=torch.Generator().manual_seed(seed + index)).images
    metadata = [reward_metadata(p, grpo.rewards) for p in prompts]
    parts = rewards.components(images, [p.text for p in prompts], metadata)
    results = {}
    for name, values in parts.items():
        weights = torch.tensor([float(m.get("reward_weights", {}).get(name, 1.0)) for m in metadata])
        results[name] = float(values.sum() / weights.sum().clamp(min=1e-8))
        for capability in sorted({m["capability"] for m in metadata if "capability" in m}):
            rows = [i for i, m in enumerate(metadata) if m.get("capability") == capability and weights[i] > 0]
            if rows:
                results[f"{name}/{capability}"] = float(values[rows].sum() / weights[rows].sum())
    return results


# --- the loop -----------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> str:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=str, default=None, help="YAML file of TrainConfig fields + a grpo: section")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. grpo.kl_beta=0 max_steps=10")
    args = parser.parse_args(argv)
    config, grpo = load_stage3_config(args.config, args.overrides)
    accelerator = trainer.build_accelerator(config)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    trainer.write_run_config(config, accelerator)
    if accelerator.is_main_process:
        (Path(config.output_dir) / "grpo_config.json").write_text(json.dumps(dataclasses.asdict(grpo), indent=2) + "\n")
    rank, world_size, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    size, G = config.data.resolution, grpo.group_size

    # 1. Policy = the DiT (whole or LoRA, from the config); the frozen reference is the DiT as loaded.
    pipe = trainer.load_pipeline(config.model)
    pipe.to(device)
    reference, reference_context = reference_policy(pipe, config) if grpo.kl_beta > 0 else (None, None)
    trainable = trainer.apply_training_schedule(pipe, config)
    if accelerator.mixed_precision != "no" and config.cast_frozen_weights:
        trainer.cast_frozen_weights(pipe, trainer.mixed_precision_dtype(accelerator))
    logger.info("Training %d tensors (%d weights).", len(trainable), sum(p.numel() for _, p in trainable))

    # 2. Prompts and rewards; supervised data for the SFT-aux loss.
    prompts = load_prompts(grpo.prompts, size)
    eval_prompts = load_prompts(grpo.eval_prompts, size) if grpo.eval_every else []
    rewards = build_rewards(grpo.rewards, device)
    reward_names = list(rewards.rewards)
    stream = build_stream(config.data, config.batch_size, config.seed, rank, world_size) if grpo.sft_lambda else None
    noise_scheduler = trainer.training_scheduler(pipe)
    sigmas, timesteps = sampling_schedule(pipe.scheduler, grpo.num_inference_steps, mu=pipe.scheduler_mu(size, size))
    # CPS's last step (into sigma = 0) is deterministic: it has no log-prob to train.
    num_stochastic = grpo.num_inference_steps - 1 if grpo.sde_type == "cps" else grpo.num_inference_steps
    latent_side = size // pipe.vae_scale_factor

    # 3. Optimiser (one scheduler step per update), accelerate wraps the DiT forward.
    optimizer = trainer.build_optimizer([p for _, p in trainable], config.optim)
    updates = grpo.updates_per_step * grpo.inner_epochs
    lr_scheduler = trainer.build_lr_scheduler(
        optimizer, dataclasses.replace(config, max_steps=config.max_steps * updates), world_size)
    policy = pipe.model
    model, optimizer, lr_scheduler = accelerator.prepare(policy, optimizer, lr_scheduler)
    ema = trainer.build_ema(trainable, config.ema)
    if ema is not None:
        ema.to(device)

    # 4. Resume (prompt draws and noise depend on the step only, so nothing else needs saving).
    checkpoints = trainer.CheckpointManager(config.output_dir, accelerator, trainable, config.keep_checkpoints)
    step = checkpoints.resume(config.resume, stream, ema)
    loss_log = trainer.LossLog(config.output_dir, accelerator, step)
    progress = tqdm(total=config.max_steps, initial=step, desc="stage 3", disable=not accelerator.is_local_main_process)

    def log_evaluation(at_step: int) -> None:
        if accelerator.is_main_process:
            results = evaluate_rewards(pipe, eval_prompts, rewards, grpo, size)
            loss_log.log({"step": at_step, **{f"eval/{key}": value for key, value in results.items()}})
        accelerator.wait_for_everyone()

    if grpo.eval_every and step == 0:
        log_evaluation(0)

    while step < config.max_steps:
        started = time.time()
        # 5. Rollouts: G SDE trajectories per prompt from the current policy, then the rewards of their images.
        rng = random.Random(step_seed(config.seed, rank, step, 0))
        batch = [prompts[rng.randrange(len(prompts))] for _ in range(grpo.prompts_per_step)]
        groups: list[tuple[Condition, Trajectories]] = []
        reward_rows, scale_rows = [], []
        for index, prompt in enumerate(batch):
            generator = torch.Generator().manual_seed(step_seed(config.seed, rank, step, 1 + index))
            condition = encode_condition(pipe, prompt.text, grpo.negative_prompt, prompt.images, size, size,
                                         generator).to(device)
            noise = initial_noise(G, pipe.transformer.config.in_channels, latent_side, latent_side, generator, device)
            with accelerator.autocast():
                trajectories = sde_rollout(policy, condition, noise, sigmas, timesteps, grpo.guidance_scale,
                                           grpo.noise_level, grpo.sde_type, generator)
            groups.append((condition, trajectories))
            with torch.no_grad():
                images = to_pil(pipe, trajectories.final_latents)
            metadata = [reward_metadata(prompt, grpo.rewards)] * G
            parts = rewards.components(images, [prompt.text] * G, metadata)
            reward_rows.append(torch.stack([parts[name] for name in reward_names], dim=1))  # (G, K)
            scale_rows.append(torch.tensor([[float(metadata[0].get("reward_weights", {}).get(name, 1.0))
                                             for name in reward_names]] * G))  # (G, K) per-sample weights
        rollout_time = time.time() - started

        # 6. Advantages over the whole batch of all processes (groups stay contiguous through the gather).
        local_rewards = torch.cat(reward_rows).to(device)  # (P·G, K)
        all_rewards = accelerator.gather(local_rewards)  # (world·P·G, K)
        weights = [rewards.weights[name] for name in reward_names]
        if grpo.advantage == "gdpo":
            all_advantages = gdpo_advantages(all_rewards, weights, group_size=G)
        else:
            all_advantages = group_advantages(all_rewards @ torch.tensor(weights, device=device), group_size=G)
        advantages = all_advantages.view(world_size, -1)[rank].view(len(groups), G)  # (P, G)

        # 7. Policy updates: minibatches of prompt groups; in each, every (group, trained step) is one backward.
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "kl", "sft_loss", "ratio_mean",
                                                           "clip_fraction", "approx_kl", "grad_norm")}
        generator = torch.Generator().manual_seed(step_seed(config.seed, rank, step, 10_000))
        update = 0
        for _ in range(grpo.inner_epochs):
            order = torch.randperm(len(groups), generator=generator).tolist()
            for minibatch in (order[i::grpo.updates_per_step] for i in range(grpo.updates_per_step)):
                plan = [(g, int(j)) for g in minibatch
                        for j in select_train_timesteps(num_stochastic, grpo.timestep_fraction, generator)]
                micro_steps = len(plan) + (1 if stream is not None else 0)
                for position, (g, j) in enumerate(plan):
                    condition, trajectories = groups[g]
                    sync = position == micro_steps - 1
                    with contextlib.nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
                        if reference is not None:  # before the policy forward: switching adapters touches grads
                            with torch.no_grad(), reference_context():
                                ref_velocity = guided_velocity(reference, trajectories.latents[:, j],
                                                               trajectories.timesteps[j].to(device), condition,
                                                               grpo.guidance_scale)
                        log_prob, velocity = transition_log_prob(model, condition, trajectories, j,
                                                                 grpo.guidance_scale, grpo.noise_level, grpo.sde_type)
                        policy_loss, ppo = clipped_policy_loss(log_prob, trajectories.log_probs[:, j],
                                                               advantages[g], grpo.clip_range, grpo.adv_clip_max)
                        rl_loss = policy_loss
                        if reference is not None:
                            kl = velocity_kl(velocity, ref_velocity).mean()
                            rl_loss = rl_loss + grpo.kl_beta * kl
                            stats["kl"].append(kl.item())
                        # mix_sft_loss((mean of the micro RL losses), sft, λ), expanded over the micro-steps.
                        accelerator.backward((1.0 - grpo.sft_lambda) * rl_loss / len(plan))
                    stats["policy_loss"].append(policy_loss.item())
                    for key in ("ratio_mean", "clip_fraction", "approx_kl"):
                        stats[key].append(ppo[key].item())
                if stream is not None:
                    sft_generator = torch.Generator().manual_seed(step_seed(config.seed, rank, step, 20_000 + update))
                    sft_loss = trainer.flow_matching_loss_on_batch(pipe, frozen_condition_velocity(model, pipe),
                                                                   stream.next_batch(), noise_scheduler, config.loss,
                                                                   sft_generator, accelerator)
                    accelerator.backward(mix_sft_loss(torch.zeros_like(sft_loss), sft_loss, grpo.sft_lambda))
                    stats["sft_loss"].append(sft_loss.item())
                if config.optim.max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_([p for _, p in trainable], config.optim.max_grad_norm)
                    stats["grad_norm"].append(float(grad_norm))
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.step([p for _, p in trainable])
                update += 1
        step += 1
        progress.update(1)

        # 8. Log the rewards (per reward, over all processes), the losses, then checkpoint and evaluate.
        if step % config.log_every == 0 or step == config.max_steps:
            record: dict[str, Any] = {"step": step, "lr": lr_scheduler.get_last_lr()[0]}
            # Per-reward means over the samples the reward applies to (per-sample weight > 0), all processes.
            local_scales = torch.cat(scale_rows).to(device)  # (P·G, K)
            totals = accelerator.reduce(torch.stack([local_rewards.sum(0), local_scales.sum(0)]), reduction="sum")
            for k, name in enumerate(reward_names):
                if totals[1, k] > 0:  # a reward off for every prompt of the step (e.g. OCR) has no mean
                    record[f"reward/{name}"] = (totals[0, k] / totals[1, k]).item()
            weighted = local_rewards @ torch.tensor(weights, device=device)  # (P·G,)
            record["reward/total"] = accelerator.gather(weighted).mean().item()
            for key, values in stats.items():
                if values:
                    record[key] = accelerator.reduce(torch.tensor(sum(values) / len(values), device=device),
                                                     reduction="mean").item()
            record["step_time_s"], record["rollout_time_s"] = round(time.time() - started, 3), round(rollout_time, 3)
            progress.set_postfix(reward=f"{record['reward/total']:.3f}")
            loss_log.log(record)
        if step == config.max_steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
            checkpoints.save(step, stream, ema, extra={"stage": "stage3_grpo"})
        if grpo.eval_every and (step % grpo.eval_every == 0 or step == config.max_steps):
            log_evaluation(step)
    progress.close()

    # 9. The RL pipeline, loadable with DeepGenPipeline.from_pretrained.
    final = config.output_dir
    if config.save_final:
        final = str(trainer.save_final(pipe, accelerator, config.output_dir, trainable, ema, config.ema.use_for_final))
    accelerator.end_training()
    return final


if __name__ == "__main__":
    main()
