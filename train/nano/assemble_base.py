"""Assemble the nano base pipeline: pretrained VLM + tokenizer, a fresh SCB bridge, pretrained DiT, VAE, scheduler.

This is the nano analogue of loading Qwen2.5-VL-3B and UniPic2-SD3.5M-Kontext before stage 1: every part but the
bridge (think tokens, projectors, connector) is pretrained. The bridge's output heads start at zero (the authors'
initialisation), so the base pipeline generates unconditionally until stage 1 trains the bridge.

Usage:
    python train/nano/assemble_base.py --vae runs/nano/vae-decoder --out runs/nano/base
    python train/nano/assemble_base.py --out runs/nano/base-lastlayer --scb-layers 6   # the SCB ablation
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from deepgen.config import get_preset
from deepgen.kontext import KontextSD3Transformer2DModel
from deepgen.model import build_bridge
from deepgen.pipeline import DeepGenPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vlm", type=Path, default=Path("runs/nano/vlm"), help="pretrain_vlm.py output")
    parser.add_argument("--dit", type=Path, default=Path("runs/nano/dit/transformer"), help="pretrain_dit.py output")
    parser.add_argument("--vae", type=Path, default=Path("runs/nano/vae-decoder"),
                        help="pretrain_vae.py output (the decoder-fine-tuned VAE)")
    parser.add_argument("--out", type=Path, default=Path("runs/nano/base"))
    parser.add_argument("--scb-layers", type=int, nargs="+", default=None,
                        help="VLM hidden-state indices to stack (default: the nano preset's [5, 4, 3, 2, 1]; "
                             "the ablation uses 6, the last hidden state)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh bridge")
    args = parser.parse_args()

    config = get_preset("nano")
    if args.scb_layers is not None:
        config = dataclasses.replace(config, scb_layers=args.scb_layers)
    torch.manual_seed(args.seed)
    pipe = DeepGenPipeline(
        vlm=Qwen2_5_VLForConditionalGeneration.from_pretrained(args.vlm, attn_implementation="sdpa").eval(),
        tokenizer=AutoTokenizer.from_pretrained(args.vlm),
        scb=build_bridge(config).eval(),
        transformer=KontextSD3Transformer2DModel.from_pretrained(args.dit).eval(),
        vae=AutoencoderKL.from_pretrained(args.vae).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(config.scheduler),
    )
    pipe.save_pretrained(args.out)
    print(f"saved {args.out} (scb_layers {config.scb_layers})")


if __name__ == "__main__":
    main()
