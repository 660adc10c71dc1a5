"""Pretrain the nano VAE (diffusers ``AutoencoderKL``, factor 4) on shape-world images.

The stand-in for SD3's VAE, an SD-style autoencoder without the GAN/perceptual terms (flat shapes need neither).
Loss: ``MSE + L1`` between ``decode(z)`` and ``x`` with ``z`` a posterior sample, object pixels weighted
``foreground_weight`` times the background, ``+ kl_weight * KL(q(z|x) || N(0, I))``. At the end the latent
``shift_factor`` (mean) and ``scaling_factor`` (1 / std) are measured on training images (SD3's convention:
``z_scaled = (z - shift) * scale``), and ShapeEval reads back reconstructions of held-out images to show how
much the VAE alone loses.

Usage:
    python train/nano/pretrain_vae.py --data runs/nano/data --out runs/nano/vae --steps 1000 --batch-size 16
Re-running the same command resumes from ``<out>/checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from nano_common import (
    cosine_lr,
    load_checkpoint,
    load_world_shards,
    save_checkpoint,
    set_threads,
    to_tensor,
)

from deepgen.nano import shapeeval, world
from deepgen.config import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/nano/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/nano/vae"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--foreground-weight", type=float, default=10.0,
                        help="loss weight of object pixels relative to background pixels")
    parser.add_argument("--init", type=Path, default=None, help="start from this pretrained VAE folder")
    parser.add_argument("--decoder-only", action="store_true",
                        help="train only the decoder (with --init): the latent space, and so a DiT trained on it, "
                             "stays valid, and shift/scale are kept")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-samples", type=int, default=200,
                        help="held-out images whose reconstructions ShapeEval reads (0: skip)")
    args = parser.parse_args()
    set_threads(args.threads)

    data = load_world_shards(args.data)
    pool = np.concatenate([data.images, data.sources[data.has_source]])  # (N, 64, 64, 3) every image we have
    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(args.init) if args.init else AutoencoderKL.from_config(get_preset("nano").vae)
    if args.decoder_only:
        if args.init is None:
            raise ValueError("--decoder-only fine-tunes a pretrained VAE: pass its folder with --init.")
        vae.encoder.requires_grad_(False)
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    start = 0
    checkpoint_path = args.out / "checkpoint.pt"
    if (state := load_checkpoint(checkpoint_path)) is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        print(f"resumed from step {start}", flush=True)

    vae.train()
    tic = time.time()
    for step in range(start, args.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, args.steps, args.lr, warmup=50)
        x = to_tensor(pool[rng.integers(0, len(pool), args.batch_size)])  # (B, 3, 64, 64)
        with torch.set_grad_enabled(not args.decoder_only):
            posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # Objects cover a few percent of the pixels: weight them up, or the background swamps their colours.
        # The top-left pixel is always background (objects sit in the middle of their grid cells).
        foreground = (x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.05  # (B, 1, H, W)
        weight = 1.0 + (args.foreground_weight - 1.0) * foreground.float()
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean()
        # L1 keeps the flat colours and edges crisp.
        loss = (weight * ((recon - x) ** 2 + (recon - x).abs())).mean() + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}/{args.steps} mse {mse.item():.5f} kl {kl.item():.1f} "
                  f"{(time.time() - tic) / 50:.3f}s/step", flush=True)
            tic = time.time()
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            save_checkpoint(checkpoint_path, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                                              "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                                              "step": step + 1})

    # Latent statistics -> SD3-style shift and scale, so that scaled latents have zero mean and unit variance.
    vae.eval()
    with torch.no_grad():
        if args.decoder_only:  # the encoder did not change: keep the scale the DiT was trained with
            shift, scale = vae.config.shift_factor, vae.config.scaling_factor
        else:
            sample = pool[rng.choice(len(pool), min(2048, len(pool)), replace=False)]
            latents = torch.cat([vae.encode(to_tensor(sample[i:i + 256])).latent_dist.sample()
                                 for i in range(0, len(sample), 256)])
            shift, scale = latents.mean().item(), 1.0 / latents.std().item()
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))

    vae.save_pretrained(args.out)
    if args.eval_samples:  # ShapeEval on reconstructions of held-out targets: the ceiling any nano generator reaches
        eval_samples = world.dataset("eval", args.eval_samples)
        with torch.no_grad():
            targets = np.stack([np.asarray(s.target_image(64)) for s in eval_samples])
            recon = vae.decode(vae.encode(to_tensor(targets)).latent_dist.mode()).sample
        recon = (127.5 * recon + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        results = shapeeval.evaluate_dataset(list(recon), eval_samples)
        print(shapeeval.format_table(results), flush=True)
        (args.out / "reconstruction_shapeeval.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out} (shift {shift:.4f}, scale {scale:.4f})", flush=True)


if __name__ == "__main__":
    main()
