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
section (:class:`deepgen.training.grpo_config.GRPOConfig`). Writes ``output_dir/checkpoints/checkpoint-<step>``
(resumable: rerunning the same command continues from the newest one), ``output_dir/loss_log.jsonl``
(``reward/<name>`` per step, for ``train/plot_rewards.py``), ``output_dir/train_config.json`` and
``output_dir/final`` (``save_pretrained``).

The loop is ``main``'s last lines: :func:`rollout` -> :func:`compute_advantages` -> :func:`policy_update` ->
:func:`log_record`; the plumbing it shares with stages 1-2 is ``deepgen.training.trainer``. Rewards and prompt
sources are looked up by name in registries; the shape world's (DeepGen-nano) register on import below.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image

import deepgen.nano.prompts  # noqa: F401 -- registers the shape world's prompt source "world"
import deepgen.nano.rewards  # noqa: F401 -- registers the shape world's rewards: shapeeval, glyph, glyph_iou
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
    sde_step_std,
    select_train_timesteps,
    velocity_kl,
)
from deepgen.training.grpo_config import GRPOConfig, load_stage3_config
from deepgen.training.prompts import Prompt, load_prompts
from deepgen.training.rewards import MixedReward, build_rewards, reward_metadata, sample_reward_weights
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
from deepgen.training.seeding import step_seed

STATS = ("policy_loss", "kl", "sft_loss", "ratio_mean", "clip_fraction", "approx_kl", "grad_norm")


# --- images, policy and reference -----------------------------------------------------------------------------------


def to_pil(pipe, latents: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(array) for array in tensor_to_uint8(pipe.decode_latents(latents))]


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


@dataclass
class RL:
    """What the RL steps read besides the :class:`trainer.Run`: settings, prompts, rewards, sampler schedule,
    reference policy."""

    grpo: GRPOConfig
    policy: torch.nn.Module  # the DiT's DeepGenModel, unwrapped: rollouts sample with it (no DDP hooks)
    prompts: list[Prompt]
    rewards: MixedReward
    size: int  # sampling side in pixels
    sigmas: torch.Tensor  # (T+1,)
    timesteps: torch.Tensor  # (T,)
    num_stochastic: int  # steps with a log-probability (CPS's last step into sigma = 0 has none)
    reference: Optional[torch.nn.Module]  # None when kl_beta = 0
    reference_context: Optional[Callable[[], Any]]
    noise_scheduler: Any  # for the SFT-aux loss

    @property
    def reward_names(self) -> list[str]:
        return list(self.rewards.rewards)

    @property
    def reward_weights(self) -> list[float]:
        return [self.rewards.weights[name] for name in self.reward_names]


@dataclass
class Rollouts:
    """One step's samples on this process: per prompt, its condition and G trajectories; the rewards."""

    groups: list[tuple[Condition, Trajectories]]
    scores: torch.Tensor  # (P·G, K) each reward's raw score, groups contiguous
    scales: torch.Tensor  # (P·G, K) the per-sample weights (0 = the reward does not apply)
    seconds: float

    @property
    def rewards(self) -> torch.Tensor:
        """(P·G, K) the scores after per-sample weights."""
        return self.scores * self.scales


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
    scales = sample_reward_weights(metadata, list(parts))  # (N, K)
    results = {}
    for k, (name, values) in enumerate(parts.items()):
        weights = scales[:, k]
        results[name] = float(values.sum() / weights.sum().clamp(min=1e-8))
        for capability in sorted({m["capability"] for m in metadata if "capability" in m}):
            rows = [i for i, m in enumerate(metadata) if m.get("capability") == capability and weights[i] > 0]
            if rows:
                results[f"{name}/{capability}"] = float(values[rows].sum() / weights[rows].sum())
    return results


# --- the steps of one RL step -------------------------------------------------------------------------------------


def rollout(run: trainer.Run, rl: RL) -> Rollouts:
    """Draw ``prompts_per_step`` prompts; sample G SDE trajectories of each with the current policy; score them."""
    started = time.time()
    config, grpo, pipe, accelerator = run.config, rl.grpo, run.pipe, run.accelerator
    rank, device, G = accelerator.process_index, accelerator.device, grpo.group_size
    latent_side = rl.size // pipe.vae_scale_factor
    rng = random.Random(step_seed(config.seed, rank, run.step, 0))
    batch = [rl.prompts[rng.randrange(len(rl.prompts))] for _ in range(grpo.prompts_per_step)]
    groups, reward_rows, scale_rows = [], [], []
    for index, prompt in enumerate(batch):
        generator = torch.Generator().manual_seed(step_seed(config.seed, rank, run.step, 1 + index))
        condition = encode_condition(pipe, prompt.text, grpo.negative_prompt, prompt.images, rl.size, rl.size,
                                     generator).to(device)
        noise = initial_noise(G, pipe.transformer.config.in_channels, latent_side, latent_side, generator, device,
                              shared=grpo.shared_noise)
        with accelerator.autocast():
            trajectories = sde_rollout(rl.policy, condition, noise, rl.sigmas, rl.timesteps, grpo.guidance_scale,
                                       grpo.noise_level, grpo.sde_type, generator, grpo.log_prob_form)
        groups.append((condition, trajectories))
        with torch.no_grad():
            images = to_pil(pipe, trajectories.final_latents)
        metadata = [reward_metadata(prompt, grpo.rewards)] * G
        scores = rl.rewards.scores(images, [prompt.text] * G, metadata)
        reward_rows.append(torch.stack([scores[name] for name in rl.reward_names], dim=1))  # (G, K)
        scale_rows.append(sample_reward_weights(metadata, rl.reward_names))  # (G, K)
    return Rollouts(groups, torch.cat(reward_rows).to(device), torch.cat(scale_rows).to(device),
                    time.time() - started)


def compute_advantages(run: trainer.Run, rl: RL, rollouts: Rollouts) -> torch.Tensor:
    """(P, G) advantages of this process's rollouts, normalised over the whole batch of all processes (groups
    stay contiguous through the gather): GDPO's per-reward group normalisation, or GRPO's on the weighted sum.

    Per-sample weights scale the rewards before normalisation (``sample_weights_on: rewards``) or weight the
    normalised per-reward advantages (``advantages``, the authors'; ``gdpo_advantages`` with (N, K) weights).
    """
    accelerator, G = run.accelerator, rl.grpo.group_size
    if rl.grpo.sample_weights_on == "advantages":
        all_scores = accelerator.gather(rollouts.scores)  # (world·P·G, K)
        weights = accelerator.gather(rollouts.scales) * torch.tensor(rl.reward_weights, device=accelerator.device)
        all_advantages = gdpo_advantages(all_scores, weights, group_size=G)
    elif rl.grpo.advantage == "gdpo":
        all_rewards = accelerator.gather(rollouts.rewards)  # (world·P·G, K)
        all_advantages = gdpo_advantages(all_rewards, rl.reward_weights, group_size=G)
    else:
        all_rewards = accelerator.gather(rollouts.rewards)  # (world·P·G, K)
        weights = torch.tensor(rl.reward_weights, device=accelerator.device)
        all_advantages = group_advantages(all_rewards @ weights, group_size=G)
    mine = all_advantages.view(accelerator.num_processes, -1)[accelerator.process_index]
    return mine.view(len(rollouts.groups), G)


def policy_loss_step(run: trainer.Run, rl: RL, condition: Condition, trajectories: Trajectories, j: int,
                     advantages: torch.Tensor, num_micro: int, sync: bool, stats: dict[str, list[float]]) -> None:
    """Backward of one (prompt group, trained step j) of a minibatch of ``num_micro`` such pairs: (1 − λ)·(clipped
    surrogate + β·KL to the reference) / ``num_micro``, i.e. ``mix_sft_loss`` (mean of the micro RL losses, sft, λ)
    expanded over the micro-steps. ``sync``: the minibatch's last backward, where DDP all-reduces."""
    grpo, accelerator = rl.grpo, run.accelerator
    with contextlib.nullcontext() if sync else accelerator.no_sync(run.model), accelerator.autocast():
        if rl.reference is not None:  # before the policy forward: switching adapters touches grads
            with torch.no_grad(), rl.reference_context():
                ref_velocity = guided_velocity(rl.reference, trajectories.latents[:, j],
                                               trajectories.timesteps[j].to(accelerator.device), condition,
                                               grpo.guidance_scale)
        log_prob, velocity = transition_log_prob(run.model, condition, trajectories, j, grpo.guidance_scale,
                                                 grpo.noise_level, grpo.sde_type, grpo.log_prob_form)
        policy_loss, ppo = clipped_policy_loss(log_prob, trajectories.log_probs[:, j], advantages, grpo.clip_range,
                                               grpo.adv_clip_max)
        rl_loss = policy_loss
        if rl.reference is not None:
            std = None
            if grpo.kl_form == "velocity_over_variance":
                std = sde_step_std(trajectories.sigmas[j].item(), trajectories.sigmas[j + 1].item(), grpo.noise_level,
                                   grpo.sde_type)
            kl = velocity_kl(velocity, ref_velocity, std=None if std is None else torch.tensor(std)).mean()
            rl_loss = rl_loss + grpo.kl_beta * kl
            stats["kl"].append(kl.item())
        accelerator.backward((1.0 - grpo.sft_lambda) * rl_loss / num_micro)
    stats["policy_loss"].append(policy_loss.item())
    for key in ("ratio_mean", "clip_fraction", "approx_kl"):
        stats[key].append(ppo[key].item())


def policy_update(run: trainer.Run, rl: RL, rollouts: Rollouts, advantages: torch.Tensor) -> dict[str, list[float]]:
    """``updates_per_step`` optimizer steps per inner epoch, one minibatch of prompt groups each: every (group,
    trained step) is one backward, then the SFT-aux batch, then the optimizer step."""
    config, grpo, rank = run.config, rl.grpo, run.accelerator.process_index
    stats: dict[str, list[float]] = {key: [] for key in STATS}
    generator = torch.Generator().manual_seed(step_seed(config.seed, rank, run.step, 10_000))
    update = 0
    for _ in range(grpo.inner_epochs):
        order = torch.randperm(len(rollouts.groups), generator=generator).tolist()
        for minibatch in (order[i::grpo.updates_per_step] for i in range(grpo.updates_per_step)):
            plan = [(g, int(j)) for g in minibatch
                    for j in select_train_timesteps(rl.num_stochastic, grpo.timestep_fraction, generator)]
            micro_steps = len(plan) + (1 if run.stream is not None else 0)
            for position, (g, j) in enumerate(plan):
                policy_loss_step(run, rl, *rollouts.groups[g], j, advantages[g], len(plan),
                                 sync=position == micro_steps - 1, stats=stats)
            if run.stream is not None:
                sft_generator = torch.Generator().manual_seed(step_seed(config.seed, rank, run.step, 20_000 + update))
                sft_loss = trainer.flow_matching_loss_on_batch(
                    run.pipe, frozen_condition_velocity(run.model, run.pipe), run.stream.next_batch(),
                    rl.noise_scheduler, config.loss, sft_generator, run.accelerator)
                run.accelerator.backward(mix_sft_loss(torch.zeros_like(sft_loss), sft_loss, grpo.sft_lambda))
                stats["sft_loss"].append(sft_loss.item())
            grad_norm = run.optimizer_step()
            if grad_norm is not None:
                stats["grad_norm"].append(grad_norm)
            update += 1
    return stats


def log_record(run: trainer.Run, rl: RL, rollouts: Rollouts, stats: dict[str, list[float]],
               started: float) -> dict[str, Any]:
    """The step's log line: each reward's mean over the samples it applies to (all processes), the weighted total,
    the loss statistics, timings."""
    accelerator, device = run.accelerator, run.accelerator.device
    record: dict[str, Any] = {"lr": run.lr_scheduler.get_last_lr()[0]}
    totals = accelerator.reduce(torch.stack([rollouts.rewards.sum(0), rollouts.scales.sum(0)]), reduction="sum")
    for k, name in enumerate(rl.reward_names):
        if totals[1, k] > 0:  # a reward off for every prompt of the step (e.g. OCR) has no mean
            record[f"reward/{name}"] = (totals[0, k] / totals[1, k]).item()
    weighted = rollouts.rewards @ torch.tensor(rl.reward_weights, device=device)  # (P·G,)
    record["reward/total"] = accelerator.gather(weighted).mean().item()
    for key, values in stats.items():
        if values:
            record[key] = accelerator.reduce(torch.tensor(sum(values) / len(values), device=device),
                                             reduction="mean").item()
    record["step_time_s"], record["rollout_time_s"] = round(time.time() - started, 3), round(rollouts.seconds, 3)
    run.progress.set_postfix(reward=f"{record['reward/total']:.3f}")
    return record


# --- the loop -----------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> str:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=str, default=None, help="YAML file of TrainConfig fields + a grpo: section")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. grpo.kl_beta=0 max_steps=10")
    args = parser.parse_args(argv)
    config, grpo = load_stage3_config(args.config, args.overrides)
    accelerator = trainer.start_run(config)
    if accelerator.is_main_process:
        (Path(config.output_dir) / "grpo_config.json").write_text(json.dumps(dataclasses.asdict(grpo), indent=2) + "\n")
    rank, world_size, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    size = config.data.resolution

    # 1. Policy = the DiT (whole or LoRA, from the config); the frozen reference is the DiT as loaded.
    pipe = trainer.load_pipeline(config.model)
    pipe.to(device)
    reference, reference_context = reference_policy(pipe, config) if grpo.kl_beta > 0 else (None, None)
    trainable = trainer.prepare_trainable(pipe, config, accelerator)

    # 2. Prompts, rewards and the sampler's schedule; supervised data for the SFT-aux loss.
    prompts = load_prompts(grpo.prompts, size)
    eval_prompts = load_prompts(grpo.eval_prompts, size) if grpo.eval_every else []
    rewards = build_rewards(grpo.rewards, device)
    stream = build_stream(config.data, config.batch_size, config.seed, rank, world_size) if grpo.sft_lambda else None
    noise_scheduler = trainer.training_scheduler(pipe)
    sigmas, timesteps = sampling_schedule(pipe.scheduler, grpo.num_inference_steps, mu=pipe.scheduler_mu(size, size))
    num_stochastic = grpo.num_inference_steps - 1 if grpo.sde_type == "cps" else grpo.num_inference_steps
    policy = pipe.model
    rl = RL(grpo, policy, prompts, rewards, size, sigmas, timesteps, num_stochastic, reference, reference_context,
            noise_scheduler)

    # 3. Optimiser (one scheduler step per update), accelerate wraps the DiT forward; resume (prompt draws and
    #    noise depend on the step only, so nothing else needs saving).
    run = trainer.prepare_run(config, accelerator, pipe, trainable, policy, stream, "stage3_grpo",
                              updates_per_step=grpo.updates_per_step * grpo.inner_epochs)

    def evaluate(at_step: int) -> None:
        if accelerator.is_main_process:
            results = evaluate_rewards(pipe, eval_prompts, rewards, grpo, size)
            run.loss_log.log({"step": at_step, **{f"eval/{key}": value for key, value in results.items()}})
        accelerator.wait_for_everyone()

    if grpo.eval_every and run.step == 0:
        evaluate(0)

    # 4. Train: rollouts -> advantages -> policy updates -> log, checkpoint and evaluate when due.
    while not run.done:
        started = time.time()
        rollouts = rollout(run, rl)
        stats = policy_update(run, rl, rollouts, compute_advantages(run, rl, rollouts))
        run.end_step(lambda: log_record(run, rl, rollouts, stats, started))
        if grpo.eval_every and (run.step % grpo.eval_every == 0 or run.done):
            evaluate(run.step)

    # 5. The RL pipeline, loadable with DeepGenPipeline.from_pretrained.
    return run.finish()


if __name__ == "__main__":
    main()
