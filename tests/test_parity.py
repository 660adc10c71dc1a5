"""Numerical parity with the authors' reference implementation, on the golden fixture (golden/FIXTURE.md).

The fixture's native checkpoint (with VLM LoRA) is loaded once per module; each of the five cases is generated
once, with hooks that record what the pipeline actually computed (LLM inputs, DiT inputs/outputs, the guided
velocity handed to every Euler step, the latents after every step), and every recorded tensor is compared with
``golden/cases/<case>.safetensors``. Tolerances are FIXTURE.md §7: ids, masks and position ids exact; atol 1e-4
+ rtol 1e-4 on hidden states, SCB outputs, velocities and latents; atol 2e-4 on the decoded image; PNGs within 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from conftest import GOLDEN
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from safetensors.torch import load_file

from deepgen import DeepGenPipeline, load_image
from deepgen.image_processing import vit_patches
from deepgen.lora import has_lora
from deepgen.qwen_adapter import image_features
from deepgen.vlm import vlm_hidden_states

ATOL, RTOL = 1e-4, 1e-4
DECODED_ATOL = 2e-4
NUM_STEPS, GUIDANCE = 4, 4.0
T2I_PROMPTS = ["a red circle on the left and a blue square on the right", "a small green triangle at the top"]


@dataclass(frozen=True)
class Case:
    prompts: list[str]
    noise_seed: int
    size: int
    scheduler: str = "scheduler"
    edit: bool = False
    vae_sample_seed: int = 7  # FIXTURE §5: global torch.manual_seed(7) drove the reference's posterior sample


CASES = {
    "t2i_batch2": Case(T2I_PROMPTS, noise_seed=42, size=64),
    "t2i_single": Case(T2I_PROMPTS[1:], noise_seed=43, size=64),
    "edit": Case(["make the circle green"], noise_seed=44, size=128, edit=True),
    "t2i_batch2_dynshift": Case(T2I_PROMPTS, noise_seed=42, size=64, scheduler="scheduler_dynamic"),
    "edit_dynshift": Case(["make the circle green"], noise_seed=44, size=128, scheduler="scheduler_dynamic", edit=True),
}
STATIC_CASES = [name for name, case in CASES.items() if case.scheduler == "scheduler"]  # these store SCB tensors
EDIT_CASES = [name for name, case in CASES.items() if case.edit]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str, atol: float = ATOL,
                 rtol: float = RTOL) -> None:
    torch.testing.assert_close(actual.detach().float().cpu(), expected.float(), atol=atol, rtol=rtol,
                               msg=lambda message: f"{name}: {message}")


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    actual = actual.detach().cpu().to(expected.dtype)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.equal(actual, expected), f"{name}: {(actual != expected).sum().item()} elements differ"


class RecordingScheduler(FlowMatchEulerDiscreteScheduler):
    """The stock scheduler, recording the (CFG-combined) velocity the pipeline hands to every Euler step."""

    def step(self, model_output: torch.Tensor, *args, **kwargs):
        self.recorded_velocities.append(model_output.detach().clone())
        return super().step(model_output, *args, **kwargs)


@dataclass
class Run:
    """What one pipeline call computed."""

    output: object
    llm_kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    dit_inputs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    dit_outputs: list[torch.Tensor] = field(default_factory=list)
    latents_after_step: list[torch.Tensor] = field(default_factory=list)
    guided_velocities: list[torch.Tensor] = field(default_factory=list)
    timesteps: Optional[torch.Tensor] = None
    sigmas: Optional[torch.Tensor] = None


class ParityRunner:
    """Runs each case at most once per output type and caches the recordings."""

    def __init__(self, pipe: DeepGenPipeline, golden: Path):
        self.pipe, self.golden = pipe, golden
        self._runs: dict[tuple, Run] = {}
        self._refs: dict[str, dict[str, torch.Tensor]] = {}

    def ref(self, case: str) -> dict[str, torch.Tensor]:
        if case not in self._refs:
            self._refs[case] = load_file(self.golden / "cases" / f"{case}.safetensors")
        return self._refs[case]

    def source(self) -> Image.Image:
        return load_image(self.golden / "source.png")

    def references(self, case: str) -> Optional[list[list[torch.Tensor]]]:
        """The pipeline's own preprocessing of the edit source (per-prompt lists of [-1, 1] tensors)."""
        spec = CASES[case]
        if not spec.edit:
            return None
        tensors, _, _ = self.pipe.prepare_images(self.source(), len(spec.prompts), spec.size, spec.size)
        return tensors

    def run(self, case: str, output_type: str = "latent", with_image_latents: bool = False) -> Run:
        key = (case, output_type, with_image_latents)
        if key not in self._runs:
            self._runs[key] = self._generate(case, output_type, with_image_latents)
        return self._runs[key]

    def _generate(self, case: str, output_type: str, with_image_latents: bool) -> Run:
        spec, pipe = CASES[case], self.pipe
        scheduler = RecordingScheduler.from_pretrained(self.golden / spec.scheduler)
        scheduler.recorded_velocities = []
        pipe.scheduler = scheduler
        run = Run(output=None)

        def record_llm(module, args, kwargs):
            run.llm_kwargs = {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}

        def record_dit(module, args, kwargs, output):
            run.dit_inputs.append({k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
            run.dit_outputs.append(output[0].detach().clone())

        def record_step(pipeline, step, timestep, tensors):
            run.latents_after_step.append(tensors["latents"].detach().clone())
            return {}

        hooks = [
            pipe.vlm.model.language_model.register_forward_pre_hook(record_llm, with_kwargs=True),
            pipe.transformer.register_forward_hook(record_dit, with_kwargs=True),
        ]
        kwargs = {}
        if spec.edit:
            kwargs["image"] = self.source()
            kwargs["image_generator"] = torch.Generator().manual_seed(spec.vae_sample_seed)
            if with_image_latents:
                kwargs["image_latents"] = [self.ref(case)["src_cond_latents"]]
        try:
            run.output = pipe(spec.prompts, height=spec.size, width=spec.size, num_inference_steps=NUM_STEPS,
                              guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(spec.noise_seed),
                              output_type=output_type, callback_on_step_end=record_step, **kwargs).images
        finally:
            for hook in hooks:
                hook.remove()
        run.guided_velocities = scheduler.recorded_velocities
        run.timesteps, run.sigmas = scheduler.timesteps.clone(), scheduler.sigmas.clone()
        return run


@pytest.fixture(scope="module")
def golden_dir() -> Path:
    # conftest's `golden` is function-scoped, so the module-scoped pipeline below cannot request it.
    if not (GOLDEN / "FIXTURE.md").is_file():
        pytest.skip(f"parity fixture not found at {GOLDEN} (a fresh clone has no ../shared; CI always has it)")
    return GOLDEN


@pytest.fixture(scope="module")
def deterministic():
    """The fixture was recorded with deterministic algorithms; enable them for this module only."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _load(golden: Path, checkpoint: str) -> DeepGenPipeline:
    pipe = DeepGenPipeline.from_native_checkpoint(golden / checkpoint, vlm=golden / "vlm", dit=golden)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def runner(golden_dir, deterministic) -> ParityRunner:
    return ParityRunner(_load(golden_dir, "checkpoint_native_with_lora.pt"), golden_dir)


def _scb(pipe: DeepGenPipeline, case: str, references) -> dict[str, torch.Tensor]:
    """Tokens, merged hidden states and SCB outputs for a case, computed step by step."""
    prompts = CASES[case].prompts
    negatives = [""] * len(prompts)
    images = references + references if references else None
    inputs = pipe.processor(prompts + negatives, images)
    with torch.no_grad():
        hidden_states, _ = vlm_hidden_states(pipe.vlm, inputs, pipe.connector.meta_queries)
        seq_out, pooled_out = pipe.connector(hidden_states)
        merged = pipe.connector.stack(hidden_states)
    return {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask, "merged_hidden": merged,
            "seq_out": seq_out, "pooled_out": pooled_out}


# --- VLM side: tokens, LLM inputs, SCB -------------------------------------------------------------------------


@pytest.mark.parametrize("case", STATIC_CASES)
def test_tokens_and_scb_outputs(runner, case):
    ref = runner.ref(case)
    ours = _scb(runner.pipe, case, runner.references(case))
    assert_equal(ours["input_ids"], ref["input_ids"], "input_ids")
    assert_equal(ours["attention_mask"], ref["attention_mask"], "attention_mask")
    for name in ("merged_hidden", "pooled_out", "seq_out"):
        assert_close(ours[name], ref[name], name)
    b = len(CASES[case].prompts)
    assert_close(ours["pooled_out"][:b], ref["pooled_out_cond"], "pooled_out_cond")
    assert_close(ours["seq_out"][b:], ref["seq_out_uncond"], "seq_out_uncond")


@pytest.mark.parametrize("case", STATIC_CASES)
def test_llm_inputs(runner, case):
    """Position ids (M-RoPE), the mask and the input embeddings exactly as the pipeline hands them to the LLM."""
    ref, llm = runner.ref(case), runner.run(case).llm_kwargs
    assert_equal(llm["position_ids"], ref["llm_position_ids"], "llm_position_ids")
    assert_equal(llm["attention_mask"].long(), ref["llm_attention_mask"], "llm_attention_mask")
    assert_close(llm["inputs_embeds"], ref["llm_inputs_embeds"], "llm_inputs_embeds")


@pytest.mark.parametrize("case", EDIT_CASES)
def test_edit_source_preprocessing(runner, case):
    """The ViT's patches and the Kontext reference latents of the source image."""
    ref, pipe = runner.ref(case), runner.pipe
    source = runner.references(case)[0][0]
    if "source_pixels" in ref:
        assert_close(source[None], ref["source_pixels"], "source_pixels", atol=1e-6, rtol=0)
    patches, grid = vit_patches(source)
    if "vit_pixel_patches" in ref:
        assert_close(patches, ref["vit_pixel_patches"], "vit_pixel_patches")
        assert_equal(grid, ref["vit_grid_thw"], "vit_grid_thw")
        with torch.no_grad():
            embeds = image_features(pipe.vlm.model, patches, grid)
        assert_close(embeds, ref["vit_image_embeds"], "vit_image_embeds")
    latents = pipe.encode_images([source], torch.Generator().manual_seed(CASES[case].vae_sample_seed))
    assert_close(latents, ref["src_cond_latents"], "src_cond_latents")


# --- DiT side: scheduler, velocities, trajectory ------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_scheduler_and_initial_noise(runner, case):
    ref, run = runner.ref(case), runner.run(case)
    assert_close(run.timesteps, ref["timesteps"], "timesteps", atol=1e-3, rtol=1e-6)
    assert_close(run.sigmas, ref["sigmas"], "sigmas", atol=1e-6, rtol=1e-6)
    noise = run.dit_inputs[0]["hidden_states"].chunk(2)  # CFG batch: the same latent twice
    assert_equal(noise[0], ref["init_noise"], "init_noise (uncond half)")
    assert_equal(noise[1], ref["init_noise"], "init_noise (cond half)")


@pytest.mark.parametrize("case", list(CASES))
def test_first_step_dit(runner, case):
    ref, run = runner.ref(case), runner.run(case)
    dit_in = run.dit_inputs[0]
    for ours, name in ((dit_in["hidden_states"], "dit_in_latents_step0"),
                       (dit_in["encoder_hidden_states"], "dit_in_encoder_hidden_states_step0"),
                       (dit_in["pooled_projections"], "dit_in_pooled_step0"),
                       (run.dit_outputs[0], "dit_out_step0")):
        if name in ref:  # the dynshift files keep only the velocities
            assert_close(ours, ref[name], name)
    v_uncond, v_cond = run.dit_outputs[0].chunk(2)  # DiT batch order is [uncond..., cond...]
    assert_close(v_uncond, ref["velocity_uncond_step0"], "velocity_uncond_step0")
    assert_close(v_cond, ref["velocity_cond_step0"], "velocity_cond_step0")


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_and_final_latents(runner, case):
    ref, run = runner.ref(case), runner.run(case)
    assert len(run.latents_after_step) == len(run.guided_velocities) == NUM_STEPS
    for i in range(NUM_STEPS):
        if f"velocity_guided_step{i}" in ref:  # the dynshift files keep step 0 only
            assert_close(run.guided_velocities[i], ref[f"velocity_guided_step{i}"], f"velocity_guided_step{i}")
        assert_close(run.latents_after_step[i], ref[f"latents_after_step{i}"], f"latents_after_step{i}")
    assert_close(run.output, ref["final_latents"], "final_latents")


@pytest.mark.parametrize("case", list(CASES))
def test_decoded_image(runner, case):
    decoded = runner.pipe.decode_latents(runner.run(case).output)
    assert_close(decoded, runner.ref(case)["decoded_image"], "decoded_image", atol=DECODED_ATOL, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_png_output(runner, case):
    images = runner.run(case, output_type="pil").output
    assert len(images) == len(CASES[case].prompts)
    for i, image in enumerate(images):
        expected = np.asarray(Image.open(runner.golden / "cases" / f"{case}_{i}.png").convert("RGB"), dtype=np.int16)
        ours = np.asarray(image, dtype=np.int16)
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() <= 1, f"{case}_{i}.png: max diff {np.abs(ours - expected).max()}"


@pytest.mark.parametrize("case", EDIT_CASES)
def test_edit_with_given_image_latents(runner, case):
    """Passing the reference's own ``src_cond_latents`` reproduces the result of encoding the source."""
    ref = runner.ref(case)
    run = runner.run(case, with_image_latents=True)
    assert_close(run.output, ref["final_latents"], "final_latents (image_latents given)")
    assert_close(run.output, runner.run(case).output, "final_latents (given vs encoded)", atol=1e-5, rtol=0)


# --- the other checkpoint files ------------------------------------------------------------------------------


def test_safetensors_checkpoint_matches(golden_dir, deterministic):
    """``checkpoint.safetensors`` holds the same tensors as ``checkpoint_native_with_lora.pt``: check the edit
    case (which exercises LLM, ViT and merger LoRA) end to end."""
    runner = ParityRunner(_load(golden_dir, "checkpoint.safetensors"), golden_dir)
    assert has_lora(runner.pipe.vlm)
    ref = runner.ref("edit")
    ours = _scb(runner.pipe, "edit", runner.references("edit"))
    for name in ("merged_hidden", "pooled_out", "seq_out"):
        assert_close(ours[name], ref[name], name)
    assert_close(runner.run("edit").output, ref["final_latents"], "final_latents")


def test_checkpoint_without_lora_differs(golden_dir, deterministic):
    """``checkpoint_native.pt`` lacks the VLM LoRA: it loads, but its SCB output is far from the reference."""
    pipe = _load(golden_dir, "checkpoint_native.pt")
    assert not has_lora(pipe.vlm)
    ref = load_file(golden_dir / "cases" / "t2i_batch2.safetensors")
    ours = _scb(pipe, "t2i_batch2", None)
    assert_equal(ours["input_ids"], ref["input_ids"], "input_ids")
    gap = (ours["pooled_out"] - ref["pooled_out"]).abs().max().item()
    assert gap > 1e-2, f"pooled_out without LoRA is only {gap:.2e} from the reference: is the LoRA a no-op?"
