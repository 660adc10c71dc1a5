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
section (:class:`deepgen.training.grpo_config.GRPOConfig`). Writes ``output_dir/checkpoints/checkpoint-<step>`` (resumable: rerunning the same
command continues from the newest one), ``output_dir/loss_log.jsonl`` (``reward/<name>`` per step, for
``train/plot_rewards.py``), ``output_dir/train_config.json`` and ``output_dir/final`` (``save_pretrained``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from deepgen.image_processing import tensor_to_uint8
from deepgen.lora import adapters_disabled
from deepgen.model import DeepGenModel
from deepgen.training import trainer
from deepgen.training.config import TrainConfig
from deepgen.training.data import build_stream
from deepgen.training.grpo import (
    clipped_policy_loss,
    gdpo_advantages,
    group_advantages,
    mix_sft_loss,
    select_train_timesteps,
    velocity_kl,
)
from deepgen.training.grpo_config import GRPOConfig, load_stage3_config
from deepgen.training.prompts import Prompt, load_prompts
from deepgen.training.rewards import MixedReward, build_rewards, reward_metadata
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


# --- images ----------------------------------------------------------------------------------------------------


def to_pil(pipe, latents: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(array) for array in tensor_to_uint8(pipe.decode_latents(latents))]


# --- policy and reference -----------------------------------------------------------------------------------------


def reference_policy(pipe, train: TrainConfig):
    """``(model, context)`` of the frozen reference: the DiT as loaded, i.e. before RL.

    With a LoRA policy it is the same DiT with the adapters off; with full fine-tuning a frozen copy (made before
    any checkpoint is restored, so a resumed run keeps the stage-2 reference).
    """
    if train.transformer_lora is not None:
        return pipe.model, (lambda: adapters_disabled(pipe.transformer))
    frozen = copy.deepcopy(pipe.transformer).requires_grad_(False).eval()
    return DeepGenModel(pipe.vlm, pipe.scb, frozen), contextlib.nullcontext


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
