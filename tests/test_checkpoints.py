"""Checkpoints (deepgen/training/checkpoints.py): atomic saves (a crash mid-save leaves the previous one intact, no
temp folders), pruning, resume of the trainable weights, refusal of a different schedule."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from deepgen.training import checkpoints, trainer
from training_helpers import fresh_accelerate_state, tiny_config  # noqa: F401  (autouse fixture)


class _Boom(RuntimeError):
    pass


def _manager(tmp_path, keep=2):
    config = tiny_config(tmp_path, f"keep_checkpoints={keep}")
    accelerator = trainer.build_accelerator(config)
    weight = torch.nn.Parameter(torch.arange(4.0))
    optimizer = trainer.build_optimizer([weight], config.optim)
    schedule = trainer.build_lr_scheduler(optimizer, config)
    optimizer, schedule = accelerator.prepare(optimizer, schedule)
    return checkpoints.CheckpointManager(str(tmp_path), accelerator, [("w", weight)], keep=keep), weight, accelerator


def test_checkpoint_crash_mid_save_keeps_previous_and_leaks_nothing(tmp_path, monkeypatch):
    manager, weight, accelerator = _manager(tmp_path)
    first = manager.save(1)
    assert torch.equal(load_file(first / checkpoints.TRAINABLE_WEIGHTS)["w"], torch.arange(4.0))
    with torch.no_grad():
        weight.add_(10)

    real_save_state = accelerator.save_state

    def crash_after_partial_write(output_dir, **kwargs):
        real_save_state(output_dir, **kwargs)  # files are half-way there when the "crash" happens
        raise _Boom("disk full")

    monkeypatch.setattr(accelerator, "save_state", crash_after_partial_write)
    with pytest.raises(_Boom):
        manager.save(2)
    assert manager.checkpoints() == [first]
    assert sorted(p.name for p in manager.root.iterdir()) == ["checkpoint-1"]  # no temp folder left
    assert json.loads((first / checkpoints.TRAINER_STATE).read_text())["step"] == 1
    assert torch.equal(load_file(first / checkpoints.TRAINABLE_WEIGHTS)["w"], torch.arange(4.0))


def test_stale_temp_folders_are_cleaned_and_old_checkpoints_pruned(tmp_path):
    stale = tmp_path / "checkpoints" / f"{checkpoints.TEMP_PREFIX}checkpoint-7"
    stale.mkdir(parents=True)
    (stale / "optimizer.bin").write_bytes(b"half")
    manager, _, _ = _manager(tmp_path, keep=2)
    assert not stale.exists()  # a killed run's leftovers are removed at start-up
    for step in (1, 2, 3):
        manager.save(step)
    assert [p.name for p in manager.checkpoints()] == ["checkpoint-2", "checkpoint-3"]
    assert manager.resolve("latest").name == "checkpoint-3" and manager.resolve(None) is None
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        manager.resolve(str(tmp_path))


def test_resume_restores_trainable_weights(tmp_path):
    manager, weight, _ = _manager(tmp_path)
    manager.save(5)
    with torch.no_grad():
        weight.zero_()
    assert manager.resume("latest") == 5
    assert torch.equal(weight.detach(), torch.arange(4.0))


def test_load_trainable_refuses_a_different_schedule(tmp_path):
    manager, _, _ = _manager(tmp_path)
    path = manager.save(1) / checkpoints.TRAINABLE_WEIGHTS
    with pytest.raises(ValueError, match="missing.*unexpected"):
        checkpoints.load_trainable([("other", torch.nn.Parameter(torch.zeros(4)))], path)
