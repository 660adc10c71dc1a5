"""Shared plumbing of the training stages: accelerate, the freeze/LoRA schedule, optimiser, checkpoints, logs.

The stage scripts (``train/stage1_align.py``, ``train/stage2_sft.py``, and the RL stage) own their loops; what
every stage needs lives here:

- :func:`build_accelerator`: mixed precision and gradient accumulation from the config; DDP/FSDP/DeepSpeed come
  from ``accelerate config`` / ``accelerate launch --config_file``.
- :func:`load_pipeline` + :func:`apply_training_schedule`: start weights, then ``requires_grad``/LoRA/train-eval
  modes from the config; returns exactly the trainable parameters.
- :class:`TrainingModule`: the one ``forward`` that accelerate wraps (VLM + SCB + DiT), so DDP sees every
  trainable parameter used inside a single forward.
- :func:`build_optimizer`, :func:`build_lr_scheduler`, :func:`build_ema`: AdamW, warm-up + cosine, optional EMA.
- :class:`CheckpointManager`: atomic checkpoints (temp folder, fsync, rename; keep the last N) holding the
  trainable weights, optimiser, LR schedule, RNG states (accelerate), EMA, the data position and the step;
  :meth:`CheckpointManager.resume` continues exactly where a killed run stopped.
- :class:`LossLog`: ``loss_log.jsonl`` in the output folder; :func:`save_final`: ``output_dir/final`` as a
  ``DeepGenPipeline.save_pretrained`` folder.
- :func:`flow_matching_loss_on_batch`: the stage-1/2 objective on one batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from ..config import PRESETS, get_preset
from ..kontext import KontextSD3Transformer2DModel
from ..lora import add_lora, has_lora, lora_parameters
from ..model import DeepGenModel
from ..pipeline import DeepGenPipeline
from ..scb import StackedChannelBridge
from ..vlm import VLMInputs
from .config import EMAConfig, LoraSpec, LossConfig, ModelConfig, OptimConfig, TrainConfig, config_to_dict
from .data import Batch, MixedBatchStream
from .flow_matching import add_noise, flow_matching_loss, sample_timesteps

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TEMP_PREFIX = ".tmp-"
TRAINABLE_WEIGHTS = "trainable.safetensors"
TRAINER_STATE = "trainer_state.json"
EMA_STATE = "ema.pt"
LOSS_LOG = "loss_log.jsonl"
NamedParameters = list[tuple[str, nn.Parameter]]


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


def load_pipeline(config: ModelConfig) -> DeepGenPipeline:
    """The starting pipeline, in fp32 (mixed precision is autocast; see :func:`cast_frozen_weights`).

    A preset name gives random weights (seeded); another ``pretrained`` is loaded with ``from_pretrained``; with
    ``pretrained: null`` the base VLM and DiT are loaded and a fresh bridge is built (:func:`load_base_pipeline`).
    """
    if config.pretrained is None:
        pipe = load_base_pipeline(config.base_vlm, config.base_dit, config.bridge_preset, config.seed)
    elif config.pretrained in PRESETS:
        pipe = DeepGenPipeline.from_config(config.pretrained, seed=config.seed)
    else:
        pipe = DeepGenPipeline.from_pretrained(config.pretrained, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_base_pipeline(vlm: str, dit: str, bridge_preset: str = "deepgen-1.0", seed: int = 0) -> DeepGenPipeline:
    """Stage 1's starting point: pretrained Qwen2.5-VL and Kontext DiT with a freshly initialised bridge.

    Args:
        vlm: folder or hub id of Qwen2.5-VL (model + tokenizer), e.g. ``Qwen/Qwen2.5-VL-3B-Instruct``.
        dit: folder or hub id with ``transformer/``, ``vae/``, ``scheduler/``, e.g.
            ``Skywork/UniPic2-SD3.5M-Kontext-2B`` (a ``save_pretrained`` folder works too).
        bridge_preset: preset giving the think-token count, SCB layers and connector size; the bridge's input and
            output widths come from the loaded VLM and DiT.
        seed: seeds the bridge's initialisation (its output heads start at zero either way).
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


def step_generator(seed: int, rank: int, micro_step: int) -> torch.Generator:
    """A CPU generator for one micro-batch: noise, timesteps and VAE samples depend only on (seed, rank, step),
    so a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 1_000_003 + micro_step) % 2**63)


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


def build_optimizer(parameters: Sequence[nn.Parameter], config: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
                             eps=config.eps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                       num_processes: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_ratio * max_steps`` then ``lr_scheduler`` (cosine to 0 by default).

    accelerate's prepared scheduler steps once per process per optimizer step (diffusers' scripts multiply the
    same way), so the step counts are scaled by ``num_processes``.
    """
    warmup = math.ceil(config.optim.warmup_ratio * config.max_steps)
    return get_scheduler(config.optim.lr_scheduler, optimizer, num_warmup_steps=warmup * num_processes,
                         num_training_steps=config.max_steps * num_processes)


def build_ema(trainable: NamedParameters, config: EMAConfig) -> Optional[EMAModel]:
    if not config.enabled:
        return None
    return EMAModel([p for _, p in trainable], decay=config.decay, update_after_step=config.update_after_step)


def trainable_state_dict(trainable: NamedParameters) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().cpu().contiguous() for name, p in trainable}


# --- checkpoints --------------------------------------------------------------------------------------------------


def _fsync_tree(root: Path) -> None:
    """Flush every file of ``root`` and the folder entries to disk before the rename makes it visible."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointManager:
    """Atomic, resumable checkpoints in ``output_dir/checkpoints/checkpoint-<step>``.

    A checkpoint is written into ``.tmp-checkpoint-<step>`` (accelerate's ``save_state``: optimiser, LR schedule,
    per-process RNG states; plus our trainable weights, EMA, per-process data positions and ``trainer_state.json``),
    fsynced, then renamed into place, so a crash at any moment leaves the previous checkpoints intact. Only the
    newest ``keep`` are kept. Every process writes into the same folder (a shared filesystem across nodes).

    Under DDP or a single process the model weights saved are only the trainable ones (``trainable.safetensors``);
    under FSDP/DeepSpeed accelerate saves the (sharded) model its own way.
    """

    def __init__(self, output_dir: str, accelerator: Accelerator, trainable: NamedParameters,
                 keep: Optional[int] = 3):
        self.root = Path(output_dir) / "checkpoints"
        self.accelerator = accelerator
        self.trainable = trainable
        self.keep = keep
        self._own_model_state = accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        accelerator.register_save_state_pre_hook(self._save_model_hook)
        accelerator.register_load_state_pre_hook(self._load_model_hook)
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f"{TEMP_PREFIX}*"):  # left behind by a killed run
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()

    # accelerate hooks: replace the full model state by the trainable parameters only.
    def _save_model_hook(self, models: list, weights: list, output_dir: str) -> None:
        if not self._own_model_state:
            return
        weights.clear()
        if self.accelerator.is_main_process:
            save_file(trainable_state_dict(self.trainable), os.path.join(output_dir, TRAINABLE_WEIGHTS))

    def _load_model_hook(self, models: list, input_dir: str) -> None:
        if not self._own_model_state:
            return
        models.clear()
        load_trainable(self.trainable, Path(input_dir) / TRAINABLE_WEIGHTS)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = []
        for path in self.root.glob(f"{CHECKPOINT_PREFIX}*"):
            match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
            if match and (path / TRAINER_STATE).is_file():
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def save(self, step: int, stream: Optional[MixedBatchStream] = None, ema: Optional[EMAModel] = None,
             extra: Optional[dict[str, Any]] = None) -> Path:
        """Write ``checkpoint-<step>`` atomically on every process; returns its path."""
        accelerator = self.accelerator
        final = self.root / f"{CHECKPOINT_PREFIX}{step}"
        temp = self.root / f"{TEMP_PREFIX}{CHECKPOINT_PREFIX}{step}"
        if accelerator.is_main_process and temp.exists():
            shutil.rmtree(temp)
        accelerator.wait_for_everyone()
        try:
            temp.mkdir(parents=True, exist_ok=True)
            accelerator.save_state(str(temp))
            if stream is not None:
                torch.save(stream.state_dict(), temp / f"data_state_{accelerator.process_index}.pt")
            if accelerator.is_main_process:
                if ema is not None:
                    torch.save(ema.state_dict(), temp / EMA_STATE)
                state = {"step": step, "num_processes": accelerator.num_processes, **(extra or {})}
                (temp / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _fsync_tree(temp)
                previous = self.root / f"{TEMP_PREFIX}old-{CHECKPOINT_PREFIX}{step}"
                if final.exists():  # re-saving the same step (e.g. the end of a resumed run)
                    os.replace(final, previous)
                os.replace(temp, final)
                shutil.rmtree(previous, ignore_errors=True)
                _fsync_dir(self.root)
                self._prune()
        except BaseException:
            if accelerator.is_main_process:
                shutil.rmtree(temp, ignore_errors=True)
            raise
        accelerator.wait_for_everyone()
        return final

    def _prune(self) -> None:
        if self.keep is None:
            return
        for old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def resolve(self, resume: Optional[str]) -> Optional[Path]:
        """``"latest"`` -> newest checkpoint or None; a path -> that checkpoint; None -> None."""
        if resume is None:
            return None
        if resume == "latest":
            found = self.checkpoints()
            return found[-1] if found else None
        path = Path(resume)
        if not (path / TRAINER_STATE).is_file():
            raise ValueError(f"resume={resume!r} is not a checkpoint folder (no {TRAINER_STATE}); use 'latest', "
                             f"null or a folder like {self.root}/{CHECKPOINT_PREFIX}1000.")
        return path

    def resume(self, resume: Optional[str], stream: Optional[MixedBatchStream] = None,
               ema: Optional[EMAModel] = None) -> int:
        """Restore the state of ``resume`` (see :meth:`resolve`); return the step to continue from (0 if none)."""
        path = self.resolve(resume)
        if path is None:
            return 0
        accelerator = self.accelerator
        state = json.loads((path / TRAINER_STATE).read_text())
        if state["num_processes"] != accelerator.num_processes:
            raise ValueError(f"{path} was written by {state['num_processes']} processes but this run has "
                             f"{accelerator.num_processes}; resume with the same number so the data order matches.")
        accelerator.load_state(str(path))
        if stream is not None:
            stream.load_state_dict(torch.load(path / f"data_state_{accelerator.process_index}.pt",
                                              weights_only=False))
        if ema is not None:
            if not (path / EMA_STATE).is_file():
                raise ValueError(f"{path} has no EMA state but ema.enabled is true; resume with the same config.")
            ema.load_state_dict(torch.load(path / EMA_STATE, weights_only=False))
            ema.to(accelerator.device)  # the shadow weights were loaded on the CPU
        logger.info("Resumed from %s at step %d.", path, state["step"])
        return int(state["step"])


def load_trainable(trainable: NamedParameters, path: Path) -> None:
    """Copy saved trainable weights into ``trainable``; every name must match both ways."""
    state = load_file(str(path))
    names = {name for name, _ in trainable}
    missing, unexpected = sorted(names - set(state)), sorted(set(state) - names)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the trainable parameters of this config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}. Resume with the same freeze/LoRA schedule.")
    with torch.no_grad():
        for name, parameter in trainable:
            parameter.copy_(state[name].to(parameter.dtype))


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
