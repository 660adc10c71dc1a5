"""train/evaluate.py: ShapeEval of a pipeline on a world split (tiny random model, so only plumbing and
determinism are checked here; the scores themselves are ShapeEval's, tested in test_shapeeval.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import compare_evals  # noqa: E402
import evaluate  # noqa: E402

from deepgen.nano import world  # noqa: E402


def test_generate_is_deterministic_uint8_per_sample(tiny_pipe):
    samples = world.dataset("eval", 4, seed=3)  # text-to-image rows and edits
    assert {s.source is None for s in samples} == {True, False}
    first = evaluate.generate(tiny_pipe, samples, size=32, steps=2, batch_size=2)
    again = evaluate.generate(tiny_pipe, samples, size=32, steps=2, batch_size=2)
    assert len(first) == len(samples)
    for a, b in zip(first, again):
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)


def test_evaluate_pipeline_scores_every_capability_of_the_chosen_split(tiny_pipe, monkeypatch):
    drawn = []
    original = world.dataset

    def spy(split, *args, **kwargs):
        drawn.append(split)
        return original(split, *args, **kwargs)

    monkeypatch.setattr(evaluate.world, "dataset", spy)
    for split in ("eval", "train"):
        results = evaluate.evaluate_pipeline(tiny_pipe, per_capability=1, steps=2, size=32, split=split)
        assert set(results["capabilities"]) == set(world.CAPABILITIES)
        assert all(scores["n"] == 1 for scores in results["capabilities"].values())
        assert 0.0 <= results["overall"] <= 1.0
    assert drawn == ["eval", "train"]


def test_evaluate_pipeline_can_score_some_capabilities_only(tiny_pipe):
    results = evaluate.evaluate_pipeline(tiny_pipe, per_capability=3, steps=1, size=32, split="train",
                                         capabilities=("generation", "text_rendering"))
    assert set(results["capabilities"]) == {"generation", "text_rendering"}
    assert all(scores["n"] == 3 for scores in results["capabilities"].values())


def test_single_object_scores_are_split_by_shape_colour_pair(tiny_pipe):
    results = evaluate.evaluate_pipeline(tiny_pipe, per_capability=12, steps=1, size=32)
    subsets = results["subsets"]
    pairs = {name: scores for name, scores in subsets.items() if name.startswith("generation_single/")}
    assert pairs and sum(scores["n"] for scores in pairs.values()) == subsets["generation_single"]["n"]
    for name in pairs:
        colour, shape = name.removeprefix("generation_single/").split()
        assert world.is_held_out(shape, colour)  # the eval split only holds held-out pairs
    mean_shape = sum(s["shape"] * s["n"] for s in pairs.values()) / subsets["generation_single"]["n"]
    assert mean_shape == pytest.approx(subsets["generation_single"]["shape"])


def test_edit_scores_are_split_by_operation(tiny_pipe):
    results = evaluate.evaluate_pipeline(tiny_pipe, per_capability=12, steps=1, size=32,
                                         capabilities=("editing", "reasoning_editing"))
    for capability in ("editing", "reasoning_editing"):
        parts = {name.split("/")[1]: scores for name, scores in results["subsets"].items()
                 if name.startswith(capability + "/")}
        assert parts and set(parts) <= set(world.EDIT_OPERATIONS)
        whole = results["capabilities"][capability]
        assert sum(scores["n"] for scores in parts.values()) == whole["n"] == 12
        for criterion in ("instruction", "preservation", "overall"):
            mean = sum(scores[criterion] * scores["n"] for scores in parts.values()) / whole["n"]
            assert mean == pytest.approx(whole[criterion])


def test_cli_writes_json_record(tiny_pipe, tmp_path, monkeypatch, capsys):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "eval" / "tiny.json"
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--model", str(tmp_path / "pipe"), "--per-capability", "1",
                                      "--steps", "2", "--size", "32", "--split", "train", "--out", str(out)])
    evaluate.main()
    record = json.loads(out.read_text())
    assert record["settings"]["split"] == "train"
    assert set(record["capabilities"]) == set(world.CAPABILITIES)
    assert "| **overall** |" in capsys.readouterr().out


def test_compare_cli_pairs_two_models_on_the_same_samples(tiny_pipe, tmp_path, monkeypatch, capsys):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    common = ["--model", str(tmp_path / "pipe"), "--per-capability", "2", "--steps", "1", "--size", "32"]
    for name, extra in (("a", []), ("b", []), ("other", ["--eval-seed", "1"])):
        monkeypatch.setattr(sys, "argv", ["evaluate.py", *common, *extra, "--out", str(tmp_path / f"{name}.json")])
        evaluate.main()
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["compare_evals.py", "--base", str(tmp_path / "a.json"),
                                      "--candidate", str(tmp_path / "b.json"), "--resamples", "100",
                                      "--tolerance", "0.01", "0.01"])
    compare_evals.main()
    table = capsys.readouterr().out
    assert "| **overall** | 10 |" in table and "+0.000 | [+0.000, +0.000] |" in table  # same model, same samples
    assert table.rstrip().endswith("within the tolerance (overall >= -0.010, every capability >= -0.010)")
    with pytest.raises(ValueError, match="different settings \\(eval_seed\\)"):
        compare_evals.load_pairs([tmp_path / "a.json"], [tmp_path / "other.json"])


def test_tolerance_verdict_names_each_loss_beyond_its_limit():
    def row(delta):
        return {"n": 100, "base": 0.5, "candidate": 0.5 + delta, "delta": delta, "low": delta - 0.1, "high": delta}

    table = {"generation": row(-0.059), "text_rendering": row(-0.061), "overall": row(-0.02)}
    verdict = compare_evals.tolerance_verdict(table, 0.03, 0.06)
    assert verdict.startswith("outside the tolerance (overall >= -0.030, every capability >= -0.060)")
    assert "text_rendering -0.061 < -0.060" in verdict and "generation" not in verdict
    table["text_rendering"] = row(+0.2)
    assert compare_evals.tolerance_verdict(table, 0.03, 0.06).startswith("within the tolerance")
    table["overall"] = row(-0.031)
    assert compare_evals.tolerance_verdict(table, 0.03, 0.06).endswith("overall -0.031 < -0.030")
    with pytest.raises(ValueError, match="Tolerances are losses"):
        compare_evals.tolerance_verdict(table, -0.03, 0.06)


def test_tolerance_verdict_holds_the_plain_prompts_to_their_targets_pooled_over_draws():
    def draw(n, count):
        return {"subsets": {"plain": {"n": n, "count": count, "colour": 1.0, "shape": 0.9}}}

    plain = compare_evals.plain_scores([draw(100, 0.95), draw(300, 0.85)])
    assert plain == pytest.approx({"count": 0.875, "colour": 1.0, "shape": 0.9})
    table = {"overall": {"n": 400, "base": 0.6, "candidate": 0.6, "delta": 0.0, "low": -0.01, "high": 0.01}}
    targets = {"count": 0.9, "colour": 0.95, "shape": 0.85}
    verdict = compare_evals.tolerance_verdict(table, 0.03, 0.06, plain=plain, plain_targets=targets)
    assert verdict.startswith("outside the tolerance (overall >= -0.030, every capability >= -0.060, plain count "
                              ">= 0.90, colour >= 0.95, shape >= 0.85)")
    assert verdict.endswith(": plain count 0.875 < 0.900")
    assert compare_evals.tolerance_verdict(table, 0.03, 0.06, plain=plain, plain_targets={"count": 0.85},
                                           ).startswith("within the tolerance")
    with pytest.raises(ValueError, match="no plain-prompt subset"):
        compare_evals.plain_scores([draw(100, 1.0), {"subsets": {}}])


def test_plain_prompts_are_scored_apart_from_the_capabilities(tiny_pipe):
    without = evaluate.evaluate_pipeline(tiny_pipe, per_capability=2, steps=1, size=32)
    results = evaluate.evaluate_pipeline(tiny_pipe, per_capability=2, steps=1, size=32, plain=3)
    plain = results["subsets"].pop("plain")
    assert plain["n"] == 3 and set(plain) == {"n", "colour", "shape", "count", "overall", "correct"}
    # The five capabilities' samples, images and scores are exactly those of a run without plain prompts.
    assert results == without


def test_results_table_pools_draws_by_sample_count(tmp_path, capsys):
    """A row of several draws is their sample-weighted mean, as compare_evals pools them."""
    sys.path.insert(0, str(ROOT / "train" / "nano"))
    import results_table

    def draw(name, n, score, plain_count):
        capabilities = {c: {"n": n, "overall": score, "correct": score / 2} for c in world.CAPABILITIES}
        subsets = {"plain": {"n": n, "colour": 1.0, "shape": 0.5, "count": plain_count}}
        (tmp_path / name).write_text(json.dumps({"capabilities": capabilities, "subsets": subsets,
                                                 "overall": score}))

    draw("seed10-m.json", 100, 0.5, 0.2)
    draw("seed11-m.json", 300, 0.9, 0.6)
    pooled = results_table.pooled_results(results_table.expand(str(tmp_path / "seed1[0-1]-m.json")))
    assert pooled["overall"] == pytest.approx(0.8)
    assert pooled["capabilities"]["editing"] == pytest.approx({"n": 400, "overall": 0.8, "correct": 0.4})
    assert pooled["subsets"]["plain"]["count"] == pytest.approx(0.5)
    assert pooled["subsets"]["generation_single"] is None
    with pytest.raises(SystemExit, match="no file matches"):
        results_table.expand(str(tmp_path / "seed9*-m.json"))
