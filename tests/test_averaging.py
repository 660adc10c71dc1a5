"""Weight averaging of fine-tuned runs (deepgen.training.averaging, train/average_checkpoints.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from deepgen import DeepGenPipeline
from deepgen.lora import add_lora
from deepgen.training.averaging import average_pipelines, average_state_dicts

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import average_checkpoints  # noqa: E402


def test_weighted_average_of_differing_tensors_and_bit_exact_copies_of_shared_ones():
    shared = torch.randn(3, 3)
    a = {"w": torch.tensor([0.0, 1.0]), "shared": shared, "steps": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 5.0]), "shared": shared.clone(), "steps": torch.tensor(7)}
    averaged, differing = average_state_dicts([a, b])
    assert differing == ["w"]
    torch.testing.assert_close(averaged["w"], torch.tensor([1.5, 3.0]))
    assert torch.equal(averaged["shared"], shared) and averaged["steps"].item() == 7
    weighted, _ = average_state_dicts([a, b], weights=[3, 1])  # normalised to 0.75 / 0.25
    torch.testing.assert_close(weighted["w"], torch.tensor([0.75, 2.0]))


@pytest.mark.parametrize("other, message", [
    ({"w": torch.zeros(3)}, "is \\(3,\\)"),
    ({"v": torch.zeros(2)}, "other weights"),
    ({"w": torch.zeros(2, dtype=torch.float16)}, "torch.float16"),
])
def test_mismatched_models_are_refused(other, message):
    with pytest.raises(ValueError, match=message):
        average_state_dicts([{"w": torch.ones(2)}, other])


def test_bad_weights_differing_counters_and_lora_factors_are_refused():
    a, b = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="one weight per model"):
        average_state_dicts([a, b], weights=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        average_state_dicts([a, b], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="at least two"):
        average_state_dicts([a])
    with pytest.raises(ValueError, match="cannot be averaged"):
        average_state_dicts([{"n": torch.tensor(1)}, {"n": torch.tensor(2)}])
    with pytest.raises(ValueError, match="B @ A"):
        average_state_dicts([{"x.lora_A.weight": torch.ones(2)}, {"x.lora_A.weight": torch.zeros(2)}])


def _tiny(seed: int, transformer_seed: int) -> DeepGenPipeline:
    pipe = DeepGenPipeline.from_config("tiny", seed=seed)
    torch.manual_seed(transformer_seed)
    with torch.no_grad():
        for parameter in pipe.transformer.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return pipe


def test_pipelines_average_only_the_components_that_differ():
    pipes = [_tiny(0, 1), _tiny(0, 2)]
    expected = {name: (p0 + p1) / 2 for (name, p0), (_, p1) in
                zip(pipes[0].transformer.named_parameters(), pipes[1].transformer.named_parameters())}
    vlm_before = {k: v.clone() for k, v in pipes[0].vlm.state_dict().items()}
    counts = average_pipelines(pipes)
    assert counts["transformer"] > 0 and counts["vlm"] == counts["connector"] == counts["vae"] == 0
    for name, parameter in pipes[0].transformer.named_parameters():
        torch.testing.assert_close(parameter, expected[name])
    for key, value in pipes[0].vlm.state_dict().items():
        assert torch.equal(value, vlm_before[key])


def test_pipelines_with_different_lora_are_refused_with_the_component_named():
    pipes = [_tiny(0, 1), _tiny(0, 1)]
    for seed, pipe in enumerate(pipes):
        torch.manual_seed(seed)
        add_lora(pipe.vlm, rank=2, alpha=2)
    with pytest.raises(ValueError, match="^vlm: .*B @ A"):
        average_pipelines(pipes)


def test_cli_writes_a_loadable_average(tmp_path, monkeypatch, capsys):
    for index in (1, 2):
        _tiny(0, index).save_pretrained(tmp_path / f"run{index}")
    out = tmp_path / "avg"
    monkeypatch.setattr(sys, "argv", ["average_checkpoints.py", str(tmp_path / "run1"), str(tmp_path / "run2"),
                                      "--out", str(out)])
    average_checkpoints.main()
    assert "vlm identical" in capsys.readouterr().out
    averaged = DeepGenPipeline.from_pretrained(out)
    runs = [DeepGenPipeline.from_pretrained(tmp_path / f"run{index}") for index in (1, 2)]
    for (name, p), (_, p1), (_, p2) in zip(averaged.transformer.named_parameters(),
                                           runs[0].transformer.named_parameters(),
                                           runs[1].transformer.named_parameters()):
        torch.testing.assert_close(p, (p1 + p2) / 2, msg=name)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["avg", "run1", "run2"]  # no temp folders left
