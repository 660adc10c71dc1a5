"""Request settings and their limits (``studio/settings.py``)."""

from __future__ import annotations

import pytest

from studio.settings import MAX_SEED, MAX_STEPS, Settings, StudioInputError, aspect_size, seed_list


def test_aspect_presets_keep_the_long_side_in_multiples_of_32():
    assert aspect_size("1:1 square", 512) == (512, 512)
    assert aspect_size("16:9 wide", 1024) == (1024, 576)
    assert aspect_size("3:4 portrait", 512) == (384, 512)
    with pytest.raises(StudioInputError):
        aspect_size("5:1", 512)


def test_page_inputs_become_one_settings_object():
    edit = Settings.from_inputs("edit", images=["a.png"], instruction="make it blue", negative_prompt=None,
                                follow_source=True, width=64, height=64, steps=2, guidance=3.5, seed=7,
                                randomize_seed=True, num_images=3)
    assert (edit.prompt, edit.randomize_seed, edit.count, edit.follow_source) == ("make it blue", True, 3, True)
    assert edit.problems() == {} and edit.resolved().randomize_seed is False  # a seed is drawn once
    sweep = Settings.from_inputs("seed_sweep", contestants=["a", "b"], prompt="x", num_seeds=5, seed=9,
                                 randomize_seed=False)
    assert (sweep.count, sweep.seed) == (5, 9)
    with pytest.raises(TypeError, match="num_seeds"):
        Settings.from_inputs("generate", prompt="x", num_seeds=2)


def test_problems_are_keyed_by_the_api_input_names():
    edit = Settings.from_inputs("edit", instruction=" ", num_images=9, follow_source=True, width=7)
    assert set(edit.problems()) == {"instruction", "num_images"}  # the size is unused when following the source
    sweep = Settings.from_inputs("seed_sweep", prompt="x", num_seeds=99, guidance=float("inf"))
    problems = sweep.problems()
    assert set(problems) == {"num_seeds", "guidance"} and "seed sweep takes 1 to 8" in problems["num_seeds"]
    assert Settings.from_inputs("prompt_batch").problems() == {}  # prompts come from the file
    assert "between 64 and 128" in Settings(prompt="x", width=256).problems(max_side=128)["width"]


@pytest.mark.parametrize("change", [dict(steps=True), dict(seed=MAX_SEED + 1), dict(seed=1.5), dict(width=96.5),
                                    dict(negative_prompt=3), dict(guidance=-1), dict(steps=MAX_STEPS + 1)])
def test_each_limit_is_checked_once_for_every_task(change):
    for task in ("generate", "edit", "compare", "seed_sweep", "prompt_batch"):
        assert Settings(task=task, prompt="x", **change).problems(), (task, change)


def test_resolved_settings_and_the_seed_list():
    settings = Settings(prompt="x", negative_prompt=None, width=64.0, steps=2.0, guidance=3, seed=MAX_SEED - 1,
                        count=3).resolved()
    assert (settings.width, settings.steps, settings.guidance, settings.negative_prompt) == (64, 2, 3.0, "")
    assert settings.seeds == [MAX_SEED - 1, MAX_SEED, 0]  # wraps like the generator's seed range
    drawn = Settings(prompt="x", seed=None).resolved().seed
    assert isinstance(drawn, int) and 0 <= drawn <= MAX_SEED
    assert Settings(task="edit", prompt="x", follow_source=True).resolved().width is None
    assert seed_list(5, 2) == [5, 6]
