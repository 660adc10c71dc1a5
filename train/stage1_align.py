"""Stage 1, alignment pre-training: VLM and DiT frozen; think tokens, SCB projectors and connector trained.

The authors' recipe (ARCHITECTURE.md, Training): flow matching on 512² text-to-image pairs and edit triplets,
AdamW lr 1e-4, betas (0.9, 0.95), wd 0.05, clip 1.0, 1% warm-up then cosine, bf16, 200k steps.

    accelerate launch train/stage1_align.py --config train/configs/deepgen-1.0-stage1.yaml [key.sub=value ...]
    python train/stage1_align.py --config train/configs/tiny-stage1.yaml output_dir=runs/tiny-stage1

Writes ``output_dir/checkpoints/checkpoint-<step>`` (resumable; a rerun with the same command continues from the
newest one), ``output_dir/loss_log.jsonl``, ``output_dir/train_config.json`` and ``output_dir/final`` (a
``DeepGenPipeline.save_pretrained`` folder).
"""

from __future__ import annotations

from typing import Optional, Sequence

from deepgen.training.config import TrainConfig, parse_args
from deepgen.training.sft import run_flow_matching_stage


def check_stage1_schedule(config: TrainConfig) -> None:
    """Stage 1 trains the bridge only; anything touching the VLM or the DiT belongs to stage 2."""
    if config.train_transformer or config.train_vlm or config.vlm_lora or config.transformer_lora:
        raise ValueError("Stage 1 keeps the VLM and the DiT frozen: set train_transformer=false, train_vlm=false, "
                         "vlm_lora=null, transformer_lora=null, or use train/stage2_sft.py.")
    if not config.train_connector:
        raise ValueError("Stage 1 trains the connector (think tokens, projectors, SCB): set train_connector=true.")


def main(argv: Optional[Sequence[str]] = None) -> str:
    config = parse_args(argv, description=__doc__.splitlines()[0])
    check_stage1_schedule(config)
    return run_flow_matching_stage(config, stage="stage1_align")


if __name__ == "__main__":
    main()
