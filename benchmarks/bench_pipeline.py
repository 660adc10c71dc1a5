"""Per-stage time and peak memory of DeepGen inference.

Prints one table row per stage (VLM encode, SCB, each denoising step, VAE decode) for a preset with random
weights (no download), at a given size and step count. Peak memory is CUDA's allocator peak on GPU, and the
process's peak resident set during the stage (sampled every 10 ms) on CPU.

    python benchmarks/bench_pipeline.py --preset tiny --size 256 --steps 4             # CPU
    python benchmarks/bench_pipeline.py --preset deepgen-1.0 --size 512 --steps 50     # CUDA, bf16
"""

from __future__ import annotations

import argparse
import platform
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from deepgen import DeepGenPipeline
from deepgen.memory import PeakMemory, format_bytes
from deepgen.pipeline import default_dtype
from deepgen.vlm import vlm_hidden_states


class StageMeter:
    """Times each stage and records its peak memory (:class:`deepgen.memory.PeakMemory`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[tuple[str, float, Optional[int]]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        with PeakMemory(self.device) as peak:
            start = time.perf_counter()
            yield
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        self.rows.append((name, elapsed, peak.peak_bytes))

    def table(self) -> str:
        unit = "peak allocated" if self.device.type == "cuda" else "peak process RSS"
        lines = [f"| stage | time (ms) | {unit} |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {1000 * t:.1f} | {format_bytes(m)} |" for name, t, m in self.rows]
        steps = [t for name, t, _ in self.rows if name.startswith("step ")]
        total = sum(t for _, t, _ in self.rows)
        lines.append(f"| denoising mean per step | {1000 * sum(steps) / max(1, len(steps)):.1f} | |")
        lines.append(f"| total | {1000 * total:.1f} | |")
        return "\n".join(lines)


@torch.no_grad()
def run(preset: str, size: int, steps: int, device: torch.device, dtype: torch.dtype, edit: bool) -> StageMeter:
    pipe = DeepGenPipeline.from_config(preset, seed=0, torch_dtype=dtype, device=device)
    pipe.set_progress_bar_config(disable=True)
    meter = StageMeter(device)
    generator = torch.Generator("cpu").manual_seed(0)
    source = [[torch.rand(3, size, size) * 2 - 1]] if edit else None
    inputs = pipe.processor(["a red fox in the snow, watercolor", ""], (source or [[]]) * 2).to(device)
    model = pipe.model
    with meter.stage("VLM encode"):
        hidden_states, _ = vlm_hidden_states(pipe.vlm, inputs, pipe.connector.meta_queries)
    with meter.stage("SCB (projectors + connector)"):
        seq, pooled = pipe.connector(hidden_states)
    references = [torch.cat([pipe.encode_images(source[0], generator)] * 2)] if edit else []
    latents = torch.randn(1, pipe.transformer.config.in_channels, size // pipe.vae_scale_factor,
                          size // pipe.vae_scale_factor, generator=generator).to(device)
    pipe.scheduler.set_timesteps(steps, device=device, mu=pipe.scheduler_mu(size, size))
    context, pooled_context = torch.cat([seq[1:], seq[:1]]), torch.cat([pooled[1:], pooled[:1]])
    for i, t in enumerate(pipe.scheduler.timesteps):
        with meter.stage(f"step {i}"):
            velocity = model(torch.cat([latents, latents]), t.expand(2), context, pooled_context, references).float()
            v_uncond, v_cond = velocity.chunk(2)
            latents = pipe.scheduler.step(v_uncond + 4.0 * (v_cond - v_uncond), t, latents, return_dict=False)[0]
    with meter.stage("VAE decode"):
        pipe.decode_latents(latents)
    return meter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--edit", action="store_true", help="include one reference image (Kontext tokens)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = default_dtype(device)
    meter = run(args.preset, args.size, args.steps, device, dtype, args.edit)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"preset {args.preset}, {args.size}x{args.size}, {args.steps} steps, CFG 4.0, "
          f"{'edit (1 reference)' if args.edit else 'text-to-image'}, {dtype}, {device} ({hardware})")
    print(meter.table())


if __name__ == "__main__":
    main()
