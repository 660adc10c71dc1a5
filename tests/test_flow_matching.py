import copy

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from deepgen.training.flow_matching import (
    add_noise,
    drop_captions,
    flow_matching_loss,
    flow_matching_target,
    sample_timesteps,
)


def _latents(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, 4, 8, 8, generator=generator)
    noise = torch.randn(2, 4, 8, 8, generator=generator)
    return x0, noise


def test_add_noise_endpoints_and_midpoint():
    x0, noise = _latents()
    torch.testing.assert_close(add_noise(x0, noise, torch.zeros(2)), x0)
    torch.testing.assert_close(add_noise(x0, noise, torch.ones(2)), noise)
    torch.testing.assert_close(add_noise(x0, noise, 0.25), 0.75 * x0 + 0.25 * noise)
    # per-sample sigmas broadcast over (C, H, W)
    mixed = add_noise(x0, noise, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(mixed[0], x0[0])
    torch.testing.assert_close(mixed[1], noise[1])


def test_add_noise_rejects_bad_sigma_shape():
    x0, noise = _latents()
    with pytest.raises(ValueError, match="cannot be broadcast"):
        add_noise(x0, noise, torch.ones(3))


def test_target_is_noise_minus_x0_and_the_velocity_of_the_path():
    x0, noise = _latents()
    target = flow_matching_target(x0, noise)
    torch.testing.assert_close(target, noise - x0)
    # d x_t / d sigma by finite difference along the straight path
    finite_difference = (add_noise(x0, noise, 0.6) - add_noise(x0, noise, 0.4)) / 0.2
    torch.testing.assert_close(finite_difference, target, rtol=1e-4, atol=1e-4)


def test_loss_is_zero_at_perfect_prediction_and_matches_hand_mse():
    x0, noise = _latents()
    assert flow_matching_loss(noise - x0, x0, noise).item() == 0.0

    pred = torch.zeros_like(x0)
    expected = ((noise - x0) ** 2).mean()
    torch.testing.assert_close(flow_matching_loss(pred, x0, noise), expected)

    sigmas = torch.tensor([0.5, 0.25])
    per_sample = ((noise - x0) ** 2).flatten(1).mean(1) * sigmas**-2.0
    torch.testing.assert_close(
        flow_matching_loss(pred, x0, noise, sigmas=sigmas, weighting_scheme="sigma_sqrt"), per_sample.mean()
    )


def test_loss_upcasts_and_validates():
    x0, noise = _latents()
    loss = flow_matching_loss(torch.zeros_like(x0).bfloat16(), x0.bfloat16(), noise.bfloat16())
    assert loss.dtype == torch.float32 and loss.ndim == 0
    with pytest.raises(ValueError, match="needs the per-sample sigmas"):
        flow_matching_loss(x0, x0, noise, weighting_scheme="cosmap")
    with pytest.raises(ValueError, match="share one shape"):
        flow_matching_loss(x0[:1], x0, noise)


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "none"])
def test_sample_timesteps_shape_range_and_determinism(scheme):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sigmas, timesteps = sample_timesteps(64, scheduler, scheme, generator=torch.Generator().manual_seed(0))
    assert sigmas.shape == timesteps.shape == (64,)
    assert sigmas.dtype == timesteps.dtype == torch.float32
    assert ((sigmas > 0) & (sigmas <= 1)).all()
    assert ((timesteps > 0) & (timesteps <= 1000)).all()
    # each sigma is the scheduler's training sigma for its timestep
    torch.testing.assert_close(sigmas, timesteps / 1000)

    again = sample_timesteps(64, scheduler, scheme, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again[0], sigmas)
    torch.testing.assert_close(again[1], timesteps)


def test_sample_timesteps_refuses_an_inference_scheduler():
    scheduler = FlowMatchEulerDiscreteScheduler()
    training_copy = copy.deepcopy(scheduler)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="set_timesteps"):
        sample_timesteps(2, scheduler)
    assert sample_timesteps(2, training_copy)[0].shape == (2,)
    with pytest.raises(ValueError, match="weighting_scheme"):
        sample_timesteps(2, training_copy, "uniform")


def test_drop_captions_rate_and_determinism():
    prompts = [f"a photo of object {i}" for i in range(4000)]
    dropped = drop_captions(prompts, 0.1, torch.Generator().manual_seed(0))
    assert len(dropped) == len(prompts)
    rate = sum(caption == "" for caption in dropped) / len(prompts)
    assert abs(rate - 0.1) < 0.02
    assert all(caption in ("", original) for caption, original in zip(dropped, prompts))
    assert drop_captions(prompts, 0.1, torch.Generator().manual_seed(0)) == dropped
    assert drop_captions(prompts[:5], 0.0) == prompts[:5]
    assert drop_captions(prompts[:5], 1.0) == [""] * 5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_captions(prompts, 1.5)
