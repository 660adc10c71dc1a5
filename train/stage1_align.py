"""Stage 1, alignment pre-training: VLM and DiT frozen; think tokens, SCB projectors and connector trained.

The authors' recipe (ARCHITECTURE.md, Training): flow matching on 512² text-to-image pairs and edit triplets,
AdamW lr 1e-4, betas (0.9, 0.95), wd 0.05, clip 1.0, 1% warm-up then cosine, bf16, 200k steps.

    accelerate launch train/stage1_align.py --config train/configs/deepgen-1.0-stage1.yaml [key.sub=value ...]
    python train/stage1_align.py --config train/configs/tiny-stage1.yaml output_dir=runs/tiny-stage1

Writes ``output_dir/checkpoints/checkpoint-<step>`` (resumable; a rerun with the same command continues from the
newest one), ``output_dir/loss_log.jsonl``, ``output_dir/train_config.json`` and ``output_dir/final`` (a
``DeepGenPipeline.save_pretrained`` folder).

This file holds the flow-matching loop (:func:`train_flow_matching`); stage 2 (``train/stage2_sft.py``) runs the
same loop with its own freeze/LoRA schedule, which is config. Shared plumbing is ``deepgen.training.trainer``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from accelerate.utils import set_seed

from deepgen.training import trainer
from deepgen.training.config import TrainConfig, parse_args
from deepgen.training.data import MixedBatchStream, build_stream
from deepgen.training.seeding import step_seed


def check_stage1_schedule(config: TrainConfig) -> None:
    """Stage 1 trains the bridge only; anything touching the VLM or the DiT belongs to stage 2."""
    if config.train_transformer or config.train_vlm or config.vlm_lora or config.transformer_lora:
        raise ValueError("Stage 1 keeps the VLM and the DiT frozen: set train_transformer=false, train_vlm=false, "
                         "vlm_lora=null, transformer_lora=null, or use train/stage2_sft.py.")
    if not config.train_connector:
        raise ValueError("Stage 1 trains the connector (think tokens, projectors, SCB): set train_connector=true.")


# --- one optimizer step -------------------------------------------------------------------------------------------


def train_step(run: trainer.Run, stream: MixedBatchStream, noise_scheduler) -> dict[str, float]:
    """One optimizer step of ``gradient_accumulation_steps`` micro-batches: batch, loss, backward, step.

    Returns what the log needs: the mean loss over micro-batches (this process), the rate the step used and the
    gradient norm (None without clipping).
    """
    config, accelerator = run.config, run.accelerator
    losses, grad_norm, lr = [], None, 0.0
    for micro in range(config.gradient_accumulation_steps):
        batch = stream.next_batch()
        micro_step = run.step * config.gradient_accumulation_steps + micro
        generator = torch.Generator().manual_seed(step_seed(config.seed, accelerator.process_index, micro_step))
        with accelerator.accumulate(run.model):
            loss = trainer.flow_matching_loss_on_batch(run.pipe, run.model, batch, noise_scheduler, config.loss,
                                                       generator, accelerator)
            accelerator.backward(loss)
            lr = run.lr_scheduler.get_last_lr()[0]  # the rate this step uses
            grad_norm = run.optimizer_step()
        losses.append(loss.detach())
    return {"loss": torch.stack(losses).mean(), "lr": lr, "grad_norm": grad_norm}


def log_record(run: trainer.Run, stream: MixedBatchStream, result: dict[str, float]) -> dict[str, float]:
    """The step's ``loss_log.jsonl`` line: loss averaged over processes, lr, gradient norm, data counters."""
    loss = run.accelerator.reduce(result["loss"], reduction="mean").item()
    run.progress.set_postfix(loss=f"{loss:.4f}")
    return {"loss": loss, "lr": result["lr"], "grad_norm": result["grad_norm"], **stream.stats}


# --- the loop -----------------------------------------------------------------------------------------------------


def train_flow_matching(config: TrainConfig, stage: str) -> str:
    """Train with the flow-matching loss as ``config`` says (stages 1 and 2); returns the final pipeline's folder.

    Writes ``output_dir/checkpoints/checkpoint-<step>`` (resumable: a rerun continues from the newest one),
    ``output_dir/loss_log.jsonl``, ``output_dir/train_config.json`` and ``output_dir/final``.
    """
    accelerator = trainer.start_run(config)
    set_seed(config.seed)  # LoRA initialisation and anything else drawn from the global generators

    # 1. Model, and the stage's freeze/LoRA schedule (config).
    pipe = trainer.load_pipeline(config.model)
    trainable = trainer.prepare_trainable(pipe, config, accelerator)

    # 2. Data: this process's shard of the weighted mixture, in homogeneous text-to-image or edit batches.
    stream = build_stream(config.data, config.batch_size, config.seed, accelerator.process_index,
                          accelerator.num_processes)

    # 3. Optimiser, schedule, EMA, resume; accelerate wraps the one forward (VLM -> SCB -> DiT).
    pipe.vae.to(accelerator.device)
    run = trainer.prepare_run(config, accelerator, pipe, trainable, trainer.TrainingModule(pipe.model), stream, stage)
    noise_scheduler = trainer.training_scheduler(pipe)

    # 4. Train: each step is gradient_accumulation_steps micro-batches, then log and checkpoint when due.
    while not run.done:
        result = train_step(run, stream, noise_scheduler)
        run.end_step(lambda: log_record(run, stream, result))

    # 5. The trained pipeline, loadable with DeepGenPipeline.from_pretrained.
    return run.finish()


def main(argv: Optional[Sequence[str]] = None) -> str:
    config = parse_args(argv, description=__doc__.splitlines()[0])
    check_stage1_schedule(config)
    return train_flow_matching(config, stage="stage1_align")


if __name__ == "__main__":
    main()
