"""Rewards for MR-GRPO, all behind one interface: ``reward(images, prompts, metadata) -> (N,) float tensor``.

As in flow_grpo, rewards are plain callables combined by weights from the config (:class:`MixedReward`). The
config names them; a name maps to a factory registered with :func:`register_reward`. Registered here: ``clip``
(CLIP text-image similarity), ``ocr`` (PaddleOCR accuracy) and ``vlm_judge`` (a VLM judge on any
OpenAI-compatible endpoint, scoring each image or, as the authors, a pairwise win rate within the group). A
project registers its own on import: DeepGen-nano's shape world adds ``shapeeval``, ``glyph`` and ``glyph_iou``
(:mod:`deepgen.nano.rewards`).
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, Sequence

import torch
import urllib3
from PIL import Image

from .registry import registrar

if TYPE_CHECKING:
    from .grpo_config import RewardSpec
    from .prompts import Prompt

logger = logging.getLogger(__name__)


class Reward(Protocol):
    """``reward(images, prompts, metadata)`` -> (N,) float32 scores; higher is better."""

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str],
                 metadata: Sequence[Mapping[str, Any]]) -> torch.Tensor: ...


def check_batch(images: Sequence[Any], prompts: Sequence[str], metadata: Sequence[Any]) -> None:
    if not len(images) == len(prompts) == len(metadata):
        raise ValueError(f"A reward needs as many prompts and metadata as images; got {len(images)} images, "
                         f"{len(prompts)} prompts, {len(metadata)} metadata.")


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
        check_batch(images, prompts, metadata)
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
    any ``fn(PIL image) -> str`` OCR engine (PaddleOCR, Tesseract, a VLM …); the shape world's is
    :func:`deepgen.nano.rewards.glyph_recognizer`.
    """

    def __init__(self, recognize: Callable[[Image.Image], str]):
        self.recognize = recognize

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        check_batch(images, prompts, metadata)
        scores = []
        for image, prompt, meta in zip(images, prompts, metadata):
            expected = str(meta.get("text") or meta.get("glyph") or quoted_text(prompt))
            scores.append(edit_similarity(expected, self.recognize(image)))
        return torch.tensor(scores, dtype=torch.float32)


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
        # urllib3 retries connection errors, timeouts, 429 and 5xx with exponential backoff. (huggingface_hub's
        # http_backoff would refuse a local judge whenever HF_HUB_OFFLINE=1, as it is on offline training nodes.)
        retry = urllib3.Retry(total=retries, backoff_factor=backoff, status_forcelist=(429, 500, 502, 503, 504),
                              allowed_methods=None, raise_on_status=True)
        self._http = urllib3.PoolManager(retries=retry, timeout=urllib3.Timeout(total=timeout))

    @staticmethod
    def parse_score(text: str) -> float:
        matches = re.findall(r"(?:final\s*score|score)\s*[:=]?\s*(-?\d+(?:\.\d+)?)", text, flags=re.IGNORECASE)
        numbers = matches or re.findall(r"-?\d+(?:\.\d+)?", text)
        if not numbers:
            raise VLMJudgeError(f"The judge's answer has no score: {text[:200]!r}")
        return min(max(float(numbers[-1]) / 10.0, 0.0), 1.0)

    def _chat(self, images: Sequence[Image.Image], text: str) -> str:
        """One chat completion with ``images`` (PNG data URLs) then ``text``; the answer's text."""
        content = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            content.append({"type": "image_url", "image_url": {"url": data_url}})
        content.append({"type": "text", "text": text})
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0.0,
                "messages": [{"role": "user", "content": content}]}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            response = self._http.request("POST", self.url, body=json.dumps(body).encode(), headers=headers)
            if response.status >= 400:
                raise ValueError(f"HTTP {response.status}: {response.data[:200]!r}")
            return json.loads(response.data)["choices"][0]["message"]["content"]
        except (urllib3.exceptions.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
            raise VLMJudgeError(
                f"The VLM judge at {self.url} failed after {self.retries + 1} attempts ({type(error).__name__}: "
                f"{str(error)[:200]}). Is the server running and serving the model named in the config?") from error

    def score(self, image: Image.Image, prompt: str) -> float:
        text = self.prompt_template.format(prompt=prompt)
        return self.parse_score(self._chat([image], text))

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        check_batch(images, prompts, metadata)
        return torch.tensor([self.score(img, p) for img, p in zip(images, prompts)], dtype=torch.float32)


PAIRWISE_JUDGE_PROMPT = (
    "You are comparing two generated images for the instruction or prompt: \"{prompt}\".\n"
    "Which image follows it better and looks better? Think briefly, then end your answer with "
    "'Image 1 is better' or 'Image 2 is better'."
)


def pairwise_win_rates(num_items: int, outcomes: Sequence[tuple[int, int, Optional[int]]]) -> torch.Tensor:
    """(num_items,) win rates from pairwise comparisons ``(i, j, winner)``: ``winner`` is i, j, or None for a tie
    or an unreadable verdict (half a win each); an item never compared gets 0. Within a group where every pair
    is compared once the rates average 0.5 (the authors' UnifiedReward-Think reward, deepgen_rl
    ``grpo_deepgen.py:295-352``)."""
    wins, comparisons = [0.0] * num_items, [0] * num_items
    for i, j, winner in outcomes:
        comparisons[i] += 1
        comparisons[j] += 1
        if winner is None:
            wins[i] += 0.5
            wins[j] += 0.5
        elif winner in (i, j):
            wins[winner] += 1.0
        else:
            raise ValueError(f"The winner of comparison ({i}, {j}) must be {i}, {j} or None, got {winner}.")
    return torch.tensor([w / c if c else 0.0 for w, c in zip(wins, comparisons)], dtype=torch.float32)


class PairwiseVLMJudgeReward(VLMJudgeReward):
    """The VLM judge as a pairwise win rate (the authors' form): every pair of the batch is compared once and each
    image scores the share of its comparisons it wins. Stage 3 scores one prompt group per call, so the pairs
    are the group's; G images cost G·(G − 1)/2 requests. (On a batch of different prompts, e.g. a held-out
    evaluation, the pairs compare different prompts: use :class:`VLMJudgeReward` there.)"""

    def __init__(self, *args: Any, prompt_template: str = PAIRWISE_JUDGE_PROMPT, **kwargs: Any):
        super().__init__(*args, prompt_template=prompt_template, **kwargs)

    @staticmethod
    def parse_winner(text: str) -> Optional[int]:
        """0 for "Image 1 is better", 1 for "Image 2 is better" (the last such phrase wins), None otherwise."""
        verdicts = re.findall(r"image\s*([12])\s*is\s*better", text, flags=re.IGNORECASE)
        return int(verdicts[-1]) - 1 if verdicts else None

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        check_batch(images, prompts, metadata)
        outcomes = []
        for i in range(len(images)):
            for j in range(i + 1, len(images)):
                text = self.prompt_template.format(prompt=prompts[i])
                verdict = self.parse_winner(self._chat([images[i], images[j]], text))
                outcomes.append((i, j, None if verdict is None else (i, j)[verdict]))
        return pairwise_win_rates(len(images), outcomes)


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

    def scores(self, images, prompts, metadata) -> dict[str, torch.Tensor]:
        """Each reward's raw (N,) scores (no per-sample weights)."""
        check_batch(images, prompts, metadata)
        return {name: reward(images, prompts, metadata).float() for name, reward in self.rewards.items()}

    def components(self, images, prompts, metadata) -> dict[str, torch.Tensor]:
        """Each reward's (N,) scores after per-sample weights."""
        scales = sample_reward_weights(metadata, list(self.rewards))  # (N, K)
        return {name: score * scales[:, k] for k, (name, score) in enumerate(self.scores(images, prompts,
                                                                                          metadata).items())}

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        parts = self.components(images, prompts, metadata)
        return sum(self.weights[name] * value for name, value in parts.items())


def sample_reward_weights(metadata: Sequence[Mapping[str, Any]], names: Sequence[str]) -> torch.Tensor:
    """(N, K) per-sample weights: ``metadata[i]["reward_weights"][names[k]]``, 1.0 where not given."""
    return torch.tensor([[float(m.get("reward_weights", {}).get(name, 1.0)) for name in names] for m in metadata],
                        dtype=torch.float32).reshape(len(metadata), len(names))


# --- the registry and the configured mixture ------------------------------------------------------------------

# ``factory(device, **options) -> Reward``, by the name the config uses (``grpo.rewards.<name>``).
RewardFactory = Callable[..., Reward]
REWARDS: dict[str, RewardFactory] = {}


# Decorator: ``@register_reward(name)`` makes ``factory(device, **options) -> Reward`` available as
# ``grpo.rewards.<name>``.
register_reward = registrar(REWARDS, "reward")


@register_reward("clip")
def clip_reward(device: torch.device, model_id: str = "openai/clip-vit-large-patch14") -> CLIPReward:
    return CLIPReward(model_id, device=str(device))


def paddleocr_recognizer():
    """PaddleOCR 2.x as an ``image -> text`` engine (flow_grpo's OCR reward uses the same calls)."""
    try:
        import numpy as np
        from paddleocr import PaddleOCR
    except ImportError as error:
        raise ImportError("grpo.rewards.ocr needs `pip install paddleocr paddlepaddle` (or, for the shape world, "
                          "the glyph reward of deepgen.nano).") from error
    engine = PaddleOCR(use_angle_cls=False, lang="en", show_log=False)

    def recognize(image: Image.Image) -> str:
        result = engine.ocr(np.asarray(image.convert("RGB")), cls=False)
        return " ".join(line[1][0] for line in (result[0] or [])) if result else ""

    return recognize


@register_reward("ocr")
def ocr_reward(device: torch.device) -> OCRReward:
    return OCRReward(paddleocr_recognizer())


@register_reward("vlm_judge")
def vlm_judge_reward(device: torch.device, base_url: str = "http://127.0.0.1:8000/v1",
                     model: str = "UnifiedReward-Think-qwen-7b", api_key_env: Optional[str] = None,
                     timeout: float = 60.0, retries: int = 2, pairwise: bool = False) -> VLMJudgeReward:
    """The judge behind ``base_url``; ``api_key_env`` names the environment variable holding its key (keys never
    go into configs). ``pairwise``: the group win rate (:class:`PairwiseVLMJudgeReward`, the authors') instead of
    a 0-10 score per image."""
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise ValueError(f"grpo.rewards.vlm_judge.options.api_key_env names ${api_key_env}, which is not set.")
    judge = PairwiseVLMJudgeReward if pairwise else VLMJudgeReward
    return judge(base_url, model, api_key, timeout, retries)


def build_rewards(config: Mapping[str, Optional[RewardSpec]], device: torch.device) -> MixedReward:
    """The configured rewards (``grpo.rewards``: name -> :class:`RewardSpec`, null = off) with their weights."""
    rewards, weights = {}, {}
    for name, spec in config.items():
        if spec is None:
            continue
        factory = REWARDS.get(name)
        if factory is None:
            raise ValueError(f"Unknown reward {name!r} in grpo.rewards; registered: {sorted(REWARDS)}. A project's "
                             "own rewards register on import (the shape world's: import deepgen.nano.rewards).")
        try:
            inspect.signature(factory).bind(device, **spec.options)
        except TypeError as error:
            raise ValueError(f"grpo.rewards.{name}.options={spec.options} do not fit {name!r}: {error}; it takes "
                             f"{inspect.signature(factory)}.") from None
        rewards[name], weights[name] = factory(device, **spec.options), spec.weight
    return MixedReward(rewards, weights)


def wants_text(prompt: Prompt) -> bool:
    """Whether a prompt asks for rendered text: metadata "text"/"glyph", or a quote in the prompt."""
    return bool(prompt.metadata.get("text") or prompt.metadata.get("glyph") or '"' in prompt.text)


def reward_metadata(prompt: Prompt, config: Mapping[str, Optional[RewardSpec]]) -> dict[str, Any]:
    """The prompt's metadata, with every ``text_prompts_only`` reward switched off (weight 0) on prompts that ask
    for no text, unless the metadata sets ``reward_weights`` itself."""
    metadata = dict(prompt.metadata)
    text_only = [name for name, spec in config.items() if spec is not None and spec.text_prompts_only]
    if text_only and "reward_weights" not in metadata:
        metadata["reward_weights"] = {name: 1.0 if wants_text(prompt) else 0.0 for name in text_only}
    return metadata
