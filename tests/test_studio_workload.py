"""How much one request may do, and in what order (``studio/tasks.py`` with ``studio/zerogpu.py``): each model
loads once per request, the ZeroGPU duration counts exactly those loads, and a request too large for one turn on
the shared queue is refused with a message. Tiny preset contestants, 64x64, 1 step, offline."""

from __future__ import annotations


import pytest

from studio import models
from studio.settings import Settings, StudioInputError
from studio.tasks import Studio
from studio.zerogpu import GPU_OVERHEAD_S, GPU_SAFETY, MAX_GPU_SECONDS, MIN_GPU_SECONDS

FAST = dict(width=64, height=64, steps=1, guidance=4.0, seed=0)
CONTESTANTS = ["tiny", "tiny-b", "tiny-c", "tiny-d"]


@pytest.fixture
def studio(tmp_path, monkeypatch):
    """Four tiny contestants, at most two loaded at once (the running one is never evicted); counts loads."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = tmp_path / "contestants.yaml"
    registry.write_text("contestants:\n" + "".join(
        f"  - {{id: {cid}, label: {cid}, kind: deepgen, source: tiny, steps: 1, guidance: 1.0, "
        f"gpu_seconds_per_step: 0.5, gpu_load_seconds: {10 * (n + 1)}}}\n" for n, cid in enumerate(CONTESTANTS)),
        encoding="utf-8")
    loads: list[str] = []
    real_load = models.load_contestant

    def counting_load(contestant, device):
        loads.append(contestant.id)
        return real_load(contestant, device)

    monkeypatch.setattr(models, "load_contestant", counting_load)
    app = Studio.create(model="tiny", registry=registry, device="cpu", max_loaded=2, output_root=tmp_path / "out")
    app.loads = loads
    yield app
    app.close()


def test_a_prompt_list_on_four_contestants_loads_each_model_once(studio, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"shape {i}\n" for i in range(8)), encoding="utf-8")
    studio.loads.clear()
    result = studio.prompt_batch(CONTESTANTS, str(prompts), **FAST)
    assert sorted(studio.loads) == ["tiny-b", "tiny-c", "tiny-d"]  # the running model was loaded already
    # the record and the grid keep the table order: prompt by prompt, each on every contestant
    assert [(run.prompt, run.contestant_id) for run in result.runs] == [
        (f"shape {i}", cid) for i in range(8) for cid in CONTESTANTS]
    assert all(run.files and run.error is None for run in result.runs)


def test_loaded_contestants_run_first_so_none_is_evicted_before_its_turn(studio):
    studio.manager.get("tiny-c")  # loaded: tiny (running) and tiny-c
    studio.loads.clear()
    result = studio.compare(["tiny-b", "tiny-c"], "a red circle", **FAST)
    assert studio.loads == ["tiny-b"] and [run.contestant_id for run in result.runs] == ["tiny-b", "tiny-c"]


def test_the_gpu_duration_counts_the_loads_that_will_happen(studio):
    studio.manager.get("tiny-c")
    settings = Settings.from_inputs("seed_sweep", contestants=["tiny-b", "tiny-c", "tiny-d"], prompt="x",
                                    num_seeds=2, randomize_seed=False, **FAST)
    denoising = 3 * 0.5 * 1 * 2 * 0.25  # contestants x s/step x steps x seeds x megapixels (64x64 counts as 0.25)
    expected = (GPU_OVERHEAD_S + denoising + 20 + 40) * GPU_SAFETY  # tiny-b and tiny-d load, tiny-c is loaded
    assert studio.gpu_seconds(settings) == pytest.approx(expected, abs=1)
    studio.loads.clear()
    studio.run(settings)
    assert sorted(studio.loads) == ["tiny-b", "tiny-d"]


def test_recommended_settings_size_the_duration_by_each_contestants_steps(studio):
    base = dict(FAST, randomize_seed=False)
    plain = Settings.from_inputs("compare", contestants=["tiny", "tiny-b"], prompt="x", **dict(base, steps=1))
    recommended = Settings.from_inputs("compare", contestants=["tiny", "tiny-b"], prompt="x",
                                       recommended_settings=True, **dict(base, steps=50))
    assert studio.gpu_seconds(recommended) == studio.gpu_seconds(plain)  # both contestants recommend 1 step


def test_a_request_that_is_not_valid_yet_asks_for_the_minimum(studio):
    bad = Settings.from_inputs("compare", contestants=["tiny", "tiny-b"], prompt="x", **dict(FAST, steps="bad"))
    assert studio.gpu_seconds(bad) == MIN_GPU_SECONDS  # it is refused before it runs


def test_a_request_too_large_for_one_turn_is_refused_with_a_message(studio):
    studio.loads.clear()
    with pytest.raises(StudioInputError, match=f"too much work for one turn.*limit is {MAX_GPU_SECONDS} s"):
        studio.seed_sweep(CONTESTANTS, "x", num_seeds=8, width=1024, height=1024, steps=100, guidance=4.0)
    assert studio.loads == []  # refused before any model work
    problems = studio.problems(Settings.from_inputs("seed_sweep", contestants=CONTESTANTS, prompt="x", num_seeds=2,
                                                    width=1024, height=1024, steps=100, guidance=4.0,
                                                    randomize_seed=True))
    assert list(problems) == ["contestants"] and "Use fewer seeds, prompts or contestants" in problems["contestants"]
