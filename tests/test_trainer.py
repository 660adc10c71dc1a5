"""Training plumbing: the freeze/LoRA schedule (exactly the intended parameters get gradients), the LR schedule,
the loss log's resume bookkeeping (checkpoints: test_checkpoints.py)."""

from __future__ import annotations

import json

import pytest
import torch

from deepgen import DeepGenPipeline
from deepgen.training import trainer
from deepgen.training.data import Batch
from training_helpers import fresh_accelerate_state, tiny_config  # noqa: F401  (autouse fixture)

SIZE = 32
LM_HEAD_LORA = "vlm.lm_head.lora_"  # DeepGen never calls lm_head, so its adapter can never get a gradient


def _batch(edit: bool) -> Batch:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, SIZE, SIZE, generator=generator) * 2 - 1
    sources = torch.rand(2, 3, SIZE, SIZE, generator=generator) * 2 - 1 if edit else None
    return Batch(pixels, ["a red circle", ""], sources)


def _backward(pipe, config, accelerator, edit):
    module = trainer.TrainingModule(pipe.model)
    loss = trainer.flow_matching_loss_on_batch(pipe, module, _batch(edit), trainer.training_scheduler(pipe),
                                               config.loss, torch.Generator().manual_seed(0), accelerator)
    loss.backward()
    assert torch.isfinite(loss)
    return {name for name, p in pipe.model.named_parameters() if p.grad is not None}


def test_stage1_schedule_trains_exactly_the_bridge(tmp_path):
    config = tiny_config(tmp_path)
    pipe = DeepGenPipeline.from_config("tiny", seed=0)
    trainable = trainer.apply_training_schedule(pipe, config)
    names = {name for name, _ in trainable}
    bridge = {f"connector.{name}" for name, _ in pipe.scb.named_parameters()}
    assert names == bridge
    assert {"connector.meta_queries", "connector.projector_1.weight", "connector.projector_3.bias"} <= names
    assert all(n.startswith(("connector.meta_queries", "connector.projector_", "connector.connector.")) for n in names)
    assert not any(p.requires_grad for p in pipe.vae.parameters())
    assert (pipe.vlm.training, pipe.transformer.training, pipe.vae.training, pipe.scb.training) == \
        (False, False, False, True)
    accelerator = trainer.build_accelerator(config)
    assert _backward(pipe, config, accelerator, edit=True) == names  # think tokens get gradients through the VLM


def test_stage2_schedule_trains_bridge_dit_and_vlm_lora(tmp_path):
    config = tiny_config(tmp_path, "train_transformer=true", "vlm_lora={rank: 2, alpha: 4}")
    pipe = DeepGenPipeline.from_config("tiny", seed=0)
    trainable = trainer.apply_training_schedule(pipe, config)
    names = {name for name, _ in trainable}
    all_names = {name for name, _ in pipe.model.named_parameters()}
    expected = {n for n in all_names if n.startswith(("connector.", "transformer.")) or
                (n.startswith("vlm.") and "lora_" in n)}
    assert names == expected
    assert not any(n.startswith("vlm.") and "lora_" not in n for n in names)  # no VLM base weights
    assert any(".visual." in n for n in names) and any("embed_tokens.lora_embedding" in n for n in names)
    assert pipe.vlm.training and pipe.transformer.training
    accelerator = trainer.build_accelerator(config)
    with_grads = _backward(pipe, config, accelerator, edit=True)
    assert with_grads <= names
    # Hidden state k is the output of decoder layer k - 1, so layers >= max(scb_layers) feed nothing SCB reads
    # (the authors' range(L - 1, 0, -6) never uses the last layer); with lm_head, their LoRA gets no gradient.
    unread = tuple(f"vlm.model.language_model.layers.{i}." for i in
                   range(max(pipe.scb.scb_layers), pipe.vlm.config.get_text_config().num_hidden_layers))
    assert unread and names - with_grads == {n for n in names if n.startswith((LM_HEAD_LORA, *unread))}
    # Under DDP a text-only batch leaves the ViT's LoRA unused: the accelerator must tolerate it.
    assert accelerator.ddp_handler is None or accelerator.ddp_handler.find_unused_parameters


def test_base_models_start_with_a_fresh_bridge(tmp_path, tiny_pipe):
    """The full recipe's stage 1 starts from Qwen2.5-VL + the Kontext DiT folders and a new bridge."""
    tiny_pipe.save_pretrained(tmp_path / "base")
    tiny_pipe.tokenizer.save_pretrained(tmp_path / "base" / "vlm")  # a Qwen folder carries its tokenizer
    config = tiny_config(tmp_path, "model.pretrained=null", f"model.base_vlm={tmp_path / 'base' / 'vlm'}",
                     f"model.base_dit={tmp_path / 'base'}", "model.bridge_preset=tiny")
    pipe = trainer.load_pipeline(config.model)
    for name in ("vlm", "transformer", "vae"):
        for (key, p), q in zip(getattr(pipe, name).state_dict().items(),
                               getattr(tiny_pipe, name).state_dict().values()):
            assert torch.equal(p, q), f"{name}.{key}"
    assert not torch.equal(pipe.scb.meta_queries, tiny_pipe.scb.meta_queries)
    assert not pipe.scb.projector_3.weight.any()  # zero heads: the DiT starts unconditional
    accelerator = trainer.build_accelerator(config)
    trainable = trainer.apply_training_schedule(pipe, config)
    assert _backward(pipe, config, accelerator, edit=False) == {name for name, _ in trainable}


def test_lr_schedule_warmup_then_cosine(tmp_path):
    config = tiny_config(tmp_path, "max_steps=100", "optim.warmup_ratio=0.1", "optim.lr=1.0")
    optimizer = trainer.build_optimizer([torch.nn.Parameter(torch.zeros(1))], config.optim)
    schedule = trainer.build_lr_scheduler(optimizer, config)
    rates = []
    for _ in range(100):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.0 and rates[5] == pytest.approx(0.5) and rates[10] == pytest.approx(1.0)
    assert rates[55] == pytest.approx(0.5) and rates[99] < 1e-3


def test_loss_log_drops_lines_after_the_resumed_step(tmp_path):
    config = tiny_config(tmp_path)
    accelerator = trainer.build_accelerator(config)
    log = trainer.LossLog(str(tmp_path), accelerator)
    for step in (1, 2, 3):
        log.log({"step": step, "loss": float(step)})
    trainer.LossLog(str(tmp_path), accelerator, resumed_step=2)
    lines = [json.loads(line) for line in (tmp_path / trainer.LOSS_LOG).read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]


def test_weight_decay_only_on_matrices(tmp_path):
    matrix, bias, tokens = (torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(3)),
                            torch.nn.Parameter(torch.ones(4, 2)))
    groups = trainer.weight_decay_groups([matrix, bias, tokens], 0.05)
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(matrix), id(tokens)], [id(bias)]]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    config = tiny_config(tmp_path, "optim.decay_matrices_only=true", "optim.lr=0.1", "optim.weight_decay=0.5")
    optimizer = trainer.build_optimizer([matrix, bias], config.optim)
    for p in (matrix, bias):
        p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradients: only decoupled weight decay moves the weights
    assert torch.allclose(matrix, torch.full_like(matrix, 1 - 0.1 * 0.5)) and torch.equal(bias.detach(), torch.ones(3))


def test_warmup_steps_replace_the_ratio(tmp_path):
    config = tiny_config(tmp_path, "max_steps=100", "optim.warmup_ratio=0.5", "optim.warmup_steps=4", "optim.lr=1.0",
                     "optim.lr_scheduler=constant_with_warmup")
    optimizer = trainer.build_optimizer([torch.nn.Parameter(torch.zeros(1))], config.optim)
    schedule = trainer.build_lr_scheduler(optimizer, config)
    rates = []
    for _ in range(6):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_xavier_connector_init_is_the_authors(tmp_path):
    from deepgen.config import get_preset
    from deepgen.connector import build_connector

    torch.manual_seed(0)
    encoder = build_connector(get_preset("tiny").connector)
    trainer.xavier_init_connector(encoder)
    attention, mlp = encoder.layers[0].self_attn, encoder.layers[0].mlp
    fan_in, fan_out = attention.q_proj.in_features, attention.q_proj.out_features
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert attention.q_proj.weight.abs().max() <= bound and attention.q_proj.weight.abs().max() > 0.8 * bound
    assert not attention.out_proj.bias.any() and 0 < mlp.fc1.bias.abs().max() < 1e-5
    with pytest.raises(ValueError, match="connector_init"):
        tiny_config(tmp_path, "model.connector_init=he")


@pytest.mark.parametrize("edit", [False, True])
def test_flow_matching_loss_on_an_aspect_bucket_batch(tmp_path, edit):
    """data.image_process=fix_pixels gives non-square batches (and edit sources of the target's size)."""
    config = tiny_config(tmp_path)
    pipe = DeepGenPipeline.from_config("tiny", seed=0)
    trainer.apply_training_schedule(pipe, config)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, 32, 64, generator=generator) * 2 - 1
    batch = Batch(pixels, ["a red circle", ""], torch.rand(2, 3, 32, 64, generator=generator) * 2 - 1 if edit else None)
    loss = trainer.flow_matching_loss_on_batch(pipe, trainer.TrainingModule(pipe.model), batch,
                                               trainer.training_scheduler(pipe), config.loss,
                                               torch.Generator().manual_seed(0), trainer.build_accelerator(config))
    assert torch.isfinite(loss)
