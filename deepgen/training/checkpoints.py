"""Atomic, resumable checkpoints of a training run: ``output_dir/checkpoints/checkpoint-<step>``.

A checkpoint holds the trainable weights, the optimiser, LR schedule and RNG states (accelerate's ``save_state``),
the EMA, every process's data position and the step; :meth:`CheckpointManager.resume` continues exactly where a
killed run stopped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch import nn

from .data import MixedBatchStream

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TEMP_PREFIX = ".tmp-"
TRAINABLE_WEIGHTS = "trainable.safetensors"
TRAINER_STATE = "trainer_state.json"
EMA_STATE = "ema.pt"
NamedParameters = list[tuple[str, nn.Parameter]]


def trainable_state_dict(trainable: NamedParameters) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().cpu().contiguous() for name, p in trainable}


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


