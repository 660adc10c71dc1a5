"""Seeds that depend only on where a run is, so a resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

_PRIME = 1_000_003


def step_seed(seed: int, rank: int, step: int, *salts: int) -> int:
    """A 63-bit seed from ``(seed, rank, step, *salts)``, mixed as base-1,000,003 digits.

    Every random draw of a training step (noise, timesteps, VAE samples, prompt choices, caption dropout) takes
    its own generator seeded here; ``salts`` tell apart the draws of one step (stage 3: 0 for the prompts,
    ``1 + i`` for prompt ``i``'s rollouts, 10,000 for the update plan, 20,000 + ``u`` for update ``u``'s SFT batch).

    Args:
        seed: the run's ``seed``; rank: the process index; step: the (micro-)step or batch number.
        salts: further integers; none for a single draw per step.
    """
    value = (seed * _PRIME + rank) * _PRIME + step
    for salt in salts:
        value = value * _PRIME + salt
    return value % 2**63
