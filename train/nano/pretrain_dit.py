"""Pretrain the nano base Kontext DiT on text-to-image pairs and edit triplets, with a frozen stand-in text encoder.

The stand-in for UniPic2-SD3.5M-Kontext-2B: an SD3 MMDiT with Kontext reference tokens, trained with the
rectified-flow loss (``deepgen.training.flow_matching``) on VAE latents of the shape world, conditioned on a
fixed random text encoder (:class:`nano_common.StandInTextEncoder`, standing in for SD3's CLIP + T5) that
DeepGen later replaces by the VLM + SCB. Batches alternate between text-to-image rows and edit rows (an edit
row adds the source latents as Kontext tokens); 10% of prompts are dropped for classifier-free guidance.

Latents are encoded once with the pretrained VAE (posterior mean and std cached in ``<out>/latents.pt``); each
step draws a posterior sample, as the pipeline does.

Usage:
    python train/nano/pretrain_dit.py --data runs/nano/data --vae runs/nano/vae --out runs/nano/dit --steps 4000
Re-running the same command resumes from ``<out>/checkpoint.pt``. At the end ShapeEval scores the base DiT with
its stand-in encoder on the eval split (the conditioning DeepGen's bridge must learn to replace).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from nano_common import (
    StandInTextEncoder,
    cosine_lr,
    load_checkpoint,
    load_world_shards,
    save_checkpoint,
    set_threads,
    to_tensor,
    tokenizer_corpus,
)

from deepgen.nano import shapeeval, world
from deepgen.config import get_preset
from deepgen.image_processing import tensor_to_uint8
from deepgen.kontext import KontextSD3Transformer2DModel
from deepgen.tokenizer import build_tokenizer
from deepgen.training.flow_matching import (
    add_noise,
    drop_captions,
    flow_matching_loss,
    sample_timesteps,
)


@torch.no_grad()
def encode_posteriors(vae: AutoencoderKL, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 2, C, h, w) float16 posterior (mean, std), on the CPU."""
    out = []
    for i in range(0, len(images), batch):
        dist = vae.encode(to_tensor(images[i:i + batch]).to(vae.device)).latent_dist
        out.append(torch.stack([dist.mean, dist.std], dim=1).half().cpu())
    return torch.cat(out)


def sample_latents(posteriors: torch.Tensor, vae_config, generator: torch.Generator) -> torch.Tensor:
    """Posterior sample, shifted and scaled like ``DeepGenPipeline.encode_images``: (B, C, h, w) float32.

    The noise comes from the CPU ``generator`` whatever the posteriors' device, so runs on any device draw the
    same numbers."""
    mean, std = posteriors.float().unbind(1)
    z = mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)
    return (z - vae_config.shift_factor) * vae_config.scaling_factor


def tokenize(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw prompts (no chat template: the stand-in encoder is a plain text encoder) -> right-padded ids, mask."""
    encoded = tokenizer(prompts, padding=True, padding_side="right", return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if ids.shape[1] == 0:  # every prompt dropped: one masked pad keeps the shapes valid
        ids, mask = torch.zeros(len(prompts), 1, dtype=torch.long), torch.zeros(len(prompts), 1, dtype=torch.long)
    return ids, mask


@torch.no_grad()
def sample_images(transformer, text_encoder, tokenizer, vae, prompts: list[str], sources, steps: int,
                  guidance_scale: float, seed: int) -> np.ndarray:
    """Euler flow-matching sampling with CFG, the pipeline's loop with the stand-in encoder: (B, H, W, 3) uint8."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(get_preset("nano").scheduler)
    device = transformer.device
    scheduler.set_timesteps(steps, device=device)
    generator = torch.Generator().manual_seed(seed)
    ids, mask = tokenize(tokenizer, prompts + [""] * len(prompts))
    seq, pooled = text_encoder(ids.to(device), mask.to(device))
    shape = (len(prompts), transformer.config.in_channels, 16, 16)
    latents = torch.randn(shape, generator=generator).to(device)
    references = []
    if sources is not None:
        dist = vae.encode(to_tensor(sources).to(device)).latent_dist
        ref = (dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
        references = [torch.cat([ref, ref])]
    for t in scheduler.timesteps:
        velocity = transformer(torch.cat([latents, latents]), seq, pooled, t.expand(2 * len(prompts)),
                               reference_latents=references, return_dict=False)[0]
        v_cond, v_uncond = velocity.chunk(2)
        latents = scheduler.step(v_uncond + guidance_scale * (v_cond - v_uncond), t, latents).prev_sample
    images = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    return tensor_to_uint8(images.cpu())


def evaluate_base(transformer, text_encoder, tokenizer, vae, per_capability: int, steps: int,
                  guidance_scale: float) -> dict:
    samples = world.dataset("eval", per_capability * len(world.CAPABILITIES))
    images: list = [None] * len(samples)
    for edit in (False, True):
        index = [i for i, s in enumerate(samples) if (s.source is not None) == edit]
        for start in range(0, len(index), 100):
            chunk = index[start:start + 100]
            sources = np.stack([np.asarray(samples[i].source_image(64)) for i in chunk]) if edit else None
            out = sample_images(transformer, text_encoder, tokenizer, vae, [samples[i].prompt for i in chunk],
                                sources, steps, guidance_scale, seed=start)
            for i, image in zip(chunk, out):
                images[i] = image
    return shapeeval.evaluate_dataset(images, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/nano/data"))
    parser.add_argument("--vae", type=Path, default=Path("runs/nano/vae"))
    parser.add_argument("--out", type=Path, default=Path("runs/nano/dit"))
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this pretrained transformer (a fresh optimiser and schedule), e.g. to "
                             "continue a base DiT on regenerated data")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-samples", type=int, default=12000,
                        help="use the first N training rows (VAE-encoding all 40k costs more than it helps)")
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--eval-per-capability", type=int, default=40)
    parser.add_argument("--eval-steps", type=int, default=12)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to train on (random numbers come from CPU generators either way)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    config = get_preset("nano")
    tokenizer = build_tokenizer(tokenizer_corpus(), vocab_size=config.tokenizer_vocab_size)
    text_encoder = StandInTextEncoder(len(tokenizer), config.transformer["joint_attention_dim"],
                                      config.transformer["pooled_projection_dim"], seed=args.seed).to(args.device)
    vae = AutoencoderKL.from_pretrained(args.vae).eval().to(args.device)
    data = load_world_shards(args.data)
    data = dataclasses.replace(data, images=data.images[:args.max_samples], sources=data.sources[:args.max_samples],
                               has_source=data.has_source[:args.max_samples], prompts=data.prompts[:args.max_samples],
                               capabilities=data.capabilities[:args.max_samples],
                               metadata=data.metadata[:args.max_samples])
    latents_path = args.out / "latents.pt"
    if latents_path.is_file():
        cached = torch.load(latents_path)
    else:
        tic = time.time()
        cached = {"targets": encode_posteriors(vae, data.images),
                  "sources": encode_posteriors(vae, data.sources[data.has_source])}
        torch.save(cached, latents_path)
        print(f"encoded {len(data)} samples in {time.time() - tic:.0f}s", flush=True)
    cached = {name: posteriors.to(args.device) for name, posteriors in cached.items()}
    edit_rows = np.flatnonzero(data.has_source)
    t2i_rows = np.flatnonzero(~data.has_source)
    source_index = np.full(len(data), -1)
    source_index[edit_rows] = np.arange(len(edit_rows))

    torch.manual_seed(args.seed)
    transformer = (KontextSD3Transformer2DModel.from_pretrained(args.init) if args.init is not None
                   else KontextSD3Transformer2DModel.from_config(config.transformer)).to(args.device)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config.scheduler)
    train_scheduler = copy.deepcopy(scheduler)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    start = 0
    checkpoint_path = args.out / "checkpoint.pt"
    if (state := load_checkpoint(checkpoint_path)) is not None:
        transformer.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        generator.set_state(state["generator"])
        start = state["step"]
        print(f"resumed from step {start}", flush=True)

    transformer.train()
    tic, running = time.time(), {"t2i": [], "edit": []}
    for step in range(start, args.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, args.steps, args.lr, warmup=100)
        kind = "edit" if step % 2 else "t2i"
        rows = rng.choice(edit_rows if kind == "edit" else t2i_rows, args.batch_size)
        x0 = sample_latents(cached["targets"][rows], vae.config, generator)  # (B, C, 16, 16)
        references = [sample_latents(cached["sources"][source_index[rows]], vae.config, generator)] \
            if kind == "edit" else []
        prompts = drop_captions([data.prompts[i] for i in rows], args.caption_dropout, generator)
        ids, mask = tokenize(tokenizer, prompts)
        seq, pooled = text_encoder(ids.to(args.device), mask.to(args.device))
        sigmas, timesteps = sample_timesteps(args.batch_size, train_scheduler, "logit_normal", generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(args.device)
        pred = transformer(add_noise(x0, noise, sigmas.to(args.device)), seq, pooled, timesteps.to(args.device),
                           reference_latents=references,
                           return_dict=False)[0]
        loss = flow_matching_loss(pred, x0, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        running[kind].append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}/{args.steps} loss t2i {np.mean(running['t2i']):.4f} "
                  f"edit {np.mean(running['edit']):.4f} {(time.time() - tic) / 50:.3f}s/step", flush=True)
            tic, running = time.time(), {"t2i": [], "edit": []}
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            save_checkpoint(checkpoint_path, {"model": transformer.state_dict(), "optimizer": optimizer.state_dict(),
                                              "rng": rng.bit_generator.state, "generator": generator.get_state(),
                                              "step": step + 1})

    transformer.eval()
    transformer.save_pretrained(args.out / "transformer")
    if args.eval_per_capability:
        tic = time.time()
        results = evaluate_base(transformer, text_encoder, tokenizer, vae, args.eval_per_capability,
                                args.eval_steps, args.guidance_scale)
        print(shapeeval.format_table(results), flush=True)
        print(f"evaluated in {time.time() - tic:.0f}s", flush=True)
        (args.out / "standin_shapeeval.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out / 'transformer'}", flush=True)


if __name__ == "__main__":
    main()
