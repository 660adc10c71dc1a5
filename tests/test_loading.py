"""Loading native checkpoints and pipeline folders (deepgen/loading.py).

Synthetic native checkpoints are built from tiny pipelines: a "source" pipeline (seed 1) whose VLM carries a
perturbed LoRA provides the checkpoint tensors; its base VLM and a different DiT (seed 2, which the checkpoint's
``transformer.*`` overrides) are written as the base-model folders.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from deepgen import DeepGenPipeline
from deepgen.kontext import KontextSD3Transformer2DModel
from deepgen.loading import is_lora_key, normalize_vlm_key, read_state_dict, strip_wrapper_prefixes
from deepgen.lora import add_lora, has_lora, lora_layers

TINY_OVERRIDES = {"num_attention_heads": 2, "scb_layers": [3, 2, 1]}  # what tensor shapes cannot tell (tiny)
PROMPTS = ["a red circle on the left", "make it blue"]


def _tiny(seed: int) -> DeepGenPipeline:
    """The tiny preset with random SCB heads (``projector_2/3`` start at zero, as the authors initialise them,
    which would make every SCB output zero and the comparisons below vacuous)."""
    pipe = DeepGenPipeline.from_config("tiny", seed=seed)
    _randomize_heads(pipe, seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _randomize_heads(pipe: DeepGenPipeline, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in (pipe.scb.projector_2, pipe.scb.projector_3):
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.1)


def _perturb_lora(module: torch.nn.Module, seed: int = 3) -> None:
    """Give every LoRA B a random value so the adapter is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _source_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)


def conditions(pipe: DeepGenPipeline, with_image: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """SCB outputs (seq, pooled) of a fixed text-to-image batch, or of an edit (ViT and its LoRA included)."""
    references = pipe.prepare_images(_source_image(), len(PROMPTS), 64, 64)[0] if with_image else None
    seq, pooled = pipe.encode_prompt(PROMPTS, [""] * len(PROMPTS), references)
    assert pooled.abs().max() > 0, "all-zero SCB output: comparisons would be vacuous"
    return seq, pooled


def assert_same_conditions(a: DeepGenPipeline, b: DeepGenPipeline, exact: bool = False) -> None:
    for with_image in (False, True):
        for x, y in zip(conditions(a, with_image), conditions(b, with_image)):
            if exact:
                assert torch.equal(x, y)
            else:
                torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


def legacy_vlm_key(key: str) -> str:
    """transformers >= 4.52 names -> the older Qwen2.5-VL layout (``model.layers.*``, ``visual.*``)."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key


def native_state(pipe: DeepGenPipeline, legacy: bool = False) -> dict[str, torch.Tensor]:
    """The authors' flat state dict layout, from a pipeline whose VLM carries a LoRA."""
    state = {k: v.clone() for k, v in pipe.scb.state_dict().items()}
    state.update({f"transformer.{k}": v.clone() for k, v in pipe.transformer.state_dict().items()})
    for key, value in pipe.vlm.state_dict().items():
        if is_lora_key(key):
            state[f"lmm.{legacy_vlm_key(key) if legacy else key}"] = value.clone()
    return state


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("native")
    source = _tiny(seed=1)
    source.vlm.save_pretrained(root / "vlm")
    source.tokenizer.save_pretrained(root / "vlm")
    base_dit = _tiny(seed=2)
    base_dit.transformer.save_pretrained(root / "dit" / "transformer")
    base_dit.vae.save_pretrained(root / "dit" / "vae")
    base_dit.scheduler.save_pretrained(root / "dit" / "scheduler")
    add_lora(source.vlm, rank=4, alpha=8)
    _perturb_lora(source.vlm)
    return SimpleNamespace(root=root, source=source, state=native_state(source))


def load_native(native: SimpleNamespace, state: dict[str, torch.Tensor], name: str = "model.pt",
                **overrides) -> DeepGenPipeline:
    path = native.root / "ckpts" / name
    path.parent.mkdir(exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    overrides = {**TINY_OVERRIDES, **overrides}
    return DeepGenPipeline.from_native_checkpoint(path, vlm=native.root / "vlm", dit=native.root / "dit", **overrides)


# --- reading files -------------------------------------------------------------------------------------------


def test_key_helpers():
    assert strip_wrapper_prefixes("module.model.projector_1.weight") == "projector_1.weight"
    assert strip_wrapper_prefixes("model.lmm.model.layers.0.x") == "lmm.model.layers.0.x"
    assert strip_wrapper_prefixes("meta_queries") == "meta_queries"
    assert normalize_vlm_key("model.layers.0.mlp.up_proj.weight") == "model.language_model.layers.0.mlp.up_proj.weight"
    assert normalize_vlm_key("visual.blocks.0.attn.qkv.weight") == "model.visual.blocks.0.attn.qkv.weight"
    assert normalize_vlm_key("model.visual.merger.mlp.0.weight") == "model.visual.merger.mlp.0.weight"
    assert normalize_vlm_key("lm_head.weight") == "lm_head.weight"


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".safetensors"])
def test_read_state_dict_formats(tmp_path, suffix):
    state = {"meta_queries": torch.randn(2, 3), "projector_1.weight": torch.randn(4, 3)}
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": {"model": state}}, path)  # training wrappers are unwrapped
    loaded = read_state_dict(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


_EXECUTED = []


def _side_effect():
    _EXECUTED.append(True)
    return torch.zeros(1)


class _Payload:
    """Unpickling this runs ``_side_effect``: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (_side_effect, ())


def test_read_state_dict_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"meta_queries": _Payload()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        read_state_dict(path)
    assert not _EXECUTED, "a weights-only load must not run code from the pickle"


def test_read_state_dict_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")
    (tmp_path / "ckpt.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="Unsupported checkpoint format"):
        read_state_dict(tmp_path / "ckpt.ckpt")
    torch.save({"meta_queries": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="flat state dict"):
        read_state_dict(tmp_path / "mixed.pt")


# --- native checkpoints (synthetic) ----------------------------------------------------------------------------


def test_native_checkpoint_loads(native):
    pipe = load_native(native, native.state)
    for name in ("scb", "transformer"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(native.source, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), f"{name} weights differ from the checkpoint"
    assert has_lora(pipe.vlm)
    assert len(lora_layers(pipe.vlm)) == len(lora_layers(native.source.vlm))
    assert_same_conditions(pipe, native.source)


def test_native_safetensors_checkpoint_loads(native):
    assert_same_conditions(load_native(native, native.state, name="model.safetensors"), native.source)


@pytest.mark.parametrize("prefix", ["module.", "model.", "module.model."])
def test_native_wrapper_prefixes(native, prefix):
    state = {prefix + k: v for k, v in native.state.items()}
    assert_same_conditions(load_native(native, state, name=f"{prefix}pt"), native.source)


def test_native_legacy_vlm_lora_layout(native):
    state = native_state(native.source, legacy=True)
    assert any(k.startswith("lmm.model.layers.") for k in state)
    assert any(k.startswith("lmm.visual.") for k in state)
    assert not any(k.startswith(("lmm.model.language_model.", "lmm.model.visual.")) for k in state)
    assert_same_conditions(load_native(native, state, name="legacy.pt"), native.source)


@pytest.mark.parametrize("extra, named", [
    ("optimizer.step", "optimizer.step"),
    ("projector_4.weight", "projector_4.weight"),
    ("connector.layers.0.extra.weight", "connector.layers.0.extra.weight"),
    # keys under a component root are named relative to that component, in a message naming the component
    ("transformer.bogus.weight", "the DiT: missing [] (0 in all), unexpected ['bogus.weight']"),
    ("lmm.model.language_model.bogus.weight",
     "the VLM: missing [] (0 in all), unexpected ['model.language_model.bogus.weight']"),
], ids=["unknown-root", "projector_4", "connector-layer", "dit", "vlm"])
def test_native_unknown_key_is_named(native, extra, named):
    state = dict(native.state, **{extra: torch.zeros(2)})
    with pytest.raises(ValueError, match=re.escape(named)):
        load_native(native, state, name="extra.pt")


@pytest.mark.parametrize("drop", ["meta_queries", "projector_2.weight", "projector_3.bias",
                                  "connector.layers.0.mlp.fc2.weight"])
def test_native_missing_scb_tensor(native, drop):
    state = {k: v for k, v in native.state.items() if k != drop}
    with pytest.raises(ValueError, match=re.escape(drop)):
        load_native(native, state, name="missing.pt")


def test_native_wrong_shape_overrides_fail_loudly(native):
    with pytest.raises(ValueError, match="scb_layers"):
        load_native(native, native.state, name="layers.pt", scb_layers=[3, 2])
    with pytest.raises(ValueError, match="Unknown overrides"):
        load_native(native, native.state, name="unknown.pt", num_heads=2)


# --- the golden fixture ----------------------------------------------------------------------------------------


def _golden_pipe(golden: Path) -> DeepGenPipeline:
    pipe = DeepGenPipeline.from_native_checkpoint(golden / "checkpoint_native_with_lora.pt", vlm=golden / "vlm",
                                                  dit=golden)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _golden_pooled(pipe: DeepGenPipeline) -> torch.Tensor:
    prompts = ["a red circle on the left and a blue square on the right", "a small green triangle at the top"]
    return pipe.encode_prompt(prompts, ["", ""])[1]


def test_fixture_keys_with_wrapper_prefix(golden, tmp_path):
    state = torch.load(golden / "checkpoint_native_with_lora.pt", weights_only=True)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "model.pt")
    shutil.copy(golden / "native_config.json", tmp_path / "native_config.json")
    pipe = DeepGenPipeline.from_native_checkpoint(tmp_path / "model.pt", vlm=golden / "vlm", dit=golden)
    assert has_lora(pipe.vlm)
    expected = load_file(golden / "cases" / "t2i_batch2.safetensors")["pooled_out"]
    torch.testing.assert_close(_golden_pooled(pipe), expected, atol=1e-4, rtol=1e-4)


def test_fixture_save_pretrained_round_trip(golden, tmp_path):
    pipe = _golden_pipe(golden)
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "vlm_lora" / "adapter_model.safetensors").is_file()
    assert not any("lora" in k for k in load_file(tmp_path / "saved" / "vlm" / "model.safetensors"))
    loaded = DeepGenPipeline.from_pretrained(tmp_path / "saved")
    assert has_lora(loaded.vlm)
    assert torch.equal(_golden_pooled(loaded), _golden_pooled(pipe))


# --- pipeline folders ------------------------------------------------------------------------------------------


def _release_compatible_pipe() -> DeepGenPipeline:
    """A tiny model whose unstated connector settings equal the deepgen-1.0 preset's (32 heads, reference
    layer selection), as the diffusers release loader assumes."""
    from deepgen import ConnectorConfig, get_preset

    config = get_preset("tiny", connector=ConnectorConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                                          num_attention_heads=32), scb_layers=None)
    pipe = DeepGenPipeline.from_config(config, seed=4)
    _randomize_heads(pipe, seed=4)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _write_release_folder(pipe: DeepGenPipeline, folder: Path, extra: dict | None = None,
                          drop: str | None = None) -> None:
    """Our folder, with ``connector/`` rewritten as the release might store it (unknown prefix, foreign config)."""
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "scb")
    (folder / "connector").mkdir()
    state = {f"bridge.{k}": v.contiguous() for k, v in pipe.scb.state_dict().items() if k != drop}
    state.update(extra or {})
    save_file(state, folder / "connector" / "model.safetensors")
    (folder / "connector" / "config.json").write_text(json.dumps({"_class_name": "DeepGenConnector"}))


def test_release_folder_loads(tmp_path):
    pipe = _release_compatible_pipe()
    _write_release_folder(pipe, tmp_path / "release")
    loaded = DeepGenPipeline.from_pretrained(tmp_path / "release")
    assert loaded.scb.config.connector_config["num_attention_heads"] == 32
    assert_same_conditions(loaded, pipe, exact=True)


def test_release_folder_unmatched_keys_fail(tmp_path):
    pipe = _release_compatible_pipe()
    _write_release_folder(pipe, tmp_path / "extra", extra={"bridge.text_head.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=re.escape("bridge.text_head.weight")):
        DeepGenPipeline.from_pretrained(tmp_path / "extra")
    _write_release_folder(pipe, tmp_path / "missing", drop="projector_2.bias")
    with pytest.raises(ValueError, match=re.escape("projector_2.bias")):
        DeepGenPipeline.from_pretrained(tmp_path / "missing")


def test_fixture_as_release_folder_with_connector_overrides(golden, tmp_path):
    """The golden model laid out like the diffusers release loads exactly once told its connector's head count
    (the release publishes no connector config; the default is the deepgen-1.0 preset's 32 heads)."""
    pipe = _golden_pipe(golden)
    _write_release_folder(pipe, tmp_path / "release")
    default = DeepGenPipeline.from_pretrained(tmp_path / "release")
    assert default.scb.config.connector_config["num_attention_heads"] == 32
    assert not torch.allclose(_golden_pooled(default), _golden_pooled(pipe))
    loaded = DeepGenPipeline.from_pretrained(tmp_path / "release", num_attention_heads=2)
    assert torch.equal(_golden_pooled(loaded), _golden_pooled(pipe))


def test_from_pretrained_bad_locations(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="from_native_checkpoint"):
        DeepGenPipeline.from_pretrained(tmp_path / "model.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model_index.json"):
        DeepGenPipeline.from_pretrained(tmp_path / "empty")


def test_save_pretrained_round_trip_and_overwrite(tmp_path):
    first, second = _tiny(seed=5), _tiny(seed=6)
    target = tmp_path / "out" / "pipe"
    first.save_pretrained(target)
    assert_same_conditions(DeepGenPipeline.from_pretrained(target), first, exact=True)
    second.save_pretrained(target)  # overwriting an existing folder replaces it
    assert_same_conditions(DeepGenPipeline.from_pretrained(target), second, exact=True)
    assert sorted(p.name for p in target.parent.iterdir()) == ["pipe"], "temporary folders were left behind"


def test_save_pretrained_failure_keeps_previous_folder(tmp_path, monkeypatch):
    pipe = _tiny(seed=5)
    target = tmp_path / "pipe"
    pipe.save_pretrained(target)
    before = sorted(p.relative_to(target) for p in target.rglob("*"))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipe.scheduler, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        pipe.save_pretrained(target)
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"], "a failed save left a temporary folder"


# --- the diffusers-format release, as published (replicas of each layout) --------------------------------------

RELEASE_ID = "deepgenteam/DeepGen-1.0-diffusers"


def _write_release_replica(pipe: DeepGenPipeline, folder: Path, with_vlm: bool) -> None:
    """The release's layout at tiny size: ``connector/`` with the native key names and no config of ours,
    ``prompt_template.json``, the release's ``model_index.json``, a transformer config naming the remote-code class,
    ``deepgen_pipeline.py``, and ``vlm/`` only from the second upload on."""
    from deepgen.vlm import PROMPT_TEMPLATE

    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "scb")
    (folder / "connector").mkdir()
    save_file({k: v.contiguous() for k, v in pipe.scb.state_dict().items()}, folder / "connector" / "model.safetensors")
    if not with_vlm:
        shutil.rmtree(folder / "vlm")
    (folder / "prompt_template.json").write_text(json.dumps(PROMPT_TEMPLATE))
    (folder / "deepgen_pipeline.py").write_text("# the authors' remote code: never imported by us\nraise SystemExit\n")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config["_class_name"] = ["deepgen_pipeline", "SD3Transformer2DModel"]
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": ["deepgen_pipeline", "DeepGenPipeline"], "_diffusers_version": "0.35.2",
        "transformer": ["deepgen_pipeline", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> SimpleNamespace:
    """Replicas of both uploads (with and without ``vlm/``) and a base VLM standing in for Qwen2.5-VL-3B."""
    root = tmp_path_factory.mktemp("release")
    trained = _release_compatible_pipe()
    base = _tiny(seed=7).vlm  # the same tiny VLM config, other weights: what the base Qwen is to the release's
    base.save_pretrained(root / "base-vlm")
    trained.tokenizer.save_pretrained(root / "base-vlm")
    _write_release_replica(trained, root / "second-upload", with_vlm=True)
    _write_release_replica(trained, root / "first-upload", with_vlm=False)
    return SimpleNamespace(root=root, trained=trained, base=base)


def _from_hub(monkeypatch, folder: Path, **kwargs) -> DeepGenPipeline:
    """Load the hub id through the same code path as a real download, the snapshot being the replica."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: calls.append(repo_id) or str(folder))
    pipe = DeepGenPipeline.from_pretrained(RELEASE_ID, **kwargs)
    assert calls == [RELEASE_ID]
    return pipe


def test_release_second_upload_uses_its_trained_vlm(release, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="deepgen.loading"):
        pipe = _from_hub(monkeypatch, release.root / "second-upload")
    assert not [record for record in caplog.records if record.name.startswith("deepgen")]
    assert isinstance(pipe.transformer, KontextSD3Transformer2DModel)
    assert pipe.scb.config.connector_config["num_attention_heads"] == 32
    assert_same_conditions(pipe, release.trained, exact=True)
    assert pipe.provenance.vlm == "release VLM, LoRA merged"
    assert pipe.describe().splitlines() == [f"DeepGen from {RELEASE_ID} (diffusers-format release)",
                                            "VLM: release VLM, LoRA merged"]


def test_release_first_upload_takes_the_base_vlm_with_a_warning(release, monkeypatch, caplog):
    monkeypatch.setattr("deepgen.loading.OFFICIAL_VLM", str(release.root / "base-vlm"))
    with caplog.at_level(logging.WARNING, logger="deepgen.loading"):
        pipe = _from_hub(monkeypatch, release.root / "first-upload")
    assert any("has no vlm/" in r.getMessage() and "trained VLM weights" in r.getMessage() for r in caplog.records)
    assert pipe.provenance.vlm == "base Qwen2.5-VL-3B-Instruct"
    assert "VLM: base Qwen2.5-VL-3B-Instruct" in pipe.describe() and "absent" in pipe.describe()
    for (key, ours), theirs in zip(pipe.vlm.state_dict().items(), release.base.state_dict().values()):
        assert torch.equal(ours, theirs), key
    torch.testing.assert_close(pipe.scb.meta_queries, release.trained.scb.meta_queries, atol=0, rtol=0)


@pytest.mark.parametrize("upload", ["first-upload", "second-upload"])
def test_release_vlm_model_path_overrides(release, monkeypatch, caplog, upload):
    with caplog.at_level(logging.WARNING, logger="deepgen.loading"):
        pipe = _from_hub(monkeypatch, release.root / upload, vlm_model_path=release.root / "base-vlm")
    for (key, ours), theirs in zip(pipe.vlm.state_dict().items(), release.base.state_dict().values()):
        assert torch.equal(ours, theirs), key
    assert pipe.provenance.vlm == "VLM from base-vlm"  # a local folder by its name: the app shows this
    replaced = any("replaces the folder's own vlm/" in r.getMessage() for r in caplog.records)
    assert replaced == (upload == "second-upload")


def test_release_prompt_template_differences_fail_loudly(release, tmp_path, monkeypatch):
    folder = tmp_path / "changed"
    shutil.copytree(release.root / "second-upload", folder)
    template = json.loads((folder / "prompt_template.json").read_text())
    template["GENERATION"] = "Draw: {input}"
    (folder / "prompt_template.json").write_text(json.dumps(template))
    with pytest.raises(ValueError, match=re.escape("GENERATION: ours 'Generate an image: {input}', the release's "
                                                   "'Draw: {input}'")):
        _from_hub(monkeypatch, folder)
    template = dict(json.loads((release.root / "second-upload" / "prompt_template.json").read_text()), NEW_KEY="x")
    (folder / "prompt_template.json").write_text(json.dumps(template))
    with pytest.raises(ValueError, match="NEW_KEY"):
        _from_hub(monkeypatch, folder)


def test_folders_saved_before_the_scb_rename_still_load(tmp_path):
    """Our folders used to hold the SCB in ``connector/`` (with our config) under the model_index key
    ``connector``; they load unchanged (the shipped DeepGen-nano assets are such folders)."""
    pipe = _tiny(seed=8)
    pipe.save_pretrained(tmp_path / "old")
    (tmp_path / "old" / "scb").rename(tmp_path / "old" / "connector")
    index = json.loads((tmp_path / "old" / "model_index.json").read_text())
    index["connector"] = index.pop("scb")
    (tmp_path / "old" / "model_index.json").write_text(json.dumps(index))
    loaded = DeepGenPipeline.from_pretrained(tmp_path / "old")
    assert loaded.provenance.layout == "DeepGen pipeline folder" and loaded.provenance.vlm == "saved VLM"
    assert_same_conditions(loaded, pipe, exact=True)
    assert loaded.connector is loaded.scb


# --- native checkpoints as released: Pretrain/SFT with the VLM LoRA, RL without ---------------------------------


def test_native_rl_checkpoint_without_vlm_tensors_runs_on_the_base_vlm(native, caplog):
    state = {k: v for k, v in native.state.items() if not k.startswith("lmm.")}
    with caplog.at_level(logging.INFO, logger="deepgen.loading"):
        pipe = load_native(native, state, name="rl.pt")
    messages = [r.getMessage() for r in caplog.records if r.name == "deepgen.loading"]
    assert sum("holds no VLM tensors (lmm.*)" in m for m in messages) == 1
    assert not has_lora(pipe.vlm)
    assert pipe.provenance.vlm == "VLM from vlm"
    for name in ("scb", "transformer"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(native.source, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    with pytest.raises(ValueError, match=re.escape("optimizer.step")):  # every key still consumed or reported
        load_native(native, dict(state, **{"optimizer.step": torch.zeros(1)}), name="rl-extra.pt")


def test_native_sft_checkpoint_with_vlm_lora_says_so(native, caplog):
    with caplog.at_level(logging.INFO, logger="deepgen.loading"):
        pipe = load_native(native, native.state, name="sft.pt")
    assert not any("holds no VLM tensors" in r.getMessage() for r in caplog.records)
    assert pipe.provenance.layout == "native checkpoint"
    assert pipe.provenance.vlm.endswith(f"+ the checkpoint's VLM LoRA ({len(lora_layers(pipe.vlm))} modules)")
