"""The flow-matching training loop shared by stage 1 (alignment) and stage 2 (joint SFT).

The two stages differ only in their freeze/LoRA schedule, which is config (``train_connector``,
``train_transformer``, ``vlm_lora``, ...); the loop below is the same for both and reads top to bottom: model and
schedule, data, optimiser, resume, train, save.
"""

from __future__ import annotations

import logging

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from . import trainer
from .config import TrainConfig
from .data import build_stream

logger = logging.getLogger(__name__)


def run_flow_matching_stage(config: TrainConfig, stage: str) -> str:
    """Train with the flow-matching loss as ``config`` says; returns the folder of the final pipeline.

    Writes ``output_dir/checkpoints/checkpoint-<step>`` (resumable: a rerun continues from the newest one),
    ``output_dir/loss_log.jsonl``, ``output_dir/train_config.json`` and ``output_dir/final``.
    """
    accelerator = trainer.build_accelerator(config)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    trainer.write_run_config(config, accelerator)
    set_seed(config.seed)  # LoRA initialisation and anything else drawn from the global generators

    # 1. Model, and the stage's freeze/LoRA schedule (config).
    pipe = trainer.load_pipeline(config.model)
    trainable = trainer.apply_training_schedule(pipe, config)
    if accelerator.mixed_precision != "no" and config.cast_frozen_weights:
        trainer.cast_frozen_weights(pipe, trainer.mixed_precision_dtype(accelerator))
    logger.info("Training %d tensors (%d weights).", len(trainable), sum(p.numel() for _, p in trainable))

    # 2. Data: this process's shard of the weighted mixture, in homogeneous text-to-image or edit batches.
    stream = build_stream(config.data, config.batch_size, config.seed, accelerator.process_index,
                          accelerator.num_processes)

    # 3. Optimiser, warm-up + cosine, EMA; accelerate wraps the one forward (VLM -> SCB -> DiT).
    optimizer = trainer.build_optimizer([p for _, p in trainable], config.optim)
    lr_scheduler = trainer.build_lr_scheduler(optimizer, config, accelerator.num_processes)
    model, optimizer, lr_scheduler = accelerator.prepare(trainer.TrainingModule(pipe.model), optimizer, lr_scheduler)
    pipe.vae.to(accelerator.device)
    ema = trainer.build_ema(trainable, config.ema)
    if ema is not None:
        ema.to(accelerator.device)
    noise_scheduler = trainer.training_scheduler(pipe)

    # 4. Resume (a fresh run starts at 0).
    checkpoints = trainer.CheckpointManager(config.output_dir, accelerator, trainable, config.keep_checkpoints)
    step = checkpoints.resume(config.resume, stream, ema)
    loss_log = trainer.LossLog(config.output_dir, accelerator, step)
    progress = tqdm(total=config.max_steps, initial=step, desc=stage, disable=not accelerator.is_local_main_process)

    # 5. Train: each optimizer step is gradient_accumulation_steps micro-batches.
    while step < config.max_steps:
        losses = []
        for micro in range(config.gradient_accumulation_steps):
            batch = stream.next_batch()
            generator = trainer.step_generator(config.seed, accelerator.process_index,
                                               step * config.gradient_accumulation_steps + micro)
            with accelerator.accumulate(model):
                loss = trainer.flow_matching_loss_on_batch(pipe, model, batch, noise_scheduler, config.loss,
                                                           generator, accelerator)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and config.optim.max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_([p for _, p in trainable], config.optim.max_grad_norm)
                lr = lr_scheduler.get_last_lr()[0]  # the rate this step uses
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        step += 1
        if ema is not None:
            ema.step([p for _, p in trainable])
        progress.update(1)

        if step % config.log_every == 0 or step == config.max_steps:
            mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            loss_log.log({"step": step, "loss": mean_loss, "lr": lr,
                          "grad_norm": None if grad_norm is None else float(grad_norm), **stream.stats})
        if step == config.max_steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
            checkpoints.save(step, stream, ema, extra={"stage": stage})
    progress.close()

    # 6. The trained pipeline, loadable with DeepGenPipeline.from_pretrained.
    final = config.output_dir
    if config.save_final:
        final = str(trainer.save_final(pipe, accelerator, config.output_dir, trainable, ema,
                                       config.ema.use_for_final, model))
    accelerator.end_training()
    return final

