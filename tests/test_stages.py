"""Stage scripts end to end on `tiny` (32 px, 2 steps): checkpoints, kill + resume giving the same weights as an
uninterrupted run, the saved pipeline, schedule checks, and a 2-process gloo run through `accelerate launch`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from loopback import free_port
from safetensors.torch import load_file

from deepgen import DeepGenPipeline
from deepgen.lora import has_lora
from deepgen.training import checkpoints, trainer
from deepgen.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "train" / "configs"


def _load_script(name: str):
    if str(ROOT / "train") not in sys.path:  # stage 2 imports stage 1's loop, as when run as a script
        sys.path.insert(0, str(ROOT / "train"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "train" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DATA: list[str] = []  # the override pointing the tiny configs at their parquet shards (set per test)


@pytest.fixture(autouse=True)
def _tiny_data(tiny_data):
    DATA[:] = [f"data.sources.0.path={tiny_data}"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _run(script, config: str, output_dir: Path, *overrides: str) -> Path:
    final = script.main(["--config", str(CONFIGS / config), f"output_dir={output_dir}", *DATA, *overrides])
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Path(final)


class _Killed(Exception):
    pass


def _run_killed_after_step(script, config, output_dir, step, monkeypatch, *overrides):
    """Run until checkpoint ``step`` is written, then die as if the process were killed."""
    real_save = trainer.CheckpointManager.save

    def save_then_die(self, at_step, *args, **kwargs):
        path = real_save(self, at_step, *args, **kwargs)
        if at_step == step:
            raise _Killed
        return path

    with monkeypatch.context() as patch:
        patch.setattr(trainer.CheckpointManager, "save", save_then_die)
        with pytest.raises(_Killed):
            _run(script, config, output_dir, *overrides)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a / checkpoints.TRAINABLE_WEIGHTS), load_file(b / checkpoints.TRAINABLE_WEIGHTS)
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def _losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output_dir / trainer.LOSS_LOG).read_text().splitlines()]


def test_stage1_resume_after_kill_matches_uninterrupted_run(tmp_path, monkeypatch):
    stage1 = _load_script("stage1_align")
    overrides = ("gradient_accumulation_steps=2", "batch_size=1")
    final = _run(stage1, "tiny-stage1.yaml", tmp_path / "full", *overrides)
    full = tmp_path / "full" / "checkpoints"
    assert [p.name for p in sorted(full.iterdir())] == ["checkpoint-1", "checkpoint-2"]

    _run_killed_after_step(stage1, "tiny-stage1.yaml", tmp_path / "killed", 1, monkeypatch, *overrides)
    assert not (tmp_path / "killed" / "final").exists()
    _run(stage1, "tiny-stage1.yaml", tmp_path / "killed", *overrides)  # resume: latest
    _assert_same_weights(full / "checkpoint-2", tmp_path / "killed" / "checkpoints" / "checkpoint-2")
    assert _losses(tmp_path / "full") == _losses(tmp_path / "killed")

    # Only the bridge moved, and final/ is a loadable pipeline holding it.
    trained = load_file(full / "checkpoint-2" / checkpoints.TRAINABLE_WEIGHTS)
    assert all(name.startswith("connector.") for name in trained)
    pipe = DeepGenPipeline.from_pretrained(final)
    initial = DeepGenPipeline.from_config("tiny", seed=0)
    torch.testing.assert_close(pipe.scb.meta_queries, trained["connector.meta_queries"])
    assert not torch.equal(pipe.scb.meta_queries, initial.scb.meta_queries)
    for name in ("vlm", "transformer"):
        for (key, p), q in zip(getattr(pipe, name).state_dict().items(), getattr(initial, name).state_dict().values()):
            assert torch.equal(p, q), f"{name}.{key} changed in stage 1"


def test_stage2_from_stage1_with_lora_and_ema_resumes_exactly(tmp_path, monkeypatch):
    stage1, stage2 = _load_script("stage1_align"), _load_script("stage2_sft")
    start = _run(stage1, "tiny-stage1.yaml", tmp_path / "stage1", "max_steps=1")
    overrides = (f"model.pretrained={start}", "ema.enabled=true", "ema.decay=0.5")
    final = _run(stage2, "tiny-stage2.yaml", tmp_path / "full", *overrides)
    _run_killed_after_step(stage2, "tiny-stage2.yaml", tmp_path / "killed", 1, monkeypatch, *overrides)
    _run(stage2, "tiny-stage2.yaml", tmp_path / "killed", *overrides)
    _assert_same_weights(tmp_path / "full" / "checkpoints" / "checkpoint-2",
                         tmp_path / "killed" / "checkpoints" / "checkpoint-2")
    ema_full = torch.load(tmp_path / "full" / "checkpoints" / "checkpoint-2" / checkpoints.EMA_STATE, weights_only=False)
    ema_killed = torch.load(tmp_path / "killed" / "checkpoints" / "checkpoint-2" / checkpoints.EMA_STATE,
                            weights_only=False)
    for a, b in zip(ema_full["shadow_params"], ema_killed["shadow_params"]):
        assert torch.equal(a, b)

    trained = load_file(tmp_path / "full" / "checkpoints" / "checkpoint-2" / checkpoints.TRAINABLE_WEIGHTS)
    assert any(n.startswith("transformer.") for n in trained) and any("lora_" in n for n in trained)
    assert not any(n.startswith("vlm.") and "lora_" not in n for n in trained)
    pipe = DeepGenPipeline.from_pretrained(final)
    assert has_lora(pipe.vlm)  # final/vlm_lora holds the adapter; final/ holds the EMA weights
    order = trainer.apply_training_schedule(DeepGenPipeline.from_pretrained(start),
                                            load_config(CONFIGS / "tiny-stage2.yaml", overrides))
    shadow = dict(zip([name for name, _ in order], ema_full["shadow_params"]))  # EMA keeps the trainable order
    assert not torch.equal(shadow["connector.projector_1.weight"], trained["connector.projector_1.weight"])
    torch.testing.assert_close(pipe.scb.projector_1.weight, shadow["connector.projector_1.weight"].cpu())


def test_stage_scripts_refuse_the_other_stages_schedule(tmp_path):
    with pytest.raises(ValueError, match="Stage 1 keeps the VLM and the DiT frozen"):
        _run(_load_script("stage1_align"), "tiny-stage1.yaml", tmp_path, "train_transformer=true")
    with pytest.raises(ValueError, match="Stage 2 trains the DiT"):
        _run(_load_script("stage2_sft"), "tiny-stage2.yaml", tmp_path, "train_transformer=false")


@pytest.mark.slow
def test_two_process_gloo_run_through_accelerate(tmp_path):
    """DDP on CPU: `accelerate launch --multi_gpu` with ACCELERATE_USE_CPU picks the gloo backend."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(ROOT / "train" / "stage2_sft.py"),
               "--config", str(CONFIGS / "tiny-stage2.yaml"), f"output_dir={tmp_path}", *DATA]
    result = subprocess.run(command, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    assert json.loads((checkpoint / checkpoints.TRAINER_STATE).read_text())["num_processes"] == 2
    assert (checkpoint / "data_state_0.pt").is_file() and (checkpoint / "data_state_1.pt").is_file()
    assert (checkpoint / "random_states_1.pkl").is_file()
    assert len(_losses(tmp_path)) == 2 and (tmp_path / "final" / "model_index.json").is_file()
