"""Plot stage-3 reward curves (one panel per reward) from one or more runs' jsonl logs.

    python train/plot_rewards.py runs/nano-rl/log.jsonl runs/nano-rl-no-reg/log.jsonl \
        --labels "MR-GRPO" "no KL, no SFT aux" --out runs/nano-rl/rewards.png

Every ``reward/<name>`` key of the log (the per-reward means of each step's rollouts, as written by
``train/stage3_grpo.py``) gets a panel; curves are smoothed with a trailing moving average (``--smooth``), the raw
values are drawn faintly behind them.

``--samples-of`` draws a grid instead: the same held-out shape-world prompts (one column each, fixed seeds) by
several nano pipelines (one row each), to look for reward-hacking artefacts:

    python train/plot_rewards.py --samples-of deepgen/assets/deepgen-nano-sft runs/nano-rl/final \
        runs/nano-rl-noreg/final --labels SFT MR-GRPO "no KL/SFT" --out runs/nano-rl/samples.png
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Optional

REWARD_PREFIX = "reward/"


def read_log(path: Path, max_step: Optional[int] = None) -> list[dict]:
    """The log's rows that carry rewards, in step order (a resumed run may repeat steps: the last one wins), up to
    ``max_step`` if given (e.g. the first 60 steps of a run that went on to 120)."""
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if "step" in row and any(key.startswith(REWARD_PREFIX) for key in row):
                if max_step is None or int(row["step"]) <= max_step:
                    rows[int(row["step"])] = row
    if not rows:
        raise ValueError(f"{path} has no rows with '{REWARD_PREFIX}*' keys; is it a stage-3 log?")
    return [rows[step] for step in sorted(rows)]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(logs: list[Path], labels: list[str], out: Path, smooth: int = 5, title: str = "",
         max_step: Optional[int] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    runs = [read_log(path, max_step) for path in logs]
    names = sorted({key[len(REWARD_PREFIX):] for rows in runs for row in rows for key in row
                    if key.startswith(REWARD_PREFIX)})
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for axis, name in zip(axes[0], names):
        for index, (rows, label) in enumerate(zip(runs, labels)):
            points = [(row["step"], row[REWARD_PREFIX + name]) for row in rows if REWARD_PREFIX + name in row]
            if not points:
                continue
            steps, values = zip(*points)
            colour = f"C{index}"
            axis.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            axis.plot(steps, moving_average(list(values), smooth), color=colour, label=label, linewidth=1.6)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean reward of the step's rollouts")
    axes[0][-1].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)


def plot_samples(models: list[str], labels: list[str], out: Path, per_capability: int = 2, steps: int = 12,
                 guidance_scale: float = 3.0, seed: int = 0) -> None:
    """Grid of each model's outputs on the first ``per_capability`` eval-split samples of every capability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from deepgen import DeepGenPipeline
    from deepgen.nano import world

    samples = world.dataset("eval", per_capability * len(world.CAPABILITIES), seed=0)
    samples.sort(key=lambda s: world.CAPABILITIES.index(s.capability))
    rows = [("source", [s.source_image() for s in samples])] if any(s.source is not None for s in samples) else []
    for model, label in zip(models, labels):
        pipe = DeepGenPipeline.from_pretrained(model, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        rows.append((label, [pipe(s.prompt, image=s.source_image(), height=64, width=64, num_inference_steps=steps,
                                  guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed + i)
                                  ).images[0] for i, s in enumerate(samples)]))
    figure, axes = plt.subplots(len(rows), len(samples), figsize=(1.3 * len(samples), 1.45 * len(rows) + 0.6),
                                squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images):
            axis = axes[r][c]
            axis.set_xticks([]), axis.set_yticks([])
            if image is not None:
                axis.imshow(image)
            else:
                axis.axis("off")
            if c == 0:
                axis.set_ylabel(label, fontsize=8)
            if r == 0:
                axis.set_title(textwrap.fill(samples[c].prompt, 24), fontsize=5)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=150)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="*", type=Path, help="jsonl logs of stage-3 runs")
    parser.add_argument("--samples-of", nargs="+", metavar="MODEL", help="draw a sample grid of these pipelines")
    parser.add_argument("--labels", nargs="+", help="one label per log or model (default: the folder name)")
    parser.add_argument("--out", type=Path, default=Path("rewards.png"), help="PNG to write")
    parser.add_argument("--smooth", type=int, default=5, help="moving-average window in steps (default 5)")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument("--max-step", type=int, default=None, help="plot steps up to this one only")
    args = parser.parse_args(argv)
    if bool(args.logs) == bool(args.samples_of):
        parser.error("give either jsonl logs (reward curves) or --samples-of MODEL ... (a sample grid)")
    if args.samples_of:
        labels = args.labels or [Path(model).name for model in args.samples_of]
        if len(labels) != len(args.samples_of):
            parser.error(f"got {len(args.samples_of)} models but {len(labels)} labels; give one label per model")
        plot_samples(args.samples_of, labels, args.out)
        print(f"wrote {args.out}")
        return
    labels = args.labels or [path.parent.name for path in args.logs]
    if len(labels) != len(args.logs):
        parser.error(f"got {len(args.logs)} logs but {len(labels)} labels; give one label per log")
    if args.smooth < 1:
        parser.error("--smooth must be >= 1")
    plot(args.logs, labels, args.out, args.smooth, args.title, args.max_step)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
