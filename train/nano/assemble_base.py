"""Assemble the nano base pipeline: pretrained VLM + tokenizer, a fresh SCB bridge, pretrained DiT, VAE, scheduler.

This is the nano analogue of loading Qwen2.5-VL-3B and UniPic2-SD3.5M-Kontext before stage 1: every part but the
bridge (think tokens, projectors, connector) is pretrained. The bridge's output heads start at zero (the authors'
initialisation), so the base pipeline generates unconditionally until stage 1 trains the bridge.

The pretrained parts come from the nano pretraining scripts' outputs, or from an existing pipeline whose VLM, DiT
and VAE are still the pretrained ones (``--from-pipeline``): the built-in stage 1 is such a pipeline, since stage 1
trains only the bridge. The second way is DeepGen's own starting point, pretrained parts taken as published, and is
what ``PROFILE=hour bash train/nano/run_all.sh`` does.

Usage:
    python train/nano/assemble_base.py --vae runs/nano/vae-decoder --out runs/nano/base
    python train/nano/assemble_base.py --out runs/nano/base-lastlayer --scb-layers 6   # the SCB ablation
    python train/nano/assemble_base.py --from-pipeline deepgen/assets/deepgen-nano-stage1 --out runs/nano-hour/base
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
    parser.add_argument("--vlm", type=Path, default=None, help="pretrain_vlm.py output (default runs/nano/vlm)")
    parser.add_argument("--dit", type=Path, default=None,
                        help="pretrain_dit.py output (default runs/nano/dit/transformer)")
    parser.add_argument("--vae", type=Path, default=None,
                        help="pretrain_vae.py output, the decoder-fine-tuned VAE (default runs/nano/vae-decoder)")
    parser.add_argument("--from-pipeline", type=Path, default=None,
                        help="a DeepGen pipeline folder whose VLM, tokenizer, DiT and VAE are taken instead (its "
                             "bridge is not: a stage-1 output, such as deepgen/assets/deepgen-nano-stage1)")
    parser.add_argument("--out", type=Path, default=Path("runs/nano/base"))
    parser.add_argument("--scb-layers", type=int, nargs="+", default=None,
                        help="VLM hidden-state indices to stack (default: the nano preset's [5, 4, 3, 2, 1]; "
                             "the ablation uses 6, the last hidden state)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh bridge")
    args = parser.parse_args()

    config = get_preset("nano")
    if args.scb_layers is not None:
        config = dataclasses.replace(config, scb_layers=args.scb_layers)
    if args.from_pipeline is not None:
        given = [f"--{name}" for name in ("vlm", "dit", "vae") if getattr(args, name) is not None]
        if given:
            parser.error(f"--from-pipeline takes the VLM, DiT and VAE from {args.from_pipeline}; drop "
                         f"{', '.join(given)} or --from-pipeline.")
        if (args.from_pipeline / "vlm_lora").is_dir():
            parser.error(f"{args.from_pipeline} holds a VLM LoRA, so it is a stage-2 or stage-3 output whose VLM and "
                         "DiT are no longer the pretrained ones; take the parts from a stage-1 output such as "
                         "deepgen/assets/deepgen-nano-stage1.")
        source = DeepGenPipeline.from_pretrained(args.from_pipeline, torch_dtype=torch.float32)
        parts = {"vlm": source.vlm, "tokenizer": source.tokenizer, "transformer": source.transformer,
                 "vae": source.vae}
    else:
        vlm = args.vlm or Path("runs/nano/vlm")
        parts = {
            "vlm": Qwen2_5_VLForConditionalGeneration.from_pretrained(vlm, attn_implementation="sdpa"),
            "tokenizer": AutoTokenizer.from_pretrained(vlm),
            "transformer": KontextSD3Transformer2DModel.from_pretrained(args.dit or Path("runs/nano/dit/transformer")),
            "vae": AutoencoderKL.from_pretrained(args.vae or Path("runs/nano/vae-decoder")),
        }
    torch.manual_seed(args.seed)
    pipe = DeepGenPipeline(
        **{name: part.eval() if isinstance(part, torch.nn.Module) else part for name, part in parts.items()},
        scb=build_bridge(config).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(config.scheduler),
    )
    pipe.save_pretrained(args.out)
    print(f"saved {args.out} (scb_layers {config.scb_layers})")


if __name__ == "__main__":
    main()
