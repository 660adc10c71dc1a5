"""train/nano/run_all.sh: each profile's commands, in order, with ``python`` replaced by a recorder (dry runs), and
the smoke profile run for real: every script of the recipe, a step or two each."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from loopback import free_port

from deepgen.nano import world

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train" / "nano" / "run_all.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="run_all.sh needs bash")


def dry_run(tmp_path: Path, profile: str, **variables: str) -> subprocess.CompletedProcess:
    """Run a copy of the script in ``tmp_path`` (so its folders land there) with a ``python`` that logs argv."""
    (tmp_path / "train" / "nano").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp_path / "train" / "nano" / "run_all.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text('#!/bin/sh\necho "$OMP_NUM_THREADS ACCELERATE_USE_CPU=$ACCELERATE_USE_CPU $*" >> "$CALLS"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PROFILE": profile,
           "CALLS": str(tmp_path / "calls.txt"), **variables}
    for name in ("RUNS", "ASSETS", "SHIP_RL"):
        if name not in variables:
            env.pop(name, None)
    return subprocess.run(["bash", str(tmp_path / "train" / "nano" / "run_all.sh")], check=False, env=env,
                          capture_output=True, text=True, timeout=60)


LAUNCHER = ["-m", "accelerate.commands.launch"]


def calls(tmp_path: Path) -> list[list[str]]:
    """Each recorded ``python`` call as [OMP_NUM_THREADS, script, *args]; an accelerate launch keeps its environment
    (``ACCELERATE_USE_CPU=...``) and options in args, before the script."""
    recorded = []
    for line in (tmp_path / "calls.txt").read_text().splitlines():
        threads, use_cpu, *argv = line.split()
        if argv[:2] == LAUNCHER:
            script = next(arg for arg in argv if arg.endswith(".py"))
            argv = [script, use_cpu, *argv[2:]]
        recorded.append([threads, *argv])
    return recorded


@pytest.mark.parametrize("profile", ["full", "hour"])
def test_every_step_names_an_existing_script_and_config(tmp_path, profile):
    result = dry_run(tmp_path, profile)
    assert result.returncode == 0, result.stderr
    steps = calls(tmp_path)
    for threads, script, *args in steps:
        assert threads in {"1", "2"}
        assert (REPO / script).is_file(), script
        if "--config" in args:
            assert (REPO / args[args.index("--config") + 1]).is_file()
    scripts = [Path(script).name for _, script, *_ in steps]
    pretraining = ["pretrain_vae.py", "pretrain_dit.py"] if profile == "full" else []
    order = ["make_data.py", *pretraining, "assemble_base.py", "stage1_align.py", "stage2_sft.py", "evaluate.py",
             "results_table.py"]
    assert [s for s in dict.fromkeys(scripts) if s in order] == order


def test_hour_profile_runs_the_deepgen_stages_on_the_shipped_base_and_holds_them_to_the_shipped_model(tmp_path):
    assert dry_run(tmp_path, "hour").returncode == 0
    steps = [" ".join(args) for args in calls(tmp_path)]
    runs = "runs/nano-hour"
    assert all(runs in step for step in steps if "make_data" in step or "stage" in step)
    # The base parts are the built-in stage 1's (never trained by stage 1), under a fresh bridge; nothing pretrained.
    assert not any(name in step for step in steps for name in ("pretrain_vae.py", "pretrain_vlm.py", "pretrain_dit"))
    assemble = next(step for step in steps if "assemble_base.py" in step)
    assert "--from-pipeline deepgen/assets/deepgen-nano-stage1 --out runs/nano-hour/base" in assemble
    # Both stages cut (docs/nano.md), each as two single-threaded DDP processes of 8: the shipped 16 per step.
    stage1 = next(step for step in steps if "stage1_align.py" in step)
    stage2 = next(step for step in steps if "stage2_sft.py" in step)
    assert "max_steps=4000" in stage1 and "data.sources.0.path=runs/nano-hour/data-v1 " in stage1
    assert "max_steps=3200" in stage2 and "path: runs/nano-hour/data-v1, weight: 0.5" in stage2
    for stage in (stage1, stage2):
        assert stage.startswith("1 train/stage") and "batch_size=8" in stage
        assert "ACCELERATE_USE_CPU=true --multi_gpu --num_processes 2" in stage
    # Its stage 2 and the shipped one are scored on the same fresh draw, then compared with the stated tolerance.
    evaluations = [step for step in steps if "evaluate.py" in step]
    evaluated = [step.split("--model ")[1].split()[0] for step in evaluations]
    assert sorted(evaluated) == ["deepgen/assets/deepgen-nano-sft", "runs/nano-hour/sft/final"]  # side by side
    assert all("--eval-seed 46 --threads 1" in step for step in evaluations)
    for builtin in ("deepgen-nano-stage1", "deepgen-nano-sft"):
        assert (REPO / "deepgen" / "assets" / builtin / "model_index.json").is_file()
    compare = next(step for step in steps if "compare_evals.py" in step)
    assert ("--base runs/nano-hour/eval/reference.json --candidate runs/nano-hour/eval/sft.json "
            "--tolerance 0.03 0.06 --plain-targets 0.9 0.95 0.85") in compare
    # No shipping over the built-in models, no ablation, no stage 3.
    assert not any(name in step for step in steps for name in ("ship.py", "lastlayer", "stage3_grpo.py"))


@pytest.mark.slow
def test_hour_profile_launch_really_starts_two_processes(tmp_path, tiny_data):
    """The hour profile's stage launch, replayed on the tiny config: two ranks train (a launch line that starts one
    process, as `--cpu --num_processes 2` does, would train on half the batch)."""
    assert dry_run(tmp_path, "hour").returncode == 0
    launch = next(args for args in calls(tmp_path) if args[1].endswith("stage1_align.py"))
    environment, options = launch[2], launch[3:launch.index(launch[1], 3)]  # the options before the script
    name, value = environment.split("=")
    out = tmp_path / "stage1"
    command = [sys.executable, *LAUNCHER, *options, "--main_process_port", str(free_port()), str(REPO / launch[1]),
               "--config", str(REPO / "train" / "configs" / "tiny-stage1.yaml"), f"output_dir={out}",
               f"data.sources.0.path={tiny_data}", "batch_size=2"]
    env = {**os.environ, name: value, "OMP_NUM_THREADS": launch[0], "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(next((out / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["num_processes"] == 2
    assert "2 process(es) x 2 samples x 1 accumulation step(s) = 4 samples per optimiser step." in result.stderr


def test_full_profile_ships_stages_1_and_2_and_scores_stage3(tmp_path):
    assert dry_run(tmp_path, "full").returncode == 0
    steps = [" ".join(args) for args in calls(tmp_path)]
    assert "--steps 6000 --batch-size 256 --lr 1e-3" in next(step for step in steps if "pretrain_dit.py" in step)
    # Stage 2 as shipped (docs/nano.md, nano14): 6,000 steps on the latest prompt version and version 1, equal weight.
    assert any("--prompt-version 1" in step for step in steps if "make_data.py" in step)
    stage2 = next(step for step in steps if "stage2_sft.py" in step)
    assert "max_steps=6000" in stage2 and "path: runs/nano/data, weight: 0.5" in stage2
    assert "path: runs/nano/data-v1, weight: 0.5" in stage2
    # Stage 3 as round 10 ran it (docs/rl.md): three seeds on prompt version 3, averaged, scored beside stage 2; it
    # fell short of stage 2, so it ships only when asked.
    rl = [step for step in steps if "stage3_grpo.py" in step]
    assert len(rl) == 3 and all("grpo.prompts.options.prompt_version=3" in step for step in rl)
    assert any("evaluate.py --model runs/nano/rl-avg" in step for step in steps)
    assert any("compare_evals.py --base runs/nano/eval/sft.json --candidate runs/nano/eval/rl.json" in step
               for step in steps)
    ships = [step.split()[-1] for step in steps if "ship.py" in step]
    assert ships == ["deepgen/assets/deepgen-nano-stage1", "deepgen/assets/deepgen-nano-sft"]


def test_full_profile_ships_stage3_when_asked(tmp_path):
    assert dry_run(tmp_path, "full", SHIP_RL="1").returncode == 0
    ships = [args[-1] for args in calls(tmp_path) if "train/nano/ship.py" in args]
    assert ships[-1] == "deepgen/assets/deepgen-nano-rl" and len(ships) == 3


def test_unknown_profile_is_refused(tmp_path):
    result = dry_run(tmp_path, "weekend")
    assert result.returncode == 2
    assert "PROFILE must be 'full', 'hour' or 'smoke', got 'weekend'" in result.stderr
    assert not (tmp_path / "calls.txt").exists()


def test_smoke_profile_never_ships_into_the_builtin_models(tmp_path):
    result = dry_run(tmp_path, "smoke", ASSETS="deepgen/assets/")
    assert result.returncode == 2
    assert "never ships into deepgen/assets" in result.stderr
    assert not (tmp_path / "calls.txt").exists()


def test_smoke_profile_dry_run_ships_into_its_own_folder(tmp_path):
    assert dry_run(tmp_path, "smoke", RUNS="out").returncode == 0
    steps = [" ".join(args) for args in calls(tmp_path)]
    ships = [step.split()[-1] for step in steps if "ship.py" in step]
    assert ships == ["out/assets/deepgen-nano-stage1", "out/assets/deepgen-nano-sft", "out/assets/deepgen-nano-rl"]
    assert any("stage3_grpo.py" in step and "model.pretrained=out/assets/deepgen-nano-sft" in step for step in steps)


def _tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
def test_smoke_profile_runs_every_script_for_real(tmp_path):
    """~20 real processes (data, VAE/VLM/DiT pretraining, assembly, stages 1-3, shipping, evaluation, tables)."""
    runs = tmp_path / "runs"
    assets = REPO / "deepgen" / "assets"
    before = _tree_state(assets)
    env = {**os.environ, "PROFILE": "smoke", "RUNS": str(runs), "PYTHONPATH": str(REPO)}
    env.pop("ASSETS", None)
    env.pop("SHIP_RL", None)
    result = subprocess.run(["bash", str(SCRIPT)], check=False, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = ["data/train-00000.parquet", "vae/config.json", "vae/reconstruction_shapeeval.json",
                "vae-decoder/config.json", "vlm/config.json", "vlm/answer_accuracy.json",
                "dit/transformer/config.json", "dit/standin_shapeeval.json", "base/model_index.json",
                "stage1/final/model_index.json", "sft/final/model_index.json",
                "rl-s0/final/model_index.json", "rl-s1/final/model_index.json", "rl-s2/final/model_index.json",
                "rl-avg/model_index.json", "eval/base.json", "eval/stage1.json", "eval/sft.json", "eval/rl.json",
                "eval/results.md"]
    expected += [f"assets/deepgen-nano-{stage}/model_index.json" for stage in ("stage1", "sft", "rl")]
    missing = [path for path in expected if not (runs / path).is_file()]
    assert not missing, missing
    for name in ("base", "stage1", "sft", "rl"):
        scores = json.loads((runs / "eval" / f"{name}.json").read_text())
        assert set(scores["capabilities"]) == set(world.CAPABILITIES)
    table = (runs / "eval" / "results.md").read_text().splitlines()
    assert table[0].startswith("| model |")
    assert [row.split("|")[1].strip() for row in table[2:]] == [
        "base (fresh bridge)", "stage 1", "stage 2 (SFT)", "reference: base DiT + its stand-in text encoder"]
    assert _tree_state(assets) == before  # the built-in models are untouched
