"""deepgen/training/registry.py: config names map to one factory each."""

from __future__ import annotations

import pytest

from deepgen.training.registry import registrar


def test_a_name_registers_once_and_a_second_claim_is_refused():
    table: dict = {}
    register = registrar(table, "reward")

    @register("score")
    def first():
        return 1

    assert table == {"score": first} and register("score")(first) is first  # re-registering the same is harmless
    with pytest.raises(ValueError, match="reward named 'score' is already registered"):
        register("score")(lambda: 2)
