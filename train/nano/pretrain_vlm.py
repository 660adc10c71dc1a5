"""Pretrain the nano Qwen2.5-VL as a captioner and question-answerer, so that its hidden states carry meaning.

The stand-in for Qwen2.5-VL-3B-Instruct's pretraining. The model is trained with the language-model loss on the
answer tokens of four chat tasks, all in the exact chat template DeepGen prompts it with
(:func:`deepgen.vlm.template_prompt`):

- resolve a prompt: ``Generate an image: a shape with three corners in the colour of grass`` ->
  ``a large green triangle at the top`` (the world's requirement in plain words);
- caption: ``<image>\\nDescribe the image.`` -> ``a grey background with a small red circle on the left ...``;
- understand an edit: ``<image>\\nmake the circle green`` -> the caption of the edited scene;
- world knowledge: ``What is the colour of grass?`` -> ``It is green.``

Only the train split is seen, so held-out (shape, colour) pairs never appear in any answer. At the end the
answers to held-out prompts are generated greedily and compared with the reference (exact match), per task.

Usage:
    python train/nano/pretrain_vlm.py --data runs/nano/data --out runs/nano/vlm --steps 2500
Re-running the same command resumes from ``<out>/checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from nano_common import (
    cosine_lr,
    describe_scene,
    load_checkpoint,
    load_world_shards,
    save_checkpoint,
    set_threads,
    to_tensor,
    tokenizer_corpus,
)

from deepgen.nano import world
from deepgen.config import get_preset
from deepgen.image_processing import vit_patches
from deepgen.model import build_vlm
from deepgen.tokenizer import build_tokenizer
from deepgen.vlm import USER_TEMPLATE, template_prompt

CAPTION_QUESTION = "Describe the image."
TASK_WEIGHTS = {"resolve": 0.35, "edit": 0.35, "caption": 0.2, "knowledge": 0.1}
END = "<|im_end|>"
KNOWLEDGE_PREFIX = "What "  # knowledge questions are plain chat, without "Generate an image:"


def describe_requirement(metadata: dict[str, Any]) -> str:
    """Plain-words answer to a generation/text prompt, e.g. "two small red circles", "a blue square and a
    green circle", "a large green triangle at the top", "the digit 7 in red"."""
    if metadata["capability"] == "text_rendering":
        kind = "digit" if metadata["glyph"].isdigit() else "letter"
        return f"the {kind} {metadata['glyph']} in {metadata['colour']}"
    phrases = []
    for group in metadata["groups"]:
        count = group["count"]
        words = [world.NUMBER_WORDS[count] if count > 1 else "a"]
        words += [group["size"]] if group["size"] else []
        words += [group["colour"], world.SHAPE_PLURALS[group["shape"]] if count > 1 else group["shape"]]
        if group["position"]:
            words.append(world.POSITION_PHRASES[group["position"]])
        phrases.append(" ".join(words))
    return " and ".join(phrases)


def knowledge_pairs() -> list[tuple[str, str]]:
    pairs = [(f"What is the colour of {thing}?", f"It is {colour}.")
             for colour, things in world.COLOUR_RIDDLES.items() for thing in things]
    pairs += [(f"What shape is a {riddle}?", f"It is a {shape}.")
              for shape, riddles in world.SHAPE_RIDDLES.items() for riddle in riddles]
    return pairs


class TaskSampler:
    """Draws (question, image or None, answer) triples of the four tasks from the training set."""

    def __init__(self, data, seed: int):
        self.data = data
        self.rng = random.Random(seed)
        self.edits = [i for i, has in enumerate(data.has_source) if has]
        self.prompts = [i for i, has in enumerate(data.has_source) if not has]
        self.knowledge = knowledge_pairs()

    def draw(self) -> tuple[str, Optional[np.ndarray], str]:
        task = self.rng.choices(list(TASK_WEIGHTS), weights=list(TASK_WEIGHTS.values()))[0]
        if task == "resolve":
            i = self.rng.choice(self.prompts)
            return self.data.prompts[i], None, describe_requirement(self.data.metadata[i])
        if task == "edit":
            i = self.rng.choice(self.edits)
            return self.data.prompts[i], self.data.sources[i], describe_scene(self.data.metadata[i]["target"])
        if task == "caption":
            i = self.rng.choice(self.edits)
            side = self.rng.choice(("source", "target"))
            image = self.data.sources[i] if side == "source" else self.data.images[i]
            return CAPTION_QUESTION, image, describe_scene(self.data.metadata[i][side])
        question, answer = self.rng.choice(self.knowledge)
        return question, None, answer


def encode_rows(tokenizer, merge_size: int, patch_size: int, rows: list[tuple[str, Optional[np.ndarray], str]],
                with_answers: bool = True) -> dict[str, torch.Tensor]:
    """Template, tokenise (left padding, as DeepGen does) and patchify; labels cover the answer and ``END``."""
    texts, prefix_lengths, patches, grids = [], [], [], []
    for question, image, answer in rows:
        image_tokens = []
        if image is not None:
            p, grid = vit_patches(to_tensor(image[None])[0], patch_size, merge_size)
            patches.append(p)
            grids.append(grid)
            image_tokens.append(int(grid.prod()) // merge_size ** 2)
        if image is not None or not question.startswith(KNOWLEDGE_PREFIX):
            prompt = template_prompt(question, image_tokens)  # DeepGen's edit / text-to-image row
        else:
            prompt = USER_TEMPLATE.format(input=question)  # a plain chat question
        prefix_lengths.append(len(tokenizer(prompt)["input_ids"]))
        texts.append(prompt + (answer + END if with_answers else ""))
    encoded = tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if patches:
        batch["pixel_values"] = torch.cat(patches)
        batch["image_grid_thw"] = torch.cat(grids)
    if with_answers:
        labels = torch.full_like(batch["input_ids"], -100)
        lengths = batch["attention_mask"].sum(1)
        width = batch["input_ids"].shape[1]
        for row, (prefix, length) in enumerate(zip(prefix_lengths, lengths.tolist())):
            start = width - length + prefix  # left padding: the row starts at width - length
            labels[row, start:] = batch["input_ids"][row, start:]
        batch["labels"] = labels
    return batch


@torch.no_grad()
def evaluate_answers(vlm, tokenizer, vision, num_per_task: int = 50) -> dict[str, float]:
    """Greedy answers to held-out (eval split) prompts, exact match with the reference, per task."""
    samples = world.dataset("eval", 5 * num_per_task)
    tasks: dict[str, list[tuple[str, Optional[np.ndarray], str]]] = {"resolve": [], "edit": [], "caption": []}
    for s in samples:
        if s.source is None:
            tasks["resolve"].append((s.prompt, None, describe_requirement(s.metadata)))
        else:
            source = np.asarray(s.source_image(64))
            tasks["edit"].append((s.prompt, source, describe_scene(s.metadata["target"])))
            tasks["caption"].append((CAPTION_QUESTION, source, describe_scene(s.metadata["source"])))
    scores = {}
    vlm.eval()
    for task, rows in tasks.items():
        rows = rows[:num_per_task]
        batch = encode_rows(tokenizer, vision.spatial_merge_size, vision.patch_size, rows, with_answers=False)
        output = vlm.generate(**batch, max_new_tokens=48, do_sample=False,
                              eos_token_id=tokenizer.convert_tokens_to_ids(END), pad_token_id=tokenizer.pad_token_id)
        answers = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        scores[task] = float(np.mean([a.strip() == ref for a, (_, _, ref) in zip(answers, rows)]))
        print(f"[{task}] {rows[0][0]!r} -> {answers[0].strip()!r} (reference {rows[0][2]!r})", flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/nano/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/nano/vlm"))
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-per-task", type=int, default=50,
                        help="held-out prompts per task for answer_accuracy.json")
    args = parser.parse_args()
    if args.eval_per_task < 1:
        parser.error(f"--eval-per-task must be at least 1, got {args.eval_per_task}")
    set_threads(args.threads)

    config = get_preset("nano")
    tokenizer = build_tokenizer(tokenizer_corpus(), vocab_size=config.tokenizer_vocab_size)
    torch.manual_seed(args.seed)
    vlm = build_vlm(config)
    vision = vlm.config.vision_config
    data = load_world_shards(args.data)
    sampler = TaskSampler(data, args.seed)
    optimizer = torch.optim.AdamW(vlm.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    start = 0
    checkpoint_path = args.out / "checkpoint.pt"
    if (state := load_checkpoint(checkpoint_path)) is not None:
        vlm.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.rng.setstate(state["rng"])
        start = state["step"]
        print(f"resumed from step {start}", flush=True)

    vlm.train()
    tic, running = time.time(), []
    for step in range(start, args.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, args.steps, args.lr, warmup=100)
        batch = encode_rows(tokenizer, vision.spatial_merge_size, vision.patch_size,
                            [sampler.draw() for _ in range(args.batch_size)])
        loss = vlm(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vlm.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}/{args.steps} loss {np.mean(running):.4f} "
                  f"{(time.time() - tic) / 50:.3f}s/step", flush=True)
            tic, running = time.time(), []
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            save_checkpoint(checkpoint_path, {"model": vlm.state_dict(), "optimizer": optimizer.state_dict(),
                                              "rng": sampler.rng.getstate(), "step": step + 1})

    scores = evaluate_answers(vlm, tokenizer, vision, args.eval_per_task)
    print("held-out exact match:", json.dumps(scores), flush=True)
    vlm.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "answer_accuracy.json").write_text(json.dumps(scores, indent=2) + "\n")
    print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
