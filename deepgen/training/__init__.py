"""Training math for DeepGen: flow-matching objective (stages 1–2) and MR-GRPO (stage 3).

Everything here is a small pure function on tensors; the stage scripts own the loops.
"""
