"""Warm end-to-end and per-stage time, peak memory and DiT throughput of DeepGen, per speed option.

For each mode (plain eager first, then the options of :mod:`deepgen.acceleration`) a fresh pipeline with the same
random weights (``from_config(preset, seed=0)``, no download) runs every case (task x size x batch): ``--warmup``
calls (their time is reported: compilation happens there), then ``--repeats`` timed calls. Stage boundaries are
marked without synchronising inside the denoising loop (CUDA events on GPU, read after the call): condition (VLM
+ SCB + reference VAE encode), denoise (all DiT steps), decode (VAE). Each mode is compared with eager in the
same process: time ratio, and how far its final latents move from eager's on the same seed (max / mean abs).
The timed calls cycle through prompts of three lengths, so the dynamo counters show recompiles across lengths.

    python benchmarks/bench_pipeline.py --preset tiny --size 64 --steps 4 --repeats 2               # CPU
    python benchmarks/bench_pipeline.py --preset deepgen-1.0 --task t2i edit --size 512 --steps 50 \
        --modes eager compile cache compile+cache fp8                                               # CUDA, bf16
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from deepgen import DeepGenPipeline
from deepgen.acceleration import AccelerationOptions, accelerate, compile_counters, count_cached_steps
from deepgen.config import get_preset
from deepgen.memory import PeakMemory, format_bytes
from deepgen.pipeline import default_dtype

PROMPTS = (
    "a red fox in the snow, watercolor",
    "a red fox sitting in deep fresh snow at dusk, watercolor, soft light",
    "a red fox sitting in deep fresh snow at dusk under a pine tree, watercolor on rough paper, soft warm light, "
    "muted colours, wide shot",
)
EDIT_PROMPT = "make the sky purple and add a small red boat"
# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) from the vendors' data sheets; --peak-tflops overrides.
DEVICE_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                      "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}


def mode_options(name: str, cache_threshold: float) -> AccelerationOptions:
    """A mode name -> its options: ``eager``, ``compile``, ``cudagraphs`` (compile, reduce-overhead), ``cache``,
    ``compile+cache``, ``int8`` / ``fp8`` (DiT + VLM), ``offload-model``, ``offload-group``."""
    modes = {
        "eager": AccelerationOptions(),
        "compile": AccelerationOptions(compile=True),
        "cudagraphs": AccelerationOptions(compile=True, compile_mode="reduce-overhead"),
        "cache": AccelerationOptions(cache_threshold=cache_threshold),
        "compile+cache": AccelerationOptions(compile=True, cache_threshold=cache_threshold),
        "int8": AccelerationOptions(quantize="int8-weight-only"),
        "fp8": AccelerationOptions(quantize="fp8"),
        "fp8+compile": AccelerationOptions(quantize="fp8", compile=True),
        "offload-model": AccelerationOptions(offload="model"),
        "offload-group": AccelerationOptions(offload="group"),
    }
    if name not in modes:
        raise ValueError(f"Unknown mode {name!r}; choose from {sorted(modes)}.")
    return modes[name]


def dit_flops(transformer_config: dict, image_tokens: int, target_tokens: int, text_tokens: int,
              rows: int) -> tuple[float, str]:
    """FLOPs of one DiT call (matmuls only; adaLN modulation is per sample and negligible) and the formula.

    ``image_tokens`` = target + Kontext reference tokens, ``text_tokens`` = condition length, ``rows`` = batch
    rows of the call (2 x images with CFG). Per layer: the image stream's linears are 12 D^2 per token (qkv 3, out
    1, MLP 8), dual-attention layers add 4 D^2; the text stream's are 12 D^2 except the last layer (context
    pre-only: its q/k/v only, 3 D^2); joint attention is 4 N^2 D (QK^T and AV), dual attention 4 N_img^2 D.
    """
    c = transformer_config
    d = c["num_attention_heads"] * c["attention_head_dim"]
    layers, dual = c["num_layers"], len(c.get("dual_attention_layers") or ())
    patch = c["patch_size"] ** 2 * c["in_channels"]
    n_img, n_txt = image_tokens, text_tokens
    n = n_img + n_txt
    linear = (layers * 12 + dual * 4) * d * d * n_img + ((layers - 1) * 12 + 3) * d * d * n_txt
    unpatch = c["patch_size"] ** 2 * c["out_channels"]
    embed = patch * d * n_img + c["joint_attention_dim"] * d * n_txt + d * unpatch * target_tokens
    attention = 2 * d * (layers * n * n + dual * n_img * n_img)
    flops = rows * (2 * (linear + embed) + 2 * attention)
    formula = (f"FLOP/step = rows x [2 x ((12L + 4L_dual) D^2 N_img + (12(L-1) + 3) D^2 N_txt + embeddings) "
               f"+ 4 D (L N^2 + L_dual N_img^2)], D={d}, L={layers}, L_dual={dual}, N_img={n_img}, N_txt={n_txt}, "
               f"N={n}, rows={rows} -> {flops / 1e12:.4g} TFLOP")
    return float(flops), formula


@dataclass
class Case:
    task: str  # "t2i" or "edit"
    size: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.task} {self.size}x{self.size} batch {self.batch}"


def parse_case(text: str) -> Case:
    """``"t2i:512"`` or ``"edit:1024:4"`` -> a :class:`Case`."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("t2i", "edit") or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"A case is TASK:SIZE[:BATCH] with TASK t2i or edit, e.g. t2i:512 or edit:512:2; "
                         f"got {text!r}.")
    return Case(parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else 1)


class StageClock:
    """Stage boundaries of one call without a sync in the loop: CUDA events on GPU, perf_counter elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        """``{stage: seconds}`` between consecutive marks, named by the later mark; ``total`` from first to last."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            span = lambda a, b: a.elapsed_time(b) / 1000  # noqa: E731
        else:
            span = lambda a, b: b - a  # noqa: E731
        out = {name: span(self.marks[i - 1][1], mark) for i, (name, mark) in enumerate(self.marks) if i}
        out["total"] = span(self.marks[0][1], self.marks[-1][1])
        return out


def source_image(size: int) -> Image.Image:
    """A deterministic smooth RGB image to edit."""
    y, x = np.mgrid[0:size, 0:size] / max(1, size - 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def timed_call(pipe: DeepGenPipeline, case: Case, prompt: str, steps: int, device: torch.device,
               shapes: dict) -> tuple[dict[str, float], torch.Tensor]:
    """One pipeline call; returns its stage seconds and final latents. ``shapes`` receives the DiT's inputs."""
    clock = StageClock(device)
    final: dict[str, torch.Tensor] = {}

    def first_dit_call(module: Any, args: Any, kwargs: dict) -> None:
        if not shapes.get("seen"):
            clock.mark("condition")
            hidden = kwargs["hidden_states"]
            refs = kwargs.get("reference_latents") or []
            patch = module.config.patch_size ** 2
            shapes.update(seen=True, rows=hidden.shape[0], text=kwargs["encoder_hidden_states"].shape[1],
                          target=hidden.shape[-2] * hidden.shape[-1] // patch,
                          image=(hidden.shape[-2] * hidden.shape[-1] + sum(r.shape[-2] * r.shape[-1] for r in refs))
                          // patch)

    def on_step_end(_pipe: Any, i: int, _t: Any, tensors: dict) -> dict:
        if i == steps - 1:
            clock.mark("denoise")
            final["latents"] = tensors["latents"]
        return tensors

    handle = pipe.transformer.register_forward_pre_hook(first_dit_call, with_kwargs=True)
    shapes["seen"] = False
    image = source_image(case.size) if case.task == "edit" else None
    text = EDIT_PROMPT if case.task == "edit" else prompt
    try:
        clock.mark("start")
        pipe([text] * case.batch if case.task == "edit" else [prompt] * case.batch, image=image, height=case.size,
             width=case.size, num_inference_steps=steps, guidance_scale=4.0, output_type="pt",
             generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=on_step_end)
        clock.mark("decode")
    finally:
        handle.remove()
    return clock.seconds(), final["latents"].float().cpu()


def build(preset: str, options: AccelerationOptions, device: torch.device, dtype: torch.dtype) -> DeepGenPipeline:
    pipe = DeepGenPipeline.from_config(preset, seed=0, torch_dtype=dtype, device=device)
    pipe.set_progress_bar_config(disable=True)
    if options.offload is not None:
        pipe.to("cpu")
    accelerate(pipe, options, device=device)
    return pipe


def run_mode(preset: str, mode: str, options: AccelerationOptions, cases: list[Case], steps: int, warmup: int,
             repeats: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Every case under one mode: warm-up then timed calls; one record per case."""
    tic = time.perf_counter()
    pipe = build(preset, options, device, dtype)
    setup = time.perf_counter() - tic
    records = []
    for case in cases:
        shapes: dict = {}
        tic = time.perf_counter()
        for _ in range(warmup):
            timed_call(pipe, case, PROMPTS[0], steps, device, shapes)
        warm_seconds = time.perf_counter() - tic
        before = compile_counters()
        runs = []
        with PeakMemory(device) as peak, count_cached_steps(pipe) as cache:
            for k in range(repeats):
                seconds, latents = timed_call(pipe, case, PROMPTS[(k + 1) % len(PROMPTS)], steps, device, shapes)
                runs.append(seconds)
        after = compile_counters()
        flops, formula = dit_flops(dict(pipe.transformer.config), shapes["image"], shapes["target"], shapes["text"],
                                   shapes["rows"])
        median = {stage: statistics.median(r[stage] for r in runs) for stage in runs[0]}
        records.append({
            "mode": mode, "options": options.to_record(), "case": case.name, "task": case.task, "size": case.size,
            "batch": case.batch, "steps": steps, "repeats": repeats, "setup_s": setup, "warmup_s": warm_seconds,
            "total_median_s": median["total"], "total_min_s": min(r["total"] for r in runs),
            "stages_median_s": {k: v for k, v in median.items() if k != "total"},
            "dit_step_ms": 1000 * median["denoise"] / steps, "dit_flop_per_step": flops, "flop_formula": formula,
            "dit_tflops": flops * steps / median["denoise"] / 1e12,
            "peak_bytes": peak.peak_bytes, "peak_kind": peak.kind,
            "dit_calls": cache.calls, "dit_calls_skipped": cache.skipped,
            "graphs_compiled": after["graphs"] - before["graphs"],
            "recompiles": after["recompiles"] - before["recompiles"],
            "prompt": PROMPTS[repeats % len(PROMPTS)], "latents": latents,
        })
        setup = 0.0
    del pipe
    if options.compile:
        torch._dynamo.reset()  # drop the compiled graphs, which hold on to this pipeline's weights
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def compare_to_eager(records: list[dict]) -> None:
    """Add ``speedup`` and latent differences against the eager record of the same case (same seed and prompt)."""
    eager = {r["case"]: r for r in records if r["mode"] == "eager"}
    for r in records:
        base = eager.get(r["case"])
        if base is None:
            continue
        r["speedup"] = base["total_median_s"] / r["total_median_s"]
        r["dit_speedup"] = base["dit_step_ms"] / r["dit_step_ms"]
        diff = (r["latents"] - base["latents"]).abs()
        r["latent_max_diff"], r["latent_mean_diff"] = float(diff.max()), float(diff.mean())


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def peak_tflops(device: torch.device, override: Optional[float]) -> Optional[float]:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DEVICE_PEAK_TFLOPS.items() if key in name), None)


def report(records: list[dict], header: str, peak: Optional[float]) -> str:
    """Markdown: one table per case, one row per mode, then the FLOP formulas."""
    lines = [header, ""]
    for case in dict.fromkeys(r["case"] for r in records):
        rows = [r for r in records if r["case"] == case]
        lines += [f"### {case}, {rows[0]['steps']} steps, CFG 4, median / min of {rows[0]['repeats']} warm runs", "",
                  "| mode | total median (s) | min (s) | vs eager | condition (ms) | denoise (ms) | decode (ms) | "
                  "DiT step (ms) | DiT TFLOP/s | of peak | peak memory | DiT calls skipped | latent diff max / mean "
                  "| graphs / recompiles | setup + warm-up (s) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                  "| ---: |"]
        for r in rows:
            stages = r["stages_median_s"]
            fraction = f"{r['dit_tflops'] / peak:.0%}" if peak else "n/a"
            diff = f"{r['latent_max_diff']:.2e} / {r['latent_mean_diff']:.2e}" if "latent_max_diff" in r else "n/a"
            speed = f"{r['speedup']:.2f}x" if "speedup" in r else "n/a"
            lines.append(
                f"| {r['mode']} | {r['total_median_s']:.3f} | {r['total_min_s']:.3f} | {speed} | "
                f"{1000 * stages['condition']:.1f} | {1000 * stages['denoise']:.1f} | {1000 * stages['decode']:.1f} | "
                f"{r['dit_step_ms']:.2f} | {r['dit_tflops']:.3g} | {fraction} | {format_bytes(r['peak_bytes'])} | "
                f"{r['dit_calls_skipped']}/{r['dit_calls']} | {diff} | {r['graphs_compiled']} / {r['recompiles']} | "
                f"{r['setup_s']:.1f} + {r['warmup_s']:.1f} |")
        lines += ["", f"DiT FLOPs: {rows[0]['flop_formula']}", ""]
    kind = records[0]["peak_kind"] if records else ""
    what = "CUDA max allocated (weights included)" if kind == "cuda_max_allocated" else "process RSS"
    lines.append(f"Peak memory: {what} over the timed runs. Device peak used for 'of peak': {peak or 'unknown'} "
                 "TFLOP/s (dense bf16).")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--task", nargs="+", choices=("t2i", "edit"), default=["t2i"])
    parser.add_argument("--size", type=int, nargs="+", default=[64])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--case", nargs="+", default=None, metavar="TASK:SIZE[:BATCH]",
                        help="explicit cases (e.g. t2i:512 edit:512 t2i:1024 t2i:512:4) instead of the product of "
                             "--task, --size and --batch")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["eager"], help="eager is always run first")
    parser.add_argument("--cache-threshold", type=float, default=None,
                        help="First Block Cache threshold of the cache modes (default: deepgen's default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device dense bf16 peak, if not known")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--json", type=Path, default=None, help="write the records (no latents) here")
    args = parser.parse_args(argv)
    from deepgen.acceleration import DEFAULT_CACHE_THRESHOLD

    device = torch.device(args.device)
    dtype = default_dtype(device)
    threshold = args.cache_threshold if args.cache_threshold is not None else DEFAULT_CACHE_THRESHOLD
    modes = ["eager"] + [m for m in args.modes if m != "eager"]
    options = {mode: mode_options(mode, threshold) for mode in modes}  # validates names before any work
    cases = [parse_case(text) for text in args.case] if args.case else \
        [Case(task, size, batch) for task in args.task for size in args.size for batch in args.batch]
    get_preset(args.preset)
    records: list[dict] = []
    for mode in modes:
        try:
            records += run_mode(args.preset, mode, options[mode], cases, args.steps, args.warmup, args.repeats,
                                device, dtype)
        except (ValueError, ImportError, RuntimeError) as error:
            print(f"mode {mode}: skipped ({type(error).__name__}: {error})", file=sys.stderr, flush=True)
    compare_to_eager(records)
    header = (f"preset {args.preset}, {dtype}, {device} ({device_description(device)}), torch {torch.__version__}, "
              f"cache threshold {threshold}")
    text = report(records, header, peak_tflops(device, args.peak_tflops))
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "latents"} for r in records],
                                        indent=2) + "\n")
    return 0 if records else 1


if __name__ == "__main__":
    sys.exit(main())
