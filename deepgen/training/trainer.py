"""Shared plumbing of the three training stages: accelerate, the freeze/LoRA schedule, optimiser, logs, saving.

Each stage script owns its loop (``train/stage1_align.py`` holds the flow-matching loop that stage 2 reuses,
``train/stage3_grpo.py`` the MR-GRPO loop); everything a loop needs besides its own objective lives here:

- :func:`start_run`: the accelerator (mixed precision, gradient accumulation; DDP/FSDP/DeepSpeed come from
  ``accelerate launch``), logging and ``train_config.json``.
- :func:`load_pipeline` + :func:`apply_training_schedule`: start weights, then ``requires_grad``/LoRA/train-eval
  modes from the config; returns exactly the trainable parameters.
- :class:`TrainingModule`: the one ``forward`` that accelerate wraps (VLM + SCB + DiT), so DDP sees every
  trainable parameter used inside a single forward.
- :func:`prepare_run` -> :class:`Run`: AdamW, warm-up + cosine, optional EMA, accelerate's ``prepare``,
  checkpoints (:mod:`deepgen.training.checkpoints`) and the resume; :meth:`Run.optimizer_step`,
  :meth:`Run.end_step` (count, log, checkpoint) and :meth:`Run.finish` (``output_dir/final``) are the steps every
  loop shares.
- :func:`flow_matching_loss_on_batch`: the stage-1/2 objective on one batch (also stage 3's SFT-aux loss).

Random draws of a step come from generators seeded by :func:`deepgen.training.seeding.step_seed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from ..config import PRESETS, get_preset
from ..kontext import KontextSD3Transformer2DModel
from ..lora import add_lora, has_lora, lora_parameters
from ..model import DeepGenModel
from ..pipeline import DeepGenPipeline
from ..scb import StackedChannelBridge
from ..vlm import VLMInputs
from .checkpoints import CheckpointManager, NamedParameters
from .config import EMAConfig, LoraSpec, LossConfig, ModelConfig, OptimConfig, TrainConfig, config_to_dict
from .data import Batch, MixedBatchStream
from .flow_matching import add_noise, flow_matching_loss, sample_timesteps

logger = logging.getLogger(__name__)

LOSS_LOG = "loss_log.jsonl"


# --- accelerator and model ----------------------------------------------------------------------------------------


def build_accelerator(config: TrainConfig) -> Accelerator:
    """An ``Accelerator`` with the config's mixed precision and gradient accumulation.

    The distributed backend (DDP, FSDP, DeepSpeed) and the number of processes come from ``accelerate launch``.
    ``find_unused_parameters`` lets DDP skip trainable weights a step does not use (the ViT's LoRA on a
    text-only batch, ``lm_head``'s LoRA which DeepGen never calls).
    """
    find_unused = config.find_unused_parameters
    if find_unused is None:
        find_unused = config.train_vlm or config.vlm_lora is not None
    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused)
    accelerator = Accelerator(mixed_precision=config.mixed_precision,
                              gradient_accumulation_steps=config.gradient_accumulation_steps,
                              project_dir=config.output_dir, kwargs_handlers=[ddp])
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed reads the micro-batch size from a prepared DataLoader; our stream is not one.
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    return accelerator


def start_run(config: TrainConfig) -> Accelerator:
    """What every stage does first: the accelerator, logging (INFO on the main process), ``train_config.json``."""
    accelerator = build_accelerator(config)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    write_run_config(config, accelerator)
    return accelerator


def load_pipeline(config: ModelConfig) -> DeepGenPipeline:
    """The starting pipeline, in fp32 (mixed precision is autocast; see :func:`cast_frozen_weights`).

    A preset name gives random weights (seeded); another ``pretrained`` is loaded with ``from_pretrained``; with
    ``pretrained: null`` the base VLM and DiT are loaded and a fresh bridge is built (:func:`load_base_pipeline`).
    """
    if config.pretrained is None:
        pipe = load_base_pipeline(config.base_vlm, config.base_dit, config.bridge_preset, config.seed,
                                  config.connector_init)
    elif config.pretrained in PRESETS:
        pipe = DeepGenPipeline.from_config(config.pretrained, seed=config.seed)
    else:
        pipe = DeepGenPipeline.from_pretrained(config.pretrained, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def xavier_init_connector(encoder: nn.Module) -> None:
    """The authors' connector initialisation (deepgen ``src/models/connector/modeling_connector.py:48-67``, applied
    to the encoder at line 485): xavier-uniform attention projections with zero biases, xavier-uniform MLP
    weights with N(0, 1e-6²) biases; LayerNorms at ones/zeros (already their default). Draws from the global
    generator (seeded by the caller)."""
    for name, module in encoder.named_modules():
        if name.endswith("self_attn"):
            for projection in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                nn.init.xavier_uniform_(projection.weight)
                nn.init.zeros_(projection.bias)
        elif name.endswith("mlp"):
            for layer in (module.fc1, module.fc2):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.normal_(layer.bias, std=1e-6)


def load_base_pipeline(vlm: str, dit: str, bridge_preset: str = "deepgen-1.0", seed: int = 0,
                       connector_init: str = "pytorch") -> DeepGenPipeline:
    """Stage 1's starting point: pretrained Qwen2.5-VL and Kontext DiT with a freshly initialised bridge.

    Args:
        vlm: folder or hub id of Qwen2.5-VL (model + tokenizer), e.g. ``Qwen/Qwen2.5-VL-3B-Instruct``.
        dit: folder or hub id with ``transformer/``, ``vae/``, ``scheduler/``, e.g.
            ``Skywork/UniPic2-SD3.5M-Kontext-2B`` (a ``save_pretrained`` folder works too).
        bridge_preset: preset giving the think-token count, SCB layers and connector size; the bridge's input and
            output widths come from the loaded VLM and DiT.
        seed: seeds the bridge's initialisation (its output heads start at zero either way).
        connector_init: "pytorch" (nn.Linear's default) or "xavier" (:func:`xavier_init_connector`, the authors').
    """
    preset = get_preset(bridge_preset)
    vlm_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(vlm, dtype=torch.float32,
                                                                   attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(vlm)
    transformer = KontextSD3Transformer2DModel.from_pretrained(dit, subfolder="transformer", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(dit, subfolder="vae", torch_dtype=torch.float32)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(dit, subfolder="scheduler")
    torch.manual_seed(seed)
    bridge = StackedChannelBridge(
        vlm_hidden_size=vlm_model.config.get_text_config().hidden_size,
        num_queries=preset.num_queries,
        scb_layers=list(preset.scb_layers),
        joint_attention_dim=transformer.config.joint_attention_dim,
        pooled_projection_dim=transformer.config.pooled_projection_dim,
        connector_config=vars(preset.connector).copy(),
    )
    if connector_init == "xavier":
        xavier_init_connector(bridge.connector)
    return DeepGenPipeline(vlm=vlm_model.eval(), tokenizer=tokenizer, scb=bridge.eval(),
                           transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler)


def _attach_lora(module: nn.Module, spec: LoraSpec, name: str) -> None:
    if has_lora(module):
        # A pipeline saved after stage 2 already carries the adapter: keep training it rather than stacking one.
        logger.info("The %s already has a LoRA adapter; training it instead of adding a new one.", name)
    else:
        add_lora(module, rank=spec.rank, alpha=spec.alpha, target_modules=spec.target_modules, dropout=spec.dropout)
    for parameter in lora_parameters(module):
        parameter.requires_grad_(True)


def apply_training_schedule(pipe: DeepGenPipeline, config: TrainConfig) -> NamedParameters:
    """Freeze, add LoRA and set train/eval modes as the config says; return the trainable parameters.

    Names are those of ``DeepGenModel`` (``connector.meta_queries``, ``transformer.transformer_blocks.0...``,
    ``vlm.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight``). The VAE is always frozen.
    Frozen modules are put in eval mode; modules with trainable weights (including LoRA) in train mode.
    """
    pipe.vae.requires_grad_(False).eval()
    pipe.vlm.requires_grad_(config.train_vlm)
    pipe.scb.requires_grad_(config.train_connector)
    pipe.transformer.requires_grad_(config.train_transformer)
    if config.vlm_lora is not None:
        _attach_lora(pipe.vlm, config.vlm_lora, "VLM")
    if config.transformer_lora is not None:
        _attach_lora(pipe.transformer, config.transformer_lora, "DiT")
    for module in (pipe.vlm, pipe.scb, pipe.transformer):
        module.train(any(p.requires_grad for p in module.parameters()))
    if config.gradient_checkpointing:
        # Even frozen, both sit on the gradient path: think tokens enter the VLM, the bridge's output the DiT.
        # (transformers only checkpoints modules in train mode, i.e. a VLM with trainable weights.)
        pipe.transformer.enable_gradient_checkpointing()
        pipe.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [(name, p) for name, p in DeepGenModel(pipe.vlm, pipe.scb, pipe.transformer).named_parameters()
                 if p.requires_grad]
    if not trainable:
        raise ValueError("The schedule leaves nothing trainable; check train_* and *_lora in the config.")
    return trainable


def cast_frozen_weights(pipe: DeepGenPipeline, dtype: torch.dtype) -> None:
    """Store frozen VLM/DiT weights in ``dtype`` (mixed-precision memory saving); trainable ones stay fp32.

    The VAE stays fp32 (SD3's VAE needs it: ``force_upcast``).
    """
    for module in (pipe.vlm, pipe.scb, pipe.transformer):
        for parameter in module.parameters():
            if not parameter.requires_grad:
                parameter.data = parameter.data.to(dtype)


def mixed_precision_dtype(accelerator: Accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def prepare_trainable(pipe: DeepGenPipeline, config: TrainConfig, accelerator: Accelerator) -> NamedParameters:
    """:func:`apply_training_schedule`, then frozen weights cast to the mixed-precision dtype (if configured)."""
    trainable = apply_training_schedule(pipe, config)
    if accelerator.mixed_precision != "no" and config.cast_frozen_weights:
        cast_frozen_weights(pipe, mixed_precision_dtype(accelerator))
    logger.info("Training %d tensors (%d weights).", len(trainable), sum(p.numel() for _, p in trainable))
    return trainable


class TrainingModule(nn.Module):
    """What accelerate wraps: one forward from tokenised prompts (+ references) to the velocity.

    DDP/FSDP hook into ``forward``; calling ``encode_condition`` and the DiT separately would run the VLM and SCB
    outside the wrapped forward. Parameter names get a ``model.`` prefix inside this module.
    """

    def __init__(self, model: DeepGenModel):
        super().__init__()
        self.model = model

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, inputs: VLMInputs,
                reference_latents: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """``latents`` (B, 16, h, w) noisy, ``timestep`` (B,) = sigma * 1000 -> velocity (B, 16, h, w)."""
        return self.model.velocity_from_inputs(latents, timestep, inputs, reference_latents)


# --- objective ----------------------------------------------------------------------------------------------------


def training_scheduler(pipe: DeepGenPipeline) -> FlowMatchEulerDiscreteScheduler:
    """A fresh copy of the pipeline's scheduler holding its training schedule (never ``set_timesteps``)."""
    return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)


def flow_matching_loss_on_batch(pipe: DeepGenPipeline, model: nn.Module, batch: Batch,
                                scheduler: FlowMatchEulerDiscreteScheduler, loss_config: LossConfig,
                                generator: torch.Generator, accelerator: Accelerator) -> torch.Tensor:
    """The stage-1/2 loss on one batch (ARCHITECTURE.md, Training).

    1. VAE-encode targets (and edit sources) with the frozen VAE, a posterior sample as the authors do.
    2. Draw sigmas with ``compute_density_for_timestep_sampling`` and noise; ``x_t = (1 - sigma) x0 + sigma eps``.
    3. Tokenise prompts; an edit row's VLM input also holds its source image, and the source latents become
       Kontext reference tokens in the DiT.
    4. ``model`` (the accelerate-wrapped :class:`TrainingModule`) predicts the velocity; MSE to ``eps - x0``.
    """
    device = accelerator.device
    with torch.no_grad():
        x0 = pipe.encode_images(list(batch.pixel_values), generator).float()  # (B, 16, S/8, S/8)
        references = []
        if batch.is_edit:
            references = [pipe.encode_images(list(batch.source_pixel_values), generator).float()]
    noise = torch.randn(x0.shape, generator=generator).to(device)  # (B, 16, h, w)
    sigmas, timesteps = sample_timesteps(len(batch), scheduler, loss_config.weighting_scheme,
                                         loss_config.logit_mean, loss_config.logit_std, loss_config.mode_scale,
                                         generator=generator, device=device)
    noisy = add_noise(x0, noise, sigmas)
    images = [[source] for source in batch.source_pixel_values] if batch.is_edit else None
    inputs = pipe.processor(batch.prompts, images=images).to(device)
    with accelerator.autocast():
        velocity = model(noisy, timesteps, inputs, references)
    return flow_matching_loss(velocity, x0, noise, sigmas, loss_config.loss_weighting)


# --- optimiser, schedule, EMA -------------------------------------------------------------------------------------


def weight_decay_groups(parameters: Sequence[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups that decay only tensors with ``ndim >= 2`` (nanoGPT's and the authors' rule):
    ``[{"params": matrices, "weight_decay": weight_decay}, {"params": the rest, "weight_decay": 0.0}]``."""
    return [{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(parameters: Sequence[nn.Parameter], config: OptimConfig) -> torch.optim.AdamW:
    """AdamW; with ``decay_matrices_only`` the weight decay skips 1-D tensors (biases, norm scales)."""
    groups = weight_decay_groups(list(parameters), config.weight_decay) if config.decay_matrices_only else parameters
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
                             eps=config.eps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                       num_processes: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_steps`` (or ``warmup_ratio * max_steps``) then ``lr_scheduler`` (cosine to 0
    by default).

    accelerate's prepared scheduler steps once per process per optimizer step (diffusers' scripts multiply the
    same way), so the step counts are scaled by ``num_processes``.
    """
    warmup = config.optim.warmup_steps
    if warmup is None:
        warmup = math.ceil(config.optim.warmup_ratio * config.max_steps)
    return get_scheduler(config.optim.lr_scheduler, optimizer, num_warmup_steps=warmup * num_processes,
                         num_training_steps=config.max_steps * num_processes)


def build_ema(trainable: NamedParameters, config: EMAConfig) -> Optional[EMAModel]:
    if not config.enabled:
        return None
    return EMAModel([p for _, p in trainable], decay=config.decay, update_after_step=config.update_after_step)


# --- the run: what every loop steps through ------------------------------------------------------------------


@dataclass
class Run:
    """A prepared training run: the wrapped model, optimiser, schedule, EMA, checkpoints, log and step counter.

    Built by :func:`prepare_run`; a loop calls :meth:`optimizer_step` after its backward passes, :meth:`end_step`
    once per step and :meth:`finish` at the end.
    """

    config: TrainConfig
    accelerator: Accelerator
    pipe: DeepGenPipeline
    trainable: NamedParameters
    model: nn.Module  # what accelerate wrapped: call it for the forward whose gradients DDP syncs
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: Optional[EMAModel]
    checkpoints: CheckpointManager
    loss_log: "LossLog"
    stream: Optional[MixedBatchStream]
    stage: str
    step: int
    progress: Any

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.trainable]

    def optimizer_step(self) -> Optional[float]:
        """Clip, step the optimiser and LR schedule, zero the grads; then the EMA. Returns the gradient norm.

        Inside ``accelerator.accumulate`` the clip and the EMA act only on the micro-step that syncs gradients
        (accelerate's optimiser and scheduler skip the others themselves).
        """
        grad_norm = None
        if self.accelerator.sync_gradients and self.config.optim.max_grad_norm is not None:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.parameters, self.config.optim.max_grad_norm))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and self.accelerator.sync_gradients:
            self.ema.step(self.parameters)
        return grad_norm

    def end_step(self, record: Optional[Callable[[], dict[str, Any]]] = None) -> None:
        """Count one step; log ``record()`` (built only when due: every ``log_every`` steps and the last one), and
        checkpoint every ``checkpoint_every`` steps and at the last one."""
        self.step += 1
        self.progress.update(1)
        last = self.step == self.config.max_steps
        if record is not None and (self.step % self.config.log_every == 0 or last):
            self.loss_log.log({"step": self.step, **record()})
        if last or (self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0):
            self.checkpoints.save(self.step, self.stream, self.ema, extra={"stage": self.stage})

    @property
    def done(self) -> bool:
        return self.step >= self.config.max_steps

    def finish(self) -> str:
        """Close the progress bar, write ``output_dir/final`` (if ``save_final``) and return where the run ended."""
        self.progress.close()
        final = self.config.output_dir
        if self.config.save_final:
            final = str(save_final(self.pipe, self.accelerator, self.config.output_dir, self.trainable, self.ema,
                                   self.config.ema.use_for_final, self.model))
        self.accelerator.end_training()
        return final


def prepare_run(config: TrainConfig, accelerator: Accelerator, pipe: DeepGenPipeline, trainable: NamedParameters,
                module: nn.Module, stream: Optional[MixedBatchStream], stage: str,
                updates_per_step: int = 1) -> Run:
    """Optimiser, schedule, accelerate's ``prepare`` of ``module``, EMA, checkpoints, then resume (or start at 0).

    Args:
        module: the module whose forward the loop calls (accelerate wraps it for DDP/FSDP).
        stream: the supervised data, whose position is checkpointed (None when the run reads none).
        stage: name recorded in checkpoints and shown on the progress bar.
        updates_per_step: optimiser steps per loop step (stage 3); the LR schedule counts optimiser steps.
    """
    if stream is not None:  # what each step reads, so that a launch that started fewer processes shows here
        per_step = accelerator.num_processes * config.batch_size * config.gradient_accumulation_steps
        logger.info("%d process(es) x %d samples x %d accumulation step(s) = %d samples per optimiser step.",
                    accelerator.num_processes, config.batch_size, config.gradient_accumulation_steps, per_step)
    optimizer = build_optimizer([p for _, p in trainable], config.optim)
    schedule = dataclasses.replace(config, max_steps=config.max_steps * updates_per_step)
    lr_scheduler = build_lr_scheduler(optimizer, schedule, accelerator.num_processes)
    model, optimizer, lr_scheduler = accelerator.prepare(module, optimizer, lr_scheduler)
    ema = build_ema(trainable, config.ema)
    if ema is not None:
        ema.to(accelerator.device)
    checkpoints = CheckpointManager(config.output_dir, accelerator, trainable, config.keep_checkpoints)
    step = checkpoints.resume(config.resume, stream, ema)
    return Run(config=config, accelerator=accelerator, pipe=pipe, trainable=trainable, model=model,
               optimizer=optimizer, lr_scheduler=lr_scheduler, ema=ema, checkpoints=checkpoints,
               loss_log=LossLog(config.output_dir, accelerator, step), stream=stream, stage=stage, step=step,
               progress=tqdm(total=config.max_steps, initial=step, desc=stage,
                             disable=not accelerator.is_local_main_process))


# --- logs and outputs ---------------------------------------------------------------------------------------------


class LossLog:
    """``output_dir/loss_log.jsonl``: one JSON object per logged step (main process only).

    On resume, lines after the resumed step (written by the killed run after its last checkpoint) are dropped so
    the log reads like one uninterrupted run.
    """

    def __init__(self, output_dir: str, accelerator: Accelerator, resumed_step: int = 0):
        self.path = Path(output_dir) / LOSS_LOG
        self.enabled = accelerator.is_main_process
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resumed_step and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resumed_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.start = time.time()

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            record = {**record, "elapsed_s": round(time.time() - self.start, 3)}
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def save_final(pipe: DeepGenPipeline, accelerator: Accelerator, output_dir: str,
               trainable: Optional[NamedParameters] = None, ema: Optional[EMAModel] = None,
               use_ema: bool = True, model: Optional[nn.Module] = None) -> Path:
    """Write ``output_dir/final`` with ``pipe.save_pretrained`` (with the EMA weights if given and ``use_ema``).

    Under FSDP pass the prepared ``model``: its full weights are gathered on the main process while saving.
    """
    path = Path(output_dir) / "final"
    accelerator.wait_for_everyone()
    gather = contextlib.nullcontext()
    if accelerator.distributed_type == DistributedType.FSDP and model is not None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        gather = FullyShardedDataParallel.summon_full_params(model, writeback=False, rank0_only=True,
                                                             offload_to_cpu=True)
    with gather:
        if accelerator.is_main_process:
            swap = ema is not None and use_ema and trainable is not None
            if swap:
                parameters = [p for _, p in trainable]
                ema.store(parameters)
                ema.copy_to(parameters)
            try:
                pipe.save_pretrained(path)
            finally:
                if swap:
                    ema.restore(parameters)
    accelerator.wait_for_everyone()
    return path


def write_run_config(config: TrainConfig, accelerator: Accelerator) -> None:
    """Save the resolved config as ``output_dir/train_config.json`` for the record."""
    if accelerator.is_main_process:
        path = Path(config.output_dir) / "train_config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
