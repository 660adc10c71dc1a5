"""Stage 3 (MR-GRPO) end to end on `tiny`: smoke run, exact resume, per-reward logs, config errors, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loopback import free_port
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "train" / "configs" / "tiny-stage3.yaml")
sys.path.insert(0, str(ROOT / "train"))

import plot_rewards  # noqa: E402
import stage3_grpo  # noqa: E402

# Even smaller than the CI config: 2 sampler steps (one stochastic CPS step), one update per step.
FAST = ["grpo.num_inference_steps=2", "grpo.updates_per_step=1"]


@pytest.fixture
def data(tiny_data) -> str:
    """The SFT-aux data override: the tiny config's parquet shards, written by train/nano/make_data.py."""
    return f"data.sources.0.path={tiny_data}"


def _log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "loss_log.jsonl").read_text().splitlines() if line.strip()]


def _weights(output_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "checkpoints" / f"checkpoint-{step}" / "trainable.safetensors"))


def test_two_step_run_checkpoints_resumes_exactly_and_logs_every_reward(tmp_path, data):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    final = stage3_grpo.main(["--config", CONFIG, f"output_dir={straight}", data, *FAST])
    stage3_grpo.main(["--config", CONFIG, f"output_dir={resumed}", data, "max_steps=1", "save_final=false", *FAST])
    stage3_grpo.main(["--config", CONFIG, f"output_dir={resumed}", data, *FAST])  # continues from checkpoint-1

    from deepgen import DeepGenPipeline

    assert DeepGenPipeline.from_pretrained(final) is not None
    a, b = _weights(straight, 2), _weights(resumed, 2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = _log(straight)
    assert [row["step"] for row in rows] == [1, 2] == [row["step"] for row in _log(resumed)]
    for row in rows:
        assert {"reward/shapeeval", "reward/total", "policy_loss", "kl", "sft_loss", "ratio_mean"} <= row.keys()
    # One update per step: every transition is re-scored by the policy that sampled it, so the ratio is exactly 1.
    assert all(row["ratio_mean"] == 1.0 and row["clip_fraction"] == 0.0 for row in rows)

    png = tmp_path / "rewards.png"
    plot_rewards.main([str(straight / "loss_log.jsonl"), "--out", str(png), "--smooth", "2"])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_the_authors_rl_options_run(tmp_path, data):
    """Shared noise, their log-prob and KL forms, per-sample weights on the advantages: one step runs and logs."""
    stage3_grpo.main(["--config", CONFIG, f"output_dir={tmp_path}", data, "max_steps=1", "save_final=false", *FAST,
                      "grpo.shared_noise=true", "grpo.log_prob_form=negative_squared_error",
                      "grpo.kl_form=velocity_over_variance", "grpo.sample_weights_on=advantages"])
    (row,) = _log(tmp_path)
    assert row["ratio_mean"] == 1.0 and row["kl"] == 0.0 and "reward/shapeeval" in row
    with pytest.raises(ValueError, match="sample_weights_on=advantages"):
        stage3_grpo.load_stage3_config(CONFIG, ["grpo.sample_weights_on=advantages", "grpo.advantage=grpo"])


def test_reward_log_reads_the_last_row_per_step_up_to_max_step(tmp_path):
    log = tmp_path / "loss_log.jsonl"
    rows = [{"step": 1, "reward/a": 0.1}, {"step": 2, "reward/a": 0.2}, {"step": 2, "reward/a": 0.25},
            {"step": 3, "reward/a": 0.3}, {"step": 3, "eval/a": 0.9}]
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))  # step 2 repeated by a resume
    assert [row["reward/a"] for row in plot_rewards.read_log(log)] == [0.1, 0.25, 0.3]
    assert [row["step"] for row in plot_rewards.read_log(log, max_step=2)] == [1, 2]


def test_config_overrides_and_errors():
    train, grpo = stage3_grpo.load_stage3_config(CONFIG, ["grpo.kl_beta=0", "grpo.rewards.glyph=null",
                                                         "grpo.prompts.options.samples=4", "optim.lr=1e-5"])
    assert grpo.kl_beta == 0.0 and grpo.rewards["glyph"] is None and grpo.prompts.options["samples"] == 4
    assert train.optim.lr == 1e-5 and grpo.rewards["shapeeval"].weight == 1.0
    with pytest.raises(ValueError, match="grpo.nonsense"):
        stage3_grpo.load_stage3_config(CONFIG, ["grpo.nonsense=1"])
    with pytest.raises(ValueError, match="sde_type"):
        stage3_grpo.load_stage3_config(CONFIG, ["grpo.sde_type=ddim"])
    with pytest.raises(ValueError, match="DiT only"):
        stage3_grpo.load_stage3_config(CONFIG, ["train_connector=true"])
    with pytest.raises(ValueError, match="no reward"):
        stage3_grpo.load_stage3_config(CONFIG, ["grpo.rewards.shapeeval=null", "grpo.rewards.glyph=null"])


def test_authors_config_loads_with_their_defaults():
    train, grpo = stage3_grpo.load_stage3_config(str(ROOT / "train" / "configs" / "deepgen-1.0-stage3.yaml"))
    authors = (2e-6, 8, 1e-4, 5e-7, 1e-4)
    assert (train.optim.lr, grpo.group_size, grpo.clip_range, grpo.kl_beta, grpo.sft_lambda) == authors
    assert (grpo.num_inference_steps, train.data.resolution, grpo.timestep_fraction) == (50, 512, 0.6)
    assert (grpo.sde_type, grpo.advantage) == ("cps", "gdpo")
    assert {"vlm_judge", "ocr", "clip"} == {k for k, v in grpo.rewards.items() if v is not None}
    # docs/training.md: conditional-only rollouts with eta 1.0, constant lr after 20 warm-up steps, no weight decay.
    assert (grpo.guidance_scale, grpo.noise_level) == (1.0, 1.0)
    assert (train.optim.lr_scheduler, train.optim.warmup_steps, train.optim.weight_decay) == \
        ("constant_with_warmup", 20, 0.0)
    assert (grpo.shared_noise, grpo.log_prob_form, grpo.kl_form, grpo.sample_weights_on, grpo.updates_per_step) == \
        (True, "negative_squared_error", "velocity_over_variance", "advantages", 1)


def test_nano_config_is_the_shipped_recipe():
    """deepgen-nano (RL) averages three runs of this config (docs/rl.md, round 7); it must stay what they ran."""
    train, grpo = stage3_grpo.load_stage3_config(str(ROOT / "train" / "configs" / "nano-stage3.yaml"))
    assert (train.optim.lr, train.max_steps, grpo.kl_beta, grpo.sft_lambda) == (5e-5, 60, 0.0, 0.0)
    assert grpo.prompts.options["capabilities"] == ["generation", "reasoning_generation"]
    assert {k for k, v in grpo.rewards.items() if v is not None} == {"shapeeval"}
    assert (grpo.sde_type, grpo.num_inference_steps, grpo.guidance_scale) == ("flow_grpo", 12, 3.0)


def test_two_processes_through_accelerate(tmp_path, data):
    """`accelerate launch` with 2 CPU processes (gloo): rewards are gathered for GDPO, gradients all-reduced."""
    # accelerate's CPU multi-process mode: the torchrun launcher (--multi_gpu) with ACCELERATE_USE_CPU -> gloo.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               str(ROOT / "train" / "stage3_grpo.py"), "--config", CONFIG, f"output_dir={tmp_path}", "max_steps=1",
               data, *FAST]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    assert "reward/shapeeval" in _log(tmp_path)[0]
    assert (tmp_path / "final" / "model_index.json").is_file()
