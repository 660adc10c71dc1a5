"""Rewards for MR-GRPO, all behind one interface: ``reward(images, prompts, metadata) -> (N,) float tensor``.

As in flow_grpo, rewards are plain callables combined by weights from the config (:class:`MixedReward`).
Provided: CLIP text-image similarity, OCR accuracy, a VLM judge on any OpenAI-compatible endpoint (the authors
serve UnifiedReward-Think this way), and ShapeEval scores for DeepGen-nano's shape world.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, Sequence

import torch
from PIL import Image

if TYPE_CHECKING:
    from .grpo_config import RewardsConfig
    from .prompts import Prompt

logger = logging.getLogger(__name__)


class Reward(Protocol):
    """``reward(images, prompts, metadata)`` -> (N,) float32 scores; higher is better."""

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str],
                 metadata: Sequence[Mapping[str, Any]]) -> torch.Tensor: ...


def _check_batch(images: Sequence[Any], prompts: Sequence[str], metadata: Sequence[Any]) -> None:
    if not len(images) == len(prompts) == len(metadata):
        raise ValueError(f"A reward needs as many prompts and metadata as images; got {len(images)} images, "
                         f"{len(prompts)} prompts, {len(metadata)} metadata.")


class ShapeEvalReward:
    """ShapeEval's ``overall`` score (or one criterion) against each sample's world metadata (nano)."""

    def __init__(self, criterion: str = "overall"):
        self.criterion = criterion

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        from ..shapeeval import evaluate

        _check_batch(images, prompts, metadata)
        return torch.tensor([evaluate(img, meta).get(self.criterion, 0.0) for img, meta in zip(images, metadata)],
                            dtype=torch.float32)


class CLIPReward:
    """Cosine similarity between CLIP image and text embeddings (transformers CLIP; model id from config)."""

    def __init__(self, model_id: str = "openai/clip-vit-large-patch14", device: str = "cpu", scale: float = 1.0):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(model_id).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(model_id)
        self.device = device
        self.scale = scale

    @torch.no_grad()
    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        _check_batch(images, prompts, metadata)
        inputs = self.processor(text=list(prompts), images=list(images), return_tensors="pt", padding=True,
                                truncation=True).to(self.device)
        image_emb = _projected(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
        text_emb = _projected(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                           attention_mask=inputs["attention_mask"]))
        return (self.scale * (image_emb * text_emb).sum(-1)).float().cpu()


def _projected(features) -> torch.Tensor:
    """Unit-norm CLIP embeddings; transformers 5 returns them as ``pooler_output`` of an output object."""
    return torch.nn.functional.normalize(getattr(features, "pooler_output", features), dim=-1)


def edit_similarity(expected: str, found: str) -> float:
    """1 - normalised Levenshtein distance, case- and space-insensitive; 1.0 when both are empty."""
    a, b = re.sub(r"\s+", "", expected.lower()), re.sub(r"\s+", "", found.lower())
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b))


def quoted_text(prompt: str) -> str:
    """The text an image should render: everything between quotes in the prompt ("..." or '...')."""
    return " ".join(m[0] or m[1] for m in re.findall(r'"([^"]+)"|\'([^\']+)\'', prompt))


class OCRReward:
    """Text-rendering accuracy: ``edit_similarity(expected, recognize(image))``.

    The expected text is ``metadata["text"]`` when present, else the quoted text of the prompt. ``recognize`` is
    any ``fn(PIL image) -> str`` OCR engine (PaddleOCR, Tesseract, a VLM …); for the shape world use
    :func:`glyph_recognizer`.
    """

    def __init__(self, recognize: Callable[[Image.Image], str]):
        self.recognize = recognize

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        _check_batch(images, prompts, metadata)
        scores = []
        for image, prompt, meta in zip(images, prompts, metadata):
            expected = str(meta.get("text") or meta.get("glyph") or quoted_text(prompt))
            scores.append(edit_similarity(expected, self.recognize(image)))
        return torch.tensor(scores, dtype=torch.float32)


class GlyphIoUReward:
    """Dense text reward for the shape world: :func:`deepgen.shapeeval.glyph_iou` of the image with the glyph the
    prompt asks for (``metadata["glyph"]``; 0 without one). Unlike OCR's right-or-wrong reading it separates
    near misses from blobs, so a group of images that are all misread still has a reward spread to learn from."""

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        from ..shapeeval import glyph_iou

        _check_batch(images, prompts, metadata)
        return torch.tensor([glyph_iou(image, meta["glyph"]) if meta.get("glyph") else 0.0
                             for image, meta in zip(images, metadata)], dtype=torch.float32)


def glyph_recognizer(image: Image.Image) -> str:
    """ShapeEval's template matcher as an OCR engine for the world's single digits and letters."""
    from ..shapeeval import read_glyph

    reading = read_glyph(image)
    return reading.glyph if reading is not None else ""


class VLMJudgeError(RuntimeError):
    """The judge endpoint could not be reached or did not answer with a score."""


JUDGE_PROMPT = (
    "You are judging a generated image. Instruction or prompt: \"{prompt}\".\n"
    "Rate how well the image follows it and how good it looks, from 0 (not at all) to 10 (perfectly). "
    "Think briefly, then end your answer with 'Final score: <number>'."
)


class VLMJudgeReward:
    """A VLM judge served over any OpenAI-compatible ``/v1/chat/completions`` endpoint (e.g. UnifiedReward-Think
    behind vLLM or SGLang). Scores are the judge's 0–10 rating divided by 10.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name.
        api_key: sent as a Bearer token when given.
        timeout: seconds per request; retries: attempts after the first, with exponential backoff.
    """

    def __init__(self, base_url: str, model: str, api_key: Optional[str] = None, timeout: float = 60.0,
                 retries: int = 2, backoff: float = 1.0, prompt_template: str = JUDGE_PROMPT, max_tokens: int = 512):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.prompt_template, self.max_tokens = prompt_template, max_tokens

    @staticmethod
    def parse_score(text: str) -> float:
        matches = re.findall(r"(?:final\s*score|score)\s*[:=]?\s*(-?\d+(?:\.\d+)?)", text, flags=re.IGNORECASE)
        numbers = matches or re.findall(r"-?\d+(?:\.\d+)?", text)
        if not numbers:
            raise VLMJudgeError(f"The judge's answer has no score: {text[:200]!r}")
        return min(max(float(numbers[-1]) / 10.0, 0.0), 1.0)

    def _request(self, image: Image.Image, prompt: str) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0.0, "messages": [{
            "role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url}},
                {"type": "text", "text": self.prompt_template.format(prompt=prompt)},
            ]}]}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            payload = json.loads(response.read())
        try:
            return payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise VLMJudgeError(f"Unexpected answer from {self.url}: {str(payload)[:200]}") from error

    def score(self, image: Image.Image, prompt: str) -> float:
        last_error: Optional[Exception] = None
        for attempt in range(self.retries + 1):
            try:
                return self.parse_score(self._request(image, prompt))
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError, VLMJudgeError) as error:
                last_error = error
                logger.warning("VLM judge attempt %d/%d failed: %s", attempt + 1, self.retries + 1, error)
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
        raise VLMJudgeError(f"The VLM judge at {self.url} failed after {self.retries + 1} attempts ({last_error}). "
                            "Is the server running and serving the model named in the config?")

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        _check_batch(images, prompts, metadata)
        return torch.tensor([self.score(img, p) for img, p in zip(images, prompts)], dtype=torch.float32)


class MixedReward:
    """Several named rewards combined by weights; also returns each reward for GDPO and logging.

    ``metadata[i]["reward_weights"]`` (optional) scales reward k of sample i, e.g. to use OCR only on
    text-rendering prompts.
    """

    def __init__(self, rewards: Mapping[str, Reward], weights: Mapping[str, float]):
        missing = set(rewards) ^ set(weights)
        if missing:
            raise ValueError(f"Every reward needs a weight and every weight a reward; mismatched: {sorted(missing)}.")
        self.rewards, self.weights = dict(rewards), dict(weights)

    def components(self, images, prompts, metadata) -> dict[str, torch.Tensor]:
        """Each reward's (N,) scores after per-sample weights."""
        _check_batch(images, prompts, metadata)
        out = {}
        for name, reward in self.rewards.items():
            scale = torch.tensor([float(m.get("reward_weights", {}).get(name, 1.0)) for m in metadata])
            out[name] = reward(images, prompts, metadata).float() * scale
        return out

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        parts = self.components(images, prompts, metadata)
        return sum(self.weights[name] * value for name, value in parts.items())


# --- building the configured mixture ------------------------------------------------------------------------


def paddleocr_recognizer():
    """PaddleOCR 2.x as an ``image -> text`` engine (flow_grpo's OCR reward uses the same calls)."""
    try:
        import numpy as np
        from paddleocr import PaddleOCR
    except ImportError as error:
        raise ImportError("grpo.rewards.ocr.engine=paddleocr needs `pip install paddleocr paddlepaddle` "
                          "(or use engine=glyph for the shape world).") from error
    engine = PaddleOCR(use_angle_cls=False, lang="en", show_log=False)

    def recognize(image: Image.Image) -> str:
        result = engine.ocr(np.asarray(image.convert("RGB")), cls=False)
        return " ".join(line[1][0] for line in (result[0] or [])) if result else ""

    return recognize


def build_rewards(config: RewardsConfig, device: torch.device) -> MixedReward:
    """The configured rewards behind one interface, with their weights."""
    rewards, weights = {}, {}
    if config.shapeeval is not None:
        rewards["shapeeval"] = ShapeEvalReward(config.shapeeval.criterion)
        weights["shapeeval"] = config.shapeeval.weight
    if config.ocr is not None:
        if config.ocr.engine == "glyph_iou":
            rewards["ocr"] = GlyphIoUReward()
        else:
            rewards["ocr"] = OCRReward(glyph_recognizer if config.ocr.engine == "glyph" else paddleocr_recognizer())
        weights["ocr"] = config.ocr.weight
    if config.clip is not None:
        rewards["clip"], weights["clip"] = CLIPReward(config.clip.model_id, device=str(device)), config.clip.weight
    if config.vlm_judge is not None:
        judge = config.vlm_judge
        api_key = os.environ.get(judge.api_key_env) if judge.api_key_env else None
        if judge.api_key_env and not api_key:
            raise ValueError(f"grpo.rewards.vlm_judge.api_key_env names ${judge.api_key_env}, which is not set.")
        rewards["vlm_judge"] = VLMJudgeReward(judge.base_url, judge.model, api_key, judge.timeout, judge.retries)
        weights["vlm_judge"] = judge.weight
    return MixedReward(rewards, weights)


def reward_metadata(prompt: Prompt, config: RewardsConfig) -> dict[str, Any]:
    """The prompt's metadata, with OCR switched off (weight 0) on prompts that ask for no text."""
    metadata = dict(prompt.metadata)
    if config.ocr is not None and config.ocr.text_prompts_only and "reward_weights" not in metadata:
        wants_text = bool(metadata.get("text") or metadata.get("glyph") or ('"' in prompt.text))
        metadata["reward_weights"] = {"ocr": 1.0 if wants_text else 0.0}
    return metadata
