"""Fidelity of the full-size model's numerics on a GPU (docs/fidelity.md, "GPU measurements").

Full-size ``deepgen-1.0`` architecture with random weights (seeded; the SCB output heads are randomised, since
their zero initialisation would make every comparison vacuous), in bf16 on the GPU. One left-padded batch of two
prompts of different lengths plus one edit. It compares:

1. attention kernels: SCB outputs (seq, pooled) and final latents with ``sdpa`` vs ``eager`` attention in the VLM
   and the connector (pad rows stay unmasked in the connector, as in the reference);
2. latent precision: our fp32 latents vs the reference's bf16 ones (noise drawn in bf16, latents rounded to bf16
   after every Euler step), both with sdpa.

Installs nothing and downloads nothing; writes ``fidelity_gpu.json`` under ``--out`` (default ``$OUT``) and prints
a Markdown table.

    python benchmarks/fidelity_gpu.py                                   # GPU: deepgen-1.0, bf16, 50 steps
    python benchmarks/fidelity_gpu.py --preset tiny --device cpu --dtype float32 --steps 2 --size 64   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from deepgen import DeepGenPipeline

PROMPTS = ["a red apple", "a racoon holding a shiny red apple over its head, in a sunlit kitchen, photorealistic"]
EDIT_PROMPT = "make the apple green"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def build(preset: str, device: str, dtype: torch.dtype, seed: int) -> DeepGenPipeline:
    pipe = DeepGenPipeline.from_config(preset, seed=seed, torch_dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in (pipe.scb.projector_2, pipe.scb.projector_3):
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator).to(head.weight) * 0.02)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_attention(pipe: DeepGenPipeline, attn_implementation: str) -> None:
    pipe.vlm.set_attn_implementation(attn_implementation)
    pipe.scb.set_attn_implementation(attn_implementation)


def source_image(size: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def run(pipe: DeepGenPipeline, size: int, steps: int, seed: int, bf16_latents: bool) -> dict[str, torch.Tensor]:
    """SCB outputs and final latents of the text-to-image batch and of the edit."""
    out = {}
    image = source_image(size)
    cases = {"t2i": (PROMPTS, None), "edit": ([EDIT_PROMPT], image)}
    for name, (prompts, reference) in cases.items():
        references = pipe.prepare_images(reference, len(prompts), size, size)[0] if reference is not None else None
        seq, pooled = pipe.encode_prompt(prompts, [""] * len(prompts), references)
        out[f"{name}/scb_seq"], out[f"{name}/scb_pooled"] = seq.float().cpu(), pooled.float().cpu()
        shape = (len(prompts), pipe.transformer.config.in_channels, size // pipe.vae_scale_factor,
                 size // pipe.vae_scale_factor)
        generator = torch.Generator(pipe._execution_device).manual_seed(seed)
        kwargs = {}
        if bf16_latents:
            # The reference: noise drawn in bf16, latents rounded to bf16 after every step.
            noise = randn_tensor(shape, generator=generator, device=pipe._execution_device, dtype=torch.bfloat16)
            kwargs["latents"] = noise.float()
            kwargs["callback_on_step_end"] = lambda p, i, t, kw: {"latents": kw["latents"].to(torch.bfloat16).float()}
        else:
            kwargs["latents"] = randn_tensor(shape, generator=generator, device=pipe._execution_device,
                                             dtype=torch.float32)
        latents = pipe(prompts, image=reference, height=size, width=size, num_inference_steps=steps,
                       guidance_scale=4.0, image_generator=torch.Generator(pipe._execution_device).manual_seed(seed),
                       output_type="latent", **kwargs).images
        out[f"{name}/latents"] = latents.float().cpu()
    return out


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    rows = {}
    for key in a:
        diff = (a[key] - b[key]).abs()
        rows[key] = {"max_abs": float(diff.max()), "rel_l2": float(diff.norm() / a[key].norm().clamp(min=1e-12)),
                     "ref_abs_max": float(a[key].abs().max())}
    return rows


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="deepgen-1.0")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args(argv)

    pipe = build(args.preset, args.device, DTYPES[args.dtype], args.seed)
    set_attention(pipe, "sdpa")
    sdpa = run(pipe, args.size, args.steps, args.seed, bf16_latents=False)
    reference_precision = run(pipe, args.size, args.steps, args.seed, bf16_latents=True)
    set_attention(pipe, "eager")
    eager = run(pipe, args.size, args.steps, args.seed, bf16_latents=False)
    result = {
        "settings": {**{k: str(v) for k, v in vars(args).items()},
                     "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                     "torch": torch.__version__},
        "sdpa_vs_eager": compare(sdpa, eager),
        "fp32_vs_bf16_latents": {k: v for k, v in compare(sdpa, reference_precision).items() if "latents" in k},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fidelity_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| comparison | tensor | max abs diff | relative L2 | max abs value |\n|---|---|---|---|---|")
    for comparison in ("sdpa_vs_eager", "fp32_vs_bf16_latents"):
        for key, row in result[comparison].items():
            print(f"| {comparison} | {key} | {row['max_abs']:.3g} | {row['rel_l2']:.3g} | {row['ref_abs_max']:.3g} |")
    return result


if __name__ == "__main__":
    main()
