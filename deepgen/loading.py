"""Loading the authors' releases and saving/loading our own format.

Three layouts (ARCHITECTURE.md, "Released checkpoints"):

* **native** (``model.pt`` at the root of ``deepgenteam/DeepGen-1.0-Pretrain``, ``deepgenteam/DeepGen-1.0-SFT`` and
  ``deepgenteam/DeepGen-1.0``, the RL model): a flat state dict of ``meta_queries``, ``projector_{1,2,3}.*``,
  ``connector.layers.*``, ``transformer.*`` and optional VLM LoRA ``lmm.*lora*`` (the RL model has none: the
  authors' RL trainer does not save the VLM), loaded on top of the base Qwen2.5-VL and UniPic2 DiT folders;
* **diffusers release** (``deepgenteam/DeepGen-1.0-diffusers``): ``connector/`` (think tokens + SCB),
  ``transformer/``, ``vae/``, ``scheduler/``, ``tokenizer/``, ``prompt_template.json`` and, since its second upload,
  ``vlm/`` (the VLM with its LoRA merged); without ``vlm/`` the base Qwen2.5-VL-3B-Instruct is used, with a warning;
* **ours**: the same folders written by :meth:`DeepGenPipeline.save_pretrained` (the SCB in ``scb/``; folders
  saved before the rename have ``connector/``), plus LoRA adapters kept separate in ``vlm_lora/`` and
  ``transformer_lora/``.

The loaders return the components and their :class:`WeightsProvenance`; the pipeline builds itself from them
(this module never imports the pipeline).

Every checkpoint tensor is consumed or reported: a key that fits nowhere raises a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from .config import LoraSettings, get_preset, reference_scb_layers
from .kontext import KontextSD3Transformer2DModel
from .lora import add_lora, has_lora, is_merged, load_lora, lora_layers, save_lora
from .scb import StackedChannelBridge
from .vlm import check_prompt_template

logger = logging.getLogger(__name__)

NATIVE_ROOTS = ("meta_queries", "projector_1.", "projector_2.", "projector_3.", "connector.", "transformer.", "lmm.",
                "vae.")
_LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.")
_BRIDGE_KEY = re.compile(r"(?:^|(?<=\.))(meta_queries|projector_[123]\.(?:weight|bias)|connector\.layers\.\d+\..+)$")
MODEL_INDEX = "model_index.json"


# --- reading state dicts -------------------------------------------------------------------------------------

def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Read a ``.pt``/``.pth``/``.bin`` (with ``weights_only=True``: no code runs) or ``.safetensors`` file.

    A dict wrapping the weights under ``state_dict``/``model``/``module`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint {path} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        state = load_file(path)
    elif path.suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle errors come in many types; all mean the same to the user
            raise ValueError(f"Could not read {path} as a weights-only torch checkpoint: {error}") from error
    else:
        raise ValueError(f"Unsupported checkpoint format {path.suffix!r}; expected .pt, .pth, .bin or .safetensors.")
    while isinstance(state, dict) and len(state) == 1 and next(iter(state)) in ("state_dict", "model", "module"):
        state = next(iter(state.values()))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors.")
    return state


def strip_wrapper_prefixes(key: str) -> str:
    """Remove ``module.`` (DDP) and ``model.`` wrappers in front of a native root name."""
    while not key.startswith(NATIVE_ROOTS):
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        else:
            return key
    return key


def normalize_vlm_key(key: str) -> str:
    """A VLM key (``lmm.`` removed) in transformers >= 4.52 names: ``model.language_model.*``, ``model.visual.*``.

    Older layouts name the text model ``model.layers/embed_tokens/norm`` and the ViT ``visual.*``.
    """
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + key[len("model."):]
    return key


def is_lora_key(key: str) -> bool:
    return any(marker in key for marker in _LORA_MARKERS)


@dataclass
class NativeParts:
    """A native state dict split by destination (keys relative to each component)."""

    bridge: dict[str, torch.Tensor] = field(default_factory=dict)
    transformer: dict[str, torch.Tensor] = field(default_factory=dict)
    vlm_lora: dict[str, torch.Tensor] = field(default_factory=dict)
    vlm_base: dict[str, torch.Tensor] = field(default_factory=dict)
    vae: dict[str, torch.Tensor] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)


def split_native(state: dict[str, torch.Tensor]) -> NativeParts:
    parts = NativeParts()
    for raw_key, tensor in state.items():
        key = strip_wrapper_prefixes(raw_key)
        if key.startswith("transformer."):
            parts.transformer[key[len("transformer."):]] = tensor
        elif key.startswith("vae."):
            parts.vae[key[len("vae."):]] = tensor
        elif key.startswith("lmm."):
            vlm_key = normalize_vlm_key(key[len("lmm."):])
            if is_lora_key(vlm_key):
                # Adapters saved under another name load as our "default" adapter.
                vlm_key = re.sub(r"(lora_(?:embedding_)?[AB])\.[^.]+(\.weight)?$",
                                 lambda m: f"{m.group(1)}.default{m.group(2) or ''}", vlm_key)
                parts.vlm_lora[vlm_key] = tensor
            else:
                parts.vlm_base[vlm_key.replace(".base_layer.", ".")] = tensor
        elif _BRIDGE_KEY.fullmatch(key):
            parts.bridge[key] = tensor
        else:
            parts.unexpected.append(raw_key)
    return parts


# --- shapes -> configs ----------------------------------------------------------------------------------------

def bridge_config_from_state_dict(state: dict[str, torch.Tensor], vlm_config: Any, transformer_config: Any,
                                  settings: dict[str, Any]) -> dict[str, Any]:
    """``StackedChannelBridge`` kwargs from tensor shapes, plus ``settings`` for what shapes cannot tell
    (connector ``num_attention_heads``, ``hidden_act``, ``layer_norm_eps``, and ``scb_layers``)."""
    required = ("meta_queries", "projector_1.weight", "projector_2.weight", "projector_3.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"The checkpoint lacks the SCB tensors {missing}; is it a DeepGen checkpoint?")
    text = vlm_config.text_config
    num_queries, hidden = state["meta_queries"].shape
    if hidden != text.hidden_size:
        raise ValueError(f"The think tokens are {hidden} wide but the VLM's hidden size is {text.hidden_size}; "
                         "the checkpoint was trained on another VLM.")
    width, stacked = state["projector_1.weight"].shape
    if stacked % hidden:
        raise ValueError(f"projector_1 takes {stacked} channels, not a multiple of the VLM hidden size {hidden}.")
    scb_layers = list(settings.get("scb_layers") or reference_scb_layers(text.num_hidden_layers))
    if len(scb_layers) != stacked // hidden:
        raise ValueError(f"projector_1 stacks {stacked // hidden} VLM layers but the layer selection {scb_layers} "
                         f"has {len(scb_layers)}; pass scb_layers=[...] with {stacked // hidden} indices.")
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"connector\.layers\.(\d+)\.", k))}
    if not layer_ids:
        raise ValueError("The checkpoint has no connector layers (connector.layers.*).")
    connector = {
        "hidden_size": width,
        "intermediate_size": state["connector.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": max(layer_ids) + 1,
        "num_attention_heads": settings["num_attention_heads"],
        "hidden_act": settings["hidden_act"],
        "layer_norm_eps": settings["layer_norm_eps"],
    }
    pooled = state["projector_2.weight"].shape[0]
    joint = state["projector_3.weight"].shape[0]
    if pooled != transformer_config.pooled_projection_dim or joint != transformer_config.joint_attention_dim:
        raise ValueError(
            f"SCB outputs pooled {pooled} / context {joint} but the DiT expects pooled "
            f"{transformer_config.pooled_projection_dim} / context {transformer_config.joint_attention_dim}: the "
            "checkpoint does not belong to this DiT."
        )
    return {"vlm_hidden_size": hidden, "num_queries": num_queries, "scb_layers": scb_layers,
            "joint_attention_dim": joint, "pooled_projection_dim": pooled, "connector_config": connector}


def native_settings(checkpoint: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """What shapes cannot tell: ``native_config.json`` beside the checkpoint, else the ``deepgen-1.0`` preset,
    then explicit overrides."""
    preset = get_preset("deepgen-1.0")
    settings: dict[str, Any] = {
        "num_attention_heads": preset.connector.num_attention_heads,
        "hidden_act": preset.connector.hidden_act,
        "layer_norm_eps": preset.connector.layer_norm_eps,
        "lora_alpha_ratio": preset.lora.alpha / preset.lora.rank,
        "lora_alpha": None,
        "scb_layers": None,
    }
    sidecar = checkpoint.parent / "native_config.json"
    if sidecar.is_file():
        native = json.loads(sidecar.read_text())
        connector = native.get("connector", {})
        for key in ("num_attention_heads", "hidden_act", "layer_norm_eps"):
            settings[key] = connector.get(key, settings[key])
        settings["lora_alpha"] = native.get("lora", {}).get("alpha")
        settings["scb_layers"] = native.get("scb_layers")
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError(f"Unknown overrides {sorted(unknown)}; accepted: num_attention_heads, hidden_act, "
                         "layer_norm_eps, lora_alpha, scb_layers, scheduler, tokenizer.")
    settings.update(overrides)
    return settings


def _check_load(component: str, result: Any, allow_missing: bool) -> None:
    missing = [] if allow_missing else list(result.missing_keys)
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(f"Checkpoint tensors do not fit the {component}: missing {missing[:20]} "
                         f"({len(missing)} in all), unexpected {unexpected[:20]} ({len(unexpected)} in all).")


def attach_vlm_lora(vlm: torch.nn.Module, lora_state: dict[str, torch.Tensor], alpha: Optional[float],
                    alpha_ratio: float, dropout: float = LoraSettings.dropout) -> None:
    """Inject adapters on exactly the modules the checkpoint adapts, with ranks from the shapes, and load them."""
    ranks: dict[str, int] = {}
    for key, tensor in lora_state.items():
        match = re.match(r"(.+)\.(?:lora_A|lora_embedding_A)\.", key)
        if match:
            ranks[match.group(1)] = tensor.shape[0]
    if not ranks:
        raise ValueError("VLM LoRA tensors were found but no lora_A/lora_embedding_A among them.")
    names = dict(vlm.named_modules())
    absent = sorted(m for m in ranks if m not in names)
    if absent:
        raise ValueError(f"The checkpoint adapts VLM modules that this VLM does not have: {absent[:10]}.")
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {m: r for m, r in ranks.items() if r != rank}
    add_lora(vlm, rank=rank, alpha=alpha if alpha is not None else alpha_ratio * rank, target_modules=sorted(ranks),
             dropout=dropout, rank_pattern={f"^{re.escape(m)}$": r for m, r in pattern.items()} or None)
    result = vlm.load_state_dict(lora_state, strict=False)
    expected = {k for k in vlm.state_dict() if is_lora_key(k)}
    _check_load("VLM LoRA", type(result)([k for k in result.missing_keys if k in expected], result.unexpected_keys),
                allow_missing=False)


# --- what was loaded -----------------------------------------------------------------------------------------

OFFICIAL_VLM = "Qwen/Qwen2.5-VL-3B-Instruct"
OFFICIAL_DIT = "Skywork/UniPic2-SD3.5M-Kontext-2B"
VLM_RELEASE_MERGED = "release VLM, LoRA merged"
VLM_BASE = "base Qwen2.5-VL-3B-Instruct"
COMPONENT_NAMES = ("vlm", "tokenizer", "scb", "transformer", "vae", "scheduler")
# The SCB's folder: ``scb/`` as we save it now; ``connector/`` in the diffusers release and in our folders saved
# before the component was named after the paper.
SCB_FOLDERS = ("scb", "connector")
PROMPT_TEMPLATE_FILE = "prompt_template.json"


@dataclass
class WeightsProvenance:
    """Which weights a pipeline holds, for the log, ``pipe.describe()`` and the app's model banner.

    Attributes:
        source: the folder, hub id or checkpoint that was loaded.
        layout: ``random weights``, ``DeepGen pipeline folder``, ``diffusers-format release`` or
            ``native checkpoint``.
        vlm: the VLM weights in use, e.g. ``release VLM, LoRA merged`` or ``base Qwen2.5-VL-3B-Instruct``.
        notes: anything else a user must know (absent trained weights, overrides).
    """

    source: str
    layout: str
    vlm: str
    notes: list[str] = field(default_factory=list)


@dataclass
class LoadedPipeline:
    """What the loaders return: the pipeline's components by name and where their weights came from."""

    components: dict[str, Any]
    provenance: WeightsProvenance


def describe_vlm_source(vlm: Union[str, Path]) -> str:
    """In words, without a local path (the app shows this): a local folder by its name, a hub id as it is."""
    if str(vlm) == OFFICIAL_VLM:
        return VLM_BASE
    return f"VLM from {Path(vlm).name if Path(vlm).exists() else vlm}"


# --- native checkpoints ---------------------------------------------------------------------------------------

def load_native_checkpoint(checkpoint: Union[str, Path], vlm: Union[str, Path], dit: Union[str, Path],
                           torch_dtype: Optional[torch.dtype] = None, **overrides: Any) -> LoadedPipeline:
    """See :meth:`DeepGenPipeline.from_native_checkpoint`."""
    torch_dtype = torch_dtype or torch.float32
    checkpoint = Path(checkpoint)
    scheduler = overrides.pop("scheduler", None)
    tokenizer = overrides.pop("tokenizer", None)
    settings = native_settings(checkpoint, overrides)
    parts = split_native(read_state_dict(checkpoint))
    if parts.unexpected:
        raise ValueError(f"{len(parts.unexpected)} checkpoint keys belong to no DeepGen component, e.g. "
                         f"{parts.unexpected[:10]}; expected keys under {list(NATIVE_ROOTS)}.")

    vlm_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(vlm, dtype=torch_dtype,
                                                                   attn_implementation="sdpa")
    vlm_weights = describe_vlm_source(vlm)
    if parts.vlm_base:
        _check_load("VLM", vlm_model.load_state_dict(parts.vlm_base, strict=False), allow_missing=True)
        vlm_weights += f" + {len(parts.vlm_base)} VLM tensors from the checkpoint"
    if parts.vlm_lora:
        attach_vlm_lora(vlm_model, parts.vlm_lora, settings["lora_alpha"], settings["lora_alpha_ratio"])
        vlm_weights += f" + the checkpoint's VLM LoRA ({len(lora_layers(vlm_model))} modules)"
    if not parts.vlm_base and not parts.vlm_lora:
        # The authors' RL trainer drops ``lmm.*`` when saving: its model runs on the base VLM.
        logger.info("%s holds no VLM tensors (lmm.*): the VLM is the base %s, with the checkpoint's think tokens, "
                    "SCB and DiT (the authors' RL model is saved this way).", checkpoint.name, vlm)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(vlm)

    transformer = KontextSD3Transformer2DModel.from_pretrained(dit, subfolder="transformer", torch_dtype=torch_dtype)
    if parts.transformer:
        # The checkpoint's DiT is the fine-tuned one: it overrides the base weights it names.
        _check_load("DiT", transformer.load_state_dict(parts.transformer, strict=False), allow_missing=True)
    vae = AutoencoderKL.from_pretrained(dit, subfolder="vae", torch_dtype=torch_dtype)
    if parts.vae:
        _check_load("VAE", vae.load_state_dict(parts.vae, strict=False), allow_missing=True)
    scheduler = scheduler or FlowMatchEulerDiscreteScheduler.from_pretrained(dit, subfolder="scheduler")

    bridge_kwargs = bridge_config_from_state_dict(parts.bridge, vlm_model.config, transformer.config, settings)
    scb = StackedChannelBridge(**bridge_kwargs)
    _check_load("SCB bridge", scb.load_state_dict(parts.bridge, strict=False), allow_missing=False)
    components = {"vlm": vlm_model.eval(), "tokenizer": tokenizer, "scb": scb.to(torch_dtype).eval(),
                  "transformer": transformer.eval(), "vae": vae.eval(), "scheduler": scheduler}
    return LoadedPipeline(components, WeightsProvenance(str(checkpoint), "native checkpoint", vlm_weights))


# --- pipeline folders -----------------------------------------------------------------------------------------

def _resolve_folder(name_or_path: Union[str, Path], hub_kwargs: dict[str, Any]) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; from_pretrained takes a pipeline folder or hub id "
                         "(use from_native_checkpoint for model.pt).")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path), **hub_kwargs))


def _is_our_scb(folder: Path) -> bool:
    config_file = folder / "config.json"
    return config_file.is_file() and \
        json.loads(config_file.read_text()).get("_class_name") == StackedChannelBridge.__name__


def _release_scb_settings(folder: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Connector settings that shapes cannot tell: the ``deepgen-1.0`` preset, then whatever the release's
    ``config.json`` states (top level or under ``connector``/``connector_config``), then explicit overrides."""
    preset = get_preset("deepgen-1.0").connector
    settings = {"num_attention_heads": preset.num_attention_heads, "hidden_act": preset.hidden_act,
                "layer_norm_eps": preset.layer_norm_eps, "scb_layers": None}
    config_file = folder / "config.json"
    if config_file.is_file():
        stated = json.loads(config_file.read_text())
        for section in (stated, stated.get("connector") or {}, stated.get("connector_config") or {}):
            settings.update({k: section[k] for k in settings if isinstance(section, dict) and k in section})
    return {**settings, **overrides}


def _load_release_scb(folder: Path, vlm_config: Any, transformer_config: Any, torch_dtype: torch.dtype,
                      overrides: dict[str, Any]) -> StackedChannelBridge:
    """The diffusers release's ``connector/``: the native names (``meta_queries``, ``projector_{1,2,3}.*``,
    ``connector.layers.*``) with or without a prefix in front, sizes from shapes; anything unmatched fails."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"No .safetensors weights in {folder}.")
    state, unmatched = {}, []
    for file in files:
        for key, tensor in load_file(file).items():
            match = _BRIDGE_KEY.search(key)
            if match:
                state[match.group(1)] = tensor
            else:
                unmatched.append(key)
    if unmatched:
        raise ValueError(f"{len(unmatched)} tensors in {folder} match no SCB parameter name, e.g. {unmatched[:10]}.")
    settings = _release_scb_settings(folder, overrides)
    scb = StackedChannelBridge(**bridge_config_from_state_dict(state, vlm_config, transformer_config, settings))
    _check_load("SCB bridge", scb.load_state_dict(state, strict=False), allow_missing=False)
    return scb.to(torch_dtype)


def _load_folder_vlm(root: Path, release: bool, vlm_model_path: Optional[Union[str, Path]], torch_dtype: torch.dtype,
                     provenance: WeightsProvenance) -> Qwen2_5_VLForConditionalGeneration:
    """The folder's VLM (``vlm/``, plus ``vlm_lora/`` in our folders), or ``vlm_model_path``; a release without
    ``vlm/`` (its first upload) falls back to the base Qwen2.5-VL-3B-Instruct, with a warning."""
    if vlm_model_path is None and (root / "vlm").is_dir():
        path, provenance.vlm = root / "vlm", VLM_RELEASE_MERGED if release else "saved VLM"
    elif vlm_model_path is None:
        path, provenance.vlm = OFFICIAL_VLM, VLM_BASE
        note = (f"The release has no vlm/ (its first upload): the trained VLM weights (its LoRA, merged into vlm/ "
                f"in the next upload) are absent and the base {OFFICIAL_VLM} is used. Download the release again "
                "to get vlm/, or pass vlm_model_path=... to choose the VLM.")
        logger.warning("%s (%s)", note, root)
        provenance.notes.append(note)
    else:
        path, provenance.vlm = vlm_model_path, describe_vlm_source(vlm_model_path)
        if (root / "vlm").is_dir():
            note = f"vlm_model_path replaces the folder's own vlm/ ({describe_vlm_source(vlm_model_path)})."
            logger.warning("%s (%s)", note, root / "vlm")
            provenance.notes.append(note)
    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
    if path == root / "vlm" and (root / "vlm_lora").is_dir():
        load_lora(vlm, root / "vlm_lora")
        provenance.vlm += " + LoRA adapter (vlm_lora/)"
    return vlm


def load_pipeline_folder(name_or_path: Union[str, Path], torch_dtype: Optional[torch.dtype] = None,
                         **kwargs: Any) -> LoadedPipeline:
    """See :meth:`DeepGenPipeline.from_pretrained`."""
    torch_dtype = torch_dtype or torch.float32
    hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    given = {k: kwargs.pop(k) for k in COMPONENT_NAMES if k in kwargs}
    vlm_model_path = kwargs.pop("vlm_model_path", None)
    scb_overrides = {k: kwargs.pop(k) for k in ("num_attention_heads", "hidden_act", "layer_norm_eps", "scb_layers")
                     if k in kwargs}
    if kwargs:
        raise ValueError(f"Unknown from_pretrained arguments {sorted(kwargs)}; accepted: components "
                         f"{list(COMPONENT_NAMES)}, vlm_model_path, hub options (revision, token, cache_dir, "
                         "local_files_only) and connector settings (num_attention_heads, hidden_act, "
                         "layer_norm_eps, scb_layers).")
    if "vlm" in given and vlm_model_path is not None:
        raise ValueError("Pass either vlm=<model> or vlm_model_path=<folder or hub id>, not both.")
    root = _resolve_folder(name_or_path, hub_kwargs)
    if not (root / MODEL_INDEX).is_file():
        raise ValueError(f"{root} has no {MODEL_INDEX}: not a DeepGen pipeline folder. For the authors' model.pt "
                         "use DeepGenPipeline.from_native_checkpoint(checkpoint, vlm=..., dit=...).")
    scb_folder = next((root / name for name in SCB_FOLDERS if (root / name).is_dir()), None)
    release = scb_folder is not None and not _is_our_scb(scb_folder)
    missing = [d for d in ("transformer", "vae", "scheduler") if d not in given and not (root / d).is_dir()]
    if "scb" not in given and scb_folder is None:
        missing.append("scb (or connector)")
    if "vlm" not in given and vlm_model_path is None and not release and not (root / "vlm").is_dir():
        missing.append("vlm")
    if missing:
        raise ValueError(f"{root} lacks the component folders {missing}.")
    if release and (root / PROMPT_TEMPLATE_FILE).is_file():
        check_prompt_template(json.loads((root / PROMPT_TEMPLATE_FILE).read_text()))

    provenance = WeightsProvenance(str(name_or_path), "diffusers-format release" if release else
                                   "DeepGen pipeline folder", vlm="VLM passed to from_pretrained")
    vlm = given.get("vlm") or _load_folder_vlm(root, release, vlm_model_path, torch_dtype, provenance)
    tokenizer_source = next((root / d for d in ("tokenizer", "vlm") if (root / d).is_dir()),
                            vlm_model_path or OFFICIAL_VLM)
    tokenizer = given.get("tokenizer") or AutoTokenizer.from_pretrained(tokenizer_source)
    # Whatever class the config names (the release's names the remote code's): the weights are our Kontext DiT's.
    transformer = given.get("transformer") or KontextSD3Transformer2DModel.from_pretrained(
        root / "transformer", torch_dtype=torch_dtype)
    if "transformer" not in given and (root / "transformer_lora").is_dir():
        load_lora(transformer, root / "transformer_lora")
    vae = given.get("vae") or AutoencoderKL.from_pretrained(root / "vae", torch_dtype=torch_dtype)
    scheduler = given.get("scheduler") or FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler")
    scb = given.get("scb")
    if scb is None:
        scb = _load_release_scb(scb_folder, vlm.config, transformer.config, torch_dtype, scb_overrides) if release \
            else StackedChannelBridge.from_pretrained(scb_folder, torch_dtype=torch_dtype)
    components = {"vlm": vlm.eval(), "tokenizer": tokenizer, "scb": scb.eval(), "transformer": transformer.eval(),
                  "vae": vae.eval(), "scheduler": scheduler}
    return LoadedPipeline(components, provenance)


def _save_base_weights(module: torch.nn.Module, directory: Path, weights_name: str) -> None:
    """Save a module's weights without its LoRA tensors, under the names it has without adapters."""
    state = {k.replace(".base_layer.", "."): v.detach().contiguous().cpu()
             for k, v in module.state_dict().items() if not is_lora_key(k)}
    if getattr(module.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to embed_tokens; safetensors refuses shared storage
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, directory / weights_name, metadata={"format": "pt"})


def save_pipeline_folder(components: dict[str, Any], pipeline_class_name: str,
                         save_directory: Union[str, Path]) -> None:
    """Write the components (named as in :data:`COMPONENT_NAMES`) to ``save_directory`` atomically (a temporary
    folder renamed into place); LoRA adapters go to ``vlm_lora/`` and ``transformer_lora/``."""
    vlm, transformer, scb = components["vlm"], components["transformer"], components["scb"]
    for name, module in (("vlm", vlm), ("transformer", transformer)):
        if is_merged(module):
            raise ValueError(f"The {name}'s LoRA is merged into its weights; call "
                             f"deepgen.lora.unmerge_lora(pipe.{name}) before saving so base weights and adapters "
                             "are stored apart.")
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; the saved folder should be readable like any other
    try:
        vlm.config.save_pretrained(staging / "vlm")
        _save_base_weights(vlm, staging / "vlm", "model.safetensors")
        if has_lora(vlm):
            save_lora(vlm, staging / "vlm_lora")
        components["tokenizer"].save_pretrained(staging / "tokenizer")
        scb.save_pretrained(staging / "scb")
        transformer.save_config(staging / "transformer")
        _save_base_weights(transformer, staging / "transformer", "diffusion_pytorch_model.safetensors")
        if has_lora(transformer):
            save_lora(transformer, staging / "transformer_lora")
        components["vae"].save_pretrained(staging / "vae")
        components["scheduler"].save_pretrained(staging / "scheduler")
        libraries = {"vlm": "transformers", "tokenizer": "transformers", "scb": "deepgen", "transformer": "deepgen",
                     "vae": "diffusers", "scheduler": "diffusers"}
        index = {"_class_name": pipeline_class_name, "_diffusers_version": _diffusers_version(),
                 **{name: [libraries[name], type(components[name]).__name__] for name in COMPONENT_NAMES}}
        (staging / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            target.rename(backup)
            staging.rename(target)
            shutil.rmtree(backup)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
