import math

import pytest
import torch

from deepgen.training.grpo import (
    clipped_policy_loss,
    gdpo_advantages,
    group_advantages,
    mix_sft_loss,
    sde_step_std,
    sde_step_with_logprob,
    select_train_timesteps,
    velocity_kl,
)

SDE_TYPES = ["cps", "flow_grpo"]


def _state(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    velocity = torch.randn(3, 4, 8, 8, generator=generator)
    sample = torch.randn(3, 4, 8, 8, generator=generator)
    return velocity, sample


# --- SDE step ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_type", SDE_TYPES)
@pytest.mark.parametrize("sigma, sigma_next", [(1.0, 0.9), (0.6, 0.45), (0.2, 0.0)])
def test_sde_step_is_euler_at_zero_noise(sde_type, sigma, sigma_next):
    velocity, sample = _state()
    prev, log_prob, mean, std = sde_step_with_logprob(
        velocity, sample, sigma, sigma_next, noise_level=0.0, sde_type=sde_type
    )
    euler = sample + (sigma_next - sigma) * velocity
    torch.testing.assert_close(prev, euler)
    torch.testing.assert_close(mean, euler)
    assert (std == 0).all()
    # a deterministic step has no density: defined as 0, finite
    assert torch.equal(log_prob, torch.zeros(3))


@pytest.mark.parametrize("sde_type", SDE_TYPES)
def test_sde_log_prob_is_the_gaussian_it_sampled_from(sde_type):
    velocity, sample = _state()
    sigma = torch.tensor([1.0, 0.7, 0.3])  # per-sample, includes the sigma = 1 edge
    sigma_next = torch.tensor([0.9, 0.55, 0.1])
    prev, log_prob, mean, std = sde_step_with_logprob(
        velocity, sample, sigma, sigma_next, generator=torch.Generator().manual_seed(1), sde_type=sde_type
    )
    assert prev.shape == mean.shape == sample.shape and log_prob.shape == (3,)
    assert torch.isfinite(log_prob).all() and (std > 0).all()
    expected = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(prev).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, expected)

    # evaluating a given prev_sample reproduces the same log-prob and does not resample
    prev_again, log_prob_again, _, _ = sde_step_with_logprob(
        velocity, sample, sigma, sigma_next, prev_sample=prev, sde_type=sde_type
    )
    assert torch.equal(prev_again, prev)
    torch.testing.assert_close(log_prob_again, log_prob)


def test_flow_grpo_mean_matches_reference_formula_and_sigma_one_is_guarded():
    velocity, sample = _state()
    sigma, sigma_next, noise_level = 0.6, 0.45, 0.7
    _, _, mean, std = sde_step_with_logprob(velocity, sample, sigma, sigma_next, noise_level, sde_type="flow_grpo")
    dt = sigma_next - sigma
    s = noise_level * math.sqrt(sigma / (1 - sigma))
    expected = sample * (1 + s**2 / (2 * sigma) * dt) + velocity * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(std, torch.tensor(s * math.sqrt(-dt)))

    _, log_prob, _, std_at_one = sde_step_with_logprob(velocity, sample, 1.0, 0.9, noise_level, sde_type="flow_grpo")
    torch.testing.assert_close(std_at_one, torch.tensor(noise_level * math.sqrt(1.0 / (1 - 0.9)) * math.sqrt(0.1)))
    assert torch.isfinite(log_prob).all()


def test_cps_is_coefficients_preserving():
    velocity, sample = _state()
    sigma, sigma_next, noise_level = 0.7, 0.5, 0.7
    _, _, mean, std = sde_step_with_logprob(velocity, sample, sigma, sigma_next, noise_level, sde_type="cps")
    x0_hat = sample - sigma * velocity
    x1_hat = sample + (1 - sigma) * velocity
    noise_coefficient = math.sqrt(sigma_next**2 - std.item() ** 2)
    torch.testing.assert_close(std, torch.tensor(sigma_next * math.sin(noise_level * math.pi / 2)))
    torch.testing.assert_close(mean, (1 - sigma_next) * x0_hat + noise_coefficient * x1_hat)
    # the deterministic and stochastic noise coefficients recombine to sigma_next: x_next ~ (1-s')x0 + s' eps
    assert math.isclose(noise_coefficient**2 + std.item() ** 2, sigma_next**2, rel_tol=1e-6)


def test_sde_step_upcasts_and_validates():
    velocity, sample = _state()
    prev, log_prob, mean, _ = sde_step_with_logprob(velocity.bfloat16(), sample.bfloat16(), 0.5, 0.4)
    assert prev.dtype == log_prob.dtype == mean.dtype == torch.float32
    with pytest.raises(ValueError, match="sigma_next < sigma"):
        sde_step_with_logprob(velocity, sample, 0.4, 0.5)
    with pytest.raises(ValueError, match="sde_type"):
        sde_step_with_logprob(velocity, sample, 0.5, 0.4, sde_type="ode")
    with pytest.raises(ValueError, match="same shape"):
        sde_step_with_logprob(velocity[:1], sample, 0.5, 0.4)


# --- advantages -------------------------------------------------------------------------------------------


def test_group_advantages_zero_mean_unit_std_per_group():
    rewards = torch.rand(12, generator=torch.Generator().manual_seed(0))
    advantages = group_advantages(rewards, group_size=4)
    grouped = advantages.view(3, 4)
    torch.testing.assert_close(grouped.mean(dim=1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(grouped.std(dim=1, unbiased=False), torch.ones(3), atol=1e-2, rtol=0)

    # explicit, shuffled group ids give the same result
    ids = torch.arange(12) // 4
    permutation = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    shuffled = group_advantages(rewards[permutation], group_ids=ids[permutation] * 7)
    torch.testing.assert_close(shuffled, advantages[permutation])

    assert torch.equal(group_advantages(torch.ones(4), group_size=2), torch.zeros(4))


def test_group_advantages_validates():
    with pytest.raises(ValueError, match="divisor"):
        group_advantages(torch.rand(10), group_size=4)
    with pytest.raises(ValueError, match="exactly one"):
        group_advantages(torch.rand(8))
    with pytest.raises(ValueError, match="exactly one"):
        group_advantages(torch.rand(8), group_size=4, group_ids=torch.zeros(8))


def test_gdpo_normalises_each_reward_per_group_then_the_batch():
    generator = torch.Generator().manual_seed(0)
    rewards = {"judge": torch.rand(8, generator=generator), "ocr": 100 * torch.rand(8, generator=generator)}
    weights = {"judge": 1.0, "ocr": 0.5}
    advantages = gdpo_advantages(rewards, weights, group_size=4)

    combined = group_advantages(rewards["judge"], 4) + 0.5 * group_advantages(rewards["ocr"], 4)
    expected = (combined - combined.mean()) / (combined.std(unbiased=False) + 1e-4)
    torch.testing.assert_close(advantages, expected)
    assert abs(advantages.mean().item()) < 1e-6
    assert abs(advantages.std(unbiased=False).item() - 1) < 1e-3

    # (N, K) tensor form is equivalent
    matrix = torch.stack([rewards["judge"], rewards["ocr"]], dim=1)
    torch.testing.assert_close(gdpo_advantages(matrix, [1.0, 0.5], group_size=4), advantages)

    with pytest.raises(ValueError, match="same keys"):
        gdpo_advantages(rewards, {"judge": 1.0}, group_size=4)
    with pytest.raises(ValueError, match="weights"):
        gdpo_advantages(matrix, [1.0], group_size=4)


# --- policy loss, KL, SFT mix ------------------------------------------------------------------------------


def test_clipped_loss_is_plain_policy_gradient_on_first_inner_step():
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=generator, requires_grad=True)
    features = torch.randn(6, 6, generator=generator)
    advantages = torch.randn(6, generator=generator)

    log_prob = features @ theta  # (N,) a differentiable stand-in for the policy's log-probs
    loss, stats = clipped_policy_loss(log_prob, log_prob.detach(), advantages)
    assert stats["ratio_mean"].item() == 1.0
    assert stats["clip_fraction"].item() == 0.0 and stats["approx_kl"].item() == 0.0
    (grad,) = torch.autograd.grad(loss, theta)

    log_prob = features @ theta
    (expected,) = torch.autograd.grad(-(advantages * log_prob).mean(), theta)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(loss, -advantages.mean())


def test_clipped_loss_clips_ratio_and_advantages():
    log_prob = torch.tensor([0.0, 0.0])
    old = torch.tensor([-0.1, 0.1])  # ratios e^{0.1} > 1 + eps and e^{-0.1} < 1 - eps
    advantages = torch.tensor([10.0, 10.0])  # clamped to 5
    loss, stats = clipped_policy_loss(log_prob, old, advantages, clip_range=0.01)
    # positive A: max(-A r, -A clip(r)) = -A min(r, clip(r))
    expected = -5.0 * torch.stack([torch.tensor(1.01), torch.exp(torch.tensor(-0.1))]).mean()
    torch.testing.assert_close(loss, expected)
    assert stats["clip_fraction"].item() == 1.0
    with pytest.raises(ValueError, match="clip_range"):
        clipped_policy_loss(log_prob, old, advantages, clip_range=0.0)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        clipped_policy_loss(log_prob, old[:1], advantages)


def test_velocity_kl_zero_for_identical_reference_and_positive_otherwise():
    velocity, other = _state()
    assert torch.equal(velocity_kl(velocity, velocity.clone()), torch.zeros(3))
    kl = velocity_kl(velocity, other)
    assert kl.shape == (3,) and (kl > 0).all()
    torch.testing.assert_close(kl, ((velocity - other) ** 2).mean(dim=(1, 2, 3)))


def test_mix_sft_loss_respects_lambda():
    rl, sft = torch.tensor(2.0), torch.tensor(10.0)
    assert mix_sft_loss(rl, sft, 0.0).item() == 2.0
    assert mix_sft_loss(rl, sft, 1.0).item() == 10.0
    torch.testing.assert_close(mix_sft_loss(rl, sft, 0.25), torch.tensor(4.0))
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            mix_sft_loss(rl, sft, bad)


def test_select_train_timesteps():
    indices = select_train_timesteps(10, 0.6, generator=torch.Generator().manual_seed(0))
    assert indices.dtype == torch.long and indices.shape == (6,)
    assert len(set(indices.tolist())) == 6 and all(0 <= i < 10 for i in indices.tolist())
    torch.testing.assert_close(indices, select_train_timesteps(10, 0.6, generator=torch.Generator().manual_seed(0)))
    assert select_train_timesteps(10, 0.7).shape == (7,)  # no float round-up to 8
    assert select_train_timesteps(10, 0.01).shape == (1,)
    assert select_train_timesteps(10, 0.6, batch_size=4).shape == (4, 6)
    with pytest.raises(ValueError, match="fraction"):
        select_train_timesteps(10, 0.0)


# --- the authors' forms (docs/training.md) ---------------------------------------------------------------------


def test_negative_squared_error_log_prob_is_the_authors_cps_form():
    generator = torch.Generator().manual_seed(3)
    velocity, sample = torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 4, 3, 3, generator=generator)
    nxt, exact, mean, std = sde_step_with_logprob(velocity, sample, 0.6, 0.4, 1.0, generator=generator)
    _, simple, _, _ = sde_step_with_logprob(velocity, sample, 0.6, 0.4, 1.0, prev_sample=nxt,
                                            log_prob_form="negative_squared_error")
    torch.testing.assert_close(simple, -((nxt - mean) ** 2).mean(dim=(1, 2, 3)))
    gaussian = -((nxt - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(exact, gaussian.mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="log_prob_form"):
        sde_step_with_logprob(velocity, sample, 0.6, 0.4, log_prob_form="textbook")


@pytest.mark.parametrize("sde_type", ["cps", "flow_grpo"])
@pytest.mark.parametrize("sigma, sigma_next", [(1.0, 0.9), (0.6, 0.4)])
def test_sde_step_std_matches_the_step(sde_type, sigma, sigma_next):
    x = torch.zeros(1, 2, 2, 2)
    *_, std = sde_step_with_logprob(x, x, sigma, sigma_next, 0.7, sde_type=sde_type)
    assert sde_step_std(sigma, sigma_next, 0.7, sde_type) == pytest.approx(float(std), rel=1e-6)


def test_velocity_kl_over_variance_is_the_authors_v_based_kl():
    v, ref = torch.full((2, 1, 2, 2), 3.0), torch.full((2, 1, 2, 2), 1.0)
    assert torch.equal(velocity_kl(v, ref), torch.full((2,), 4.0))
    std = torch.tensor(0.5)
    torch.testing.assert_close(velocity_kl(v, ref, std=std), torch.full((2,), 4.0 / (2 * 0.25 + 1e-7)))


def test_gdpo_per_sample_weights_act_on_normalised_advantages():
    rewards = torch.tensor([[1.0, 10.0], [0.0, 30.0], [2.0, 0.0], [4.0, 0.0]])  # 2 groups of 2, K = 2
    per_sample = torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.2, 0.8], [0.2, 0.8]])
    expected = gdpo_advantages(rewards, [1.0, 1.0], group_size=2)  # reference to rebuild the combination
    per_reward = torch.stack([group_advantages(rewards[:, k], group_size=2) for k in range(2)], dim=1)
    combined = (per_reward * per_sample).sum(1)
    torch.testing.assert_close(gdpo_advantages(rewards, per_sample, group_size=2),
                               (combined - combined.mean()) / (combined.std(unbiased=False) + 1e-4))
    # Rows that all carry the same weights give what the K weights give.
    torch.testing.assert_close(gdpo_advantages(rewards, torch.tensor([[0.5, 2.0]] * 4), group_size=2),
                               gdpo_advantages(rewards, [0.5, 2.0], group_size=2))
    assert expected.shape == (4,)
    # A reward scaled down before normalisation is unchanged by it (up to eps: only on/off counts); after, the
    # weight counts.
    scaled = rewards * torch.tensor([1.0, 0.1])
    torch.testing.assert_close(gdpo_advantages(scaled, [1.0, 1.0], group_size=2), expected, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="weights"):
        gdpo_advantages(rewards, torch.ones(3, 2), group_size=2)
