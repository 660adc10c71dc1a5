"""Stage 2, joint supervised fine-tuning: DiT unfrozen, LoRA on the VLM (peft), connector still trained.

The authors' recipe (ARCHITECTURE.md, Training): flow matching on a mixture of generation, editing, reasoning
and text-rendering data, starting from the stage-1 weights; LoRA r 64, alpha 128 on every Linear and Embedding of
the VLM; AdamW lr 5e-5, betas (0.9, 0.95), wd 0.05, clip 1.0, 1% warm-up then cosine, bf16, 400k steps.

    accelerate launch train/stage2_sft.py --config train/configs/deepgen-1.0-stage2.yaml \
        model.pretrained=runs/deepgen-1.0-stage1/final
    python train/stage2_sft.py --config train/configs/tiny-stage2.yaml output_dir=runs/tiny-stage2

Writes ``output_dir/checkpoints/checkpoint-<step>`` (resumable; a rerun with the same command continues from the
newest one), ``output_dir/loss_log.jsonl``, ``output_dir/train_config.json`` and ``output_dir/final`` (a
``DeepGenPipeline.save_pretrained`` folder). The loop is stage 1's (``train/stage1_align.py``), run with this
stage's freeze/LoRA schedule.
"""

from __future__ import annotations

from typing import Optional, Sequence

from deepgen.training.config import TrainConfig, parse_args
from stage1_align import train_flow_matching  # the flow-matching loop, shared with stage 1 (train/)


def check_stage2_schedule(config: TrainConfig) -> None:
    """Stage 2 unfreezes the DiT (whole, or a LoRA on it); training only the bridge is stage 1."""
    if not (config.train_transformer or config.transformer_lora):
        raise ValueError("Stage 2 trains the DiT: set train_transformer=true (the authors' recipe) or give a "
                         "transformer_lora; to train only the connector use train/stage1_align.py.")


def main(argv: Optional[Sequence[str]] = None) -> str:
    config = parse_args(argv, description=__doc__.splitlines()[0])
    check_stage2_schedule(config)
    return train_flow_matching(config, stage="stage2_sft")


if __name__ == "__main__":
    main()
