"""Rewards: one interface, weights, OCR, the VLM judge over a local OpenAI-compatible server, CLIP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
from PIL import Image

from deepgen.training.grpo_config import RewardSpec
from deepgen.training.prompts import Prompt
from deepgen.training.rewards import (REWARDS, MixedReward, OCRReward, PairwiseVLMJudgeReward, VLMJudgeError,
                                      VLMJudgeReward, build_rewards, edit_similarity, pairwise_win_rates, quoted_text,
                                      reward_metadata, sample_reward_weights)


def test_batch_mismatch_is_an_error():
    with pytest.raises(ValueError, match="as many prompts"):
        OCRReward(lambda image: "")([Image.new("RGB", (8, 8))], ["a", "b"], [{}])


def test_ocr_text_metrics():
    assert edit_similarity("DeepGen", "deep gen") == 1.0 and edit_similarity("abc", "") == 0.0
    assert quoted_text('a sign that says "OPEN 24h"') == "OPEN 24h"


def test_mixed_reward_weights_and_per_sample_weights():
    const = lambda value: (lambda images, prompts, meta: torch.full((len(images),), value))  # noqa: E731
    mixed = MixedReward({"a": const(1.0), "b": const(0.5)}, {"a": 0.25, "b": 2.0})
    images, prompts = [Image.new("RGB", (8, 8))] * 2, ["x", "y"]
    meta = [{}, {"reward_weights": {"b": 0.0}}]
    assert torch.allclose(mixed(images, prompts, meta), torch.tensor([1.25, 0.25]))
    assert set(mixed.components(images, prompts, meta)) == {"a", "b"}
    with pytest.raises(ValueError, match="mismatched"):
        MixedReward({"a": const(1.0)}, {"b": 1.0})


def test_per_sample_weights_and_text_only_rewards():
    config = {"a": RewardSpec(), "b": RewardSpec(text_prompts_only=True), "c": None}
    plain, text = Prompt("a red circle", {}), Prompt('a sign that says "OPEN"', {})
    assert reward_metadata(plain, config)["reward_weights"] == {"b": 0.0}
    assert reward_metadata(text, config)["reward_weights"] == {"b": 1.0}
    assert reward_metadata(Prompt("x", {"reward_weights": {"a": 0.5}}), config)["reward_weights"] == {"a": 0.5}
    weights = sample_reward_weights([{}, {"reward_weights": {"b": 0.0, "a": 0.5}}], ["a", "b"])
    assert torch.equal(weights, torch.tensor([[1.0, 1.0], [0.5, 0.0]]))


def test_registry_errors_name_the_fix():
    assert {"clip", "ocr", "vlm_judge"} <= set(REWARDS)
    with pytest.raises(ValueError, match="Unknown reward 'nope'.*registered"):
        build_rewards({"nope": RewardSpec()}, torch.device("cpu"))
    with pytest.raises(ValueError, match="options.*do not fit 'clip'.*model_id"):
        build_rewards({"clip": RewardSpec(options={"model": "x"})}, torch.device("cpu"))


class _Judge(BaseHTTPRequestHandler):
    answers: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.headers.get("Authorization"), body))
        status, text = self.answers.pop(0)
        payload = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Judge.answers, _Judge.seen = [], []
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_vlm_judge_scores_and_retries(judge_server):
    _Judge.answers = [(500, "oops"), (200, "The circle is green. Final score: 8"), (200, "Final score: 3.5")]
    judge = VLMJudgeReward(judge_server, model="unified-reward-think", api_key="k", timeout=5, retries=1, backoff=0)
    scores = judge([Image.new("RGB", (16, 16))] * 2, ["make the circle green", "a cat"], [{}, {}])
    assert torch.allclose(scores, torch.tensor([0.8, 0.35]))
    auth, body = _Judge.seen[-1]
    assert auth == "Bearer k" and body["model"] == "unified-reward-think"
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_pairwise_judge_gives_group_win_rates(judge_server):
    assert torch.equal(pairwise_win_rates(3, [(0, 1, 0), (0, 2, None), (1, 2, 2)]), torch.tensor([0.75, 0.0, 0.75]))
    with pytest.raises(ValueError, match="winner"):
        pairwise_win_rates(3, [(0, 1, 2)])
    # Pairs (0,1), (0,2), (1,2): image 2 beats both, image 0 beats 1.
    _Judge.answers = [(200, "Image 1 is better"), (200, "so... Image 2 is better"), (200, "Image 2 is better")]
    judge = build_rewards({"vlm_judge": RewardSpec(options={"base_url": judge_server, "model": "m", "retries": 0,
                                                            "pairwise": True})}, torch.device("cpu"))
    images = [Image.new("RGB", (16, 16), c) for c in ("red", "green", "blue")]
    rates = judge.rewards["vlm_judge"](images, ["a cat"] * 3, [{}] * 3)
    assert torch.equal(rates, torch.tensor([0.5, 0.0, 1.0])) and rates.mean() == 0.5
    assert len(_Judge.seen[-1][1]["messages"][0]["content"]) == 3  # two images, then the question
    assert PairwiseVLMJudgeReward.parse_winner("no idea") is None


def test_vlm_judge_reports_a_dead_service():
    judge = VLMJudgeReward("http://127.0.0.1:9/v1", model="m", timeout=1, retries=1, backoff=0)
    with pytest.raises(VLMJudgeError, match="failed after 2 attempts"):
        judge([Image.new("RGB", (16, 16))], ["x"], [{}])
    with pytest.raises(ValueError, match="http"):
        VLMJudgeReward("localhost:8000", model="m")


def test_vlm_judge_names_a_refusing_endpoint(judge_server):
    _Judge.answers = [(404, "no such model")]
    with pytest.raises(VLMJudgeError, match="HTTP 404"):
        VLMJudgeReward(judge_server, model="m", retries=3)([Image.new("RGB", (16, 16))], ["x"], [{}])
    assert len(_Judge.seen) == 1  # a client error is not retried


def test_vlm_judge_without_a_score(judge_server):
    _Judge.answers = [(200, "no idea")]
    with pytest.raises(VLMJudgeError, match="no score"):
        VLMJudgeReward(judge_server, model="m", retries=0)([Image.new("RGB", (16, 16))], ["x"], [{}])


def test_clip_reward_on_a_tiny_random_clip(tmp_path):
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer)
    from tokenizers.pre_tokenizers import ByteLevel

    from deepgen.training.rewards import CLIPReward

    chars = sorted(ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>",
                                                                                   "<|endoftext|>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    config = CLIPConfig(text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32,
                                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
                                     "eos_token_id": vocab["<|endoftext|>"], "bos_token_id": vocab["<|startoftext|>"]},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
                        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                  tokenizer=tokenizer).save_pretrained(tmp_path / "clip")
    reward = CLIPReward(str(tmp_path / "clip"))
    scores = reward([Image.new("RGB", (40, 40), "red"), Image.new("RGB", (40, 40), "blue")], ["red", "blue"], [{}, {}])
    assert scores.shape == (2,) and torch.all(scores.abs() <= 1.0 + 1e-5)
