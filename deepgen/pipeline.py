"""``DeepGenPipeline``: text-to-image and image editing with DeepGen 1.0, in diffusers' idiom."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import PreTrainedTokenizerBase, Qwen2_5_VLForConditionalGeneration

from .config import DeepGenConfig, get_preset
from .image_processing import ImageInput, fit_size, pil_to_tensor, reference_size, tensor_to_uint8, to_rgb
from .kontext import KontextSD3Transformer2DModel
from .loading import (LoadedPipeline, WeightsProvenance, load_native_checkpoint, load_pipeline_folder,
                      save_pipeline_folder)
from .model import DeepGenModel, build_bridge, build_vlm
from .scb import StackedChannelBridge
from .tokenizer import build_tokenizer
from .vlm import DeepGenProcessor, VLMInputs

logger = logging.getLogger(__name__)

MAX_INFERENCE_STEPS = 1000
MAX_GUIDANCE_SCALE = 100.0
DEFAULT_SIZE = 512
REFERENCE_UNIT = 32  # reference images are sized in multiples of 32 px (28 px ViT patches after the 28/32 resize)
# The negative prompt of the authors' four editing benchmark scripts (ImgEdit, GEdit-Bench, RISEBench,
# UniREditBench: their default ``--cfg_prompt``). The pipeline's default stays "", as in their own inference.
EDIT_NEGATIVE_PROMPT = (
    "blurry, low quality, low resolution, distorted, deformed, broken content, missing parts, damaged details, "
    "artifacts, glitch, noise, pixelated, grainy, compression artifacts, bad composition, wrong proportion, "
    "incomplete editing, unfinished, unedited areas."
)
PromptInput = Union[str, list[str]]
ImagesInput = Union[ImageInput, list[ImageInput], list[list[ImageInput]], None]


@dataclass
class DeepGenPipelineOutput(BaseOutput):
    """``images``: a list of PIL images, a (B, H, W, 3) float array in [0, 1], a (B, 3, H, W) tensor in [0, 1],
    or (B, 16, h, w) latents, depending on ``output_type``."""

    images: Union[list[Image.Image], np.ndarray, torch.Tensor]


def classifier_free_guidance(velocity_cond: torch.Tensor, velocity_uncond: torch.Tensor,
                             guidance_scale: float) -> torch.Tensor:
    """CFG on the velocity: uncond + scale * (cond - uncond) (the authors' formula)."""
    return velocity_uncond + guidance_scale * (velocity_cond - velocity_uncond)


def default_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """bf16 on CUDA (what the model was trained in), fp32 elsewhere (CPU bf16 kernels are slow and less exact)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _onload(module: torch.nn.Module) -> None:
    """Move a model-offloaded module to the execution device before calling its submodules directly
    (accelerate's hook only fires on ``forward``; diffusers' ``apply_forward_hook`` does the same for VAEs)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


class DeepGenPipeline(DiffusionPipeline):
    """DeepGen 1.0: Qwen2.5-VL encoder + think tokens + Stacked Channel Bridging + Kontext SD3.5 DiT.

    Components:
        vlm: ``Qwen2_5_VLForConditionalGeneration`` used as an encoder (one forward per call).
        tokenizer: its Qwen2 tokenizer.
        scb: :class:`StackedChannelBridge`, Stacked Channel Bridging with its think tokens (``meta_queries``),
            projectors and connector encoder (saved in ``scb/``; ``connector/`` in the release).
        transformer: :class:`KontextSD3Transformer2DModel`.
        vae: SD3 ``AutoencoderKL``.
        scheduler: ``FlowMatchEulerDiscreteScheduler``.

    ``provenance`` (:class:`~deepgen.loading.WeightsProvenance`) records which weights were loaded;
    :meth:`describe` says it in words.
    """

    model_cpu_offload_seq = "vlm->scb->transformer->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vlm: Qwen2_5_VLForConditionalGeneration, tokenizer: PreTrainedTokenizerBase,
                 scb: StackedChannelBridge, transformer: KontextSD3Transformer2DModel, vae: AutoencoderKL,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(vlm=vlm, tokenizer=tokenizer, scb=scb, transformer=transformer, vae=vae,
                              scheduler=scheduler)
        vision = vlm.config.vision_config
        # A row may use every VLM position but the think tokens' (the authors do not cut prompts).
        positions = vlm.config.text_config.max_position_embeddings - scb.config.num_queries
        self.processor = DeepGenProcessor(tokenizer, vision.patch_size, vision.spatial_merge_size,
                                          vision.temporal_patch_size, max_sequence_length=positions)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.provenance = WeightsProvenance(source="components given in code", layout="components",
                                            vlm="VLM given in code")

    # --- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Union[str, DeepGenConfig] = "tiny", seed: int = 0,
                    tokenizer: Optional[PreTrainedTokenizerBase] = None, torch_dtype: torch.dtype = torch.float32,
                    device: Union[str, torch.device] = "cpu") -> "DeepGenPipeline":
        """Build a pipeline with random weights from a :class:`DeepGenConfig` or a preset name.

        Weights are created directly on ``device``; ``device="meta"`` builds the full-size model without memory
        (for inspection). The tokenizer defaults to an offline BPE sized to the config (see
        :func:`deepgen.tokenizer.build_tokenizer`); pass Qwen2.5-VL's real tokenizer for the full-size preset
        when you have it.
        """
        if isinstance(config, str):
            config = get_preset(config)
        if tokenizer is None:
            bpe_size = config.tokenizer_vocab_size or config.vlm["bos_token_id"]
            tokenizer = build_tokenizer(vocab_size=bpe_size)
        torch.manual_seed(seed)
        with torch.device(device):
            vlm = build_vlm(config, torch_dtype)
            scb = build_bridge(config).to(torch_dtype)
            transformer = KontextSD3Transformer2DModel.from_config(config.transformer).to(torch_dtype)
            vae = AutoencoderKL.from_config(config.vae).to(torch_dtype)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config.scheduler)
        pipe = cls(vlm=vlm.eval(), tokenizer=tokenizer, scb=scb.eval(), transformer=transformer.eval(),
                   vae=vae.eval(), scheduler=scheduler)
        pipe.provenance = WeightsProvenance(source=f"from_config (seed {seed})", layout="random weights",
                                            vlm="random weights")
        return pipe

    @classmethod
    def _from_loaded(cls, loaded: LoadedPipeline) -> "DeepGenPipeline":
        pipe = cls(**loaded.components)
        pipe.provenance = loaded.provenance
        logger.info("Loaded DeepGen: %s", pipe.describe().replace("\n", "; "))
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, Path], torch_dtype: Optional[torch.dtype] = None,
                        **kwargs: Any) -> "DeepGenPipeline":
        """Load our own saved format or the diffusers-format release (``deepgenteam/DeepGen-1.0-diffusers``).

        Args:
            pretrained_model_name_or_path: a local folder or a hub id.
            torch_dtype: dtype of the weights (default float32; use ``torch.bfloat16`` on GPU).
            kwargs: components to use instead of the saved ones (``scheduler=...``, ``tokenizer=...``,
                ``scb=...``); ``vlm_model_path``: a folder or hub id whose VLM replaces the folder's ``vlm/`` (a
                release without ``vlm/`` takes the base ``Qwen/Qwen2.5-VL-3B-Instruct`` by default, with a warning
                that the trained VLM weights are absent); hub options (``revision``, ``token``, ``cache_dir``,
                ``local_files_only``); and, for the release's ``connector/``, what its shapes cannot tell:
                ``num_attention_heads``, ``hidden_act``, ``layer_norm_eps``, ``scb_layers`` (default: what its
                ``config.json`` states, else the ``deepgen-1.0`` preset).

        The release's ``prompt_template.json`` is checked against the template we implement; the transformer
        loads into :class:`KontextSD3Transformer2DModel` whatever class its config names.
        """
        return cls._from_loaded(load_pipeline_folder(pretrained_model_name_or_path, torch_dtype=torch_dtype, **kwargs))

    @classmethod
    def from_native_checkpoint(cls, checkpoint: Union[str, Path], vlm: Union[str, Path], dit: Union[str, Path],
                               torch_dtype: Optional[torch.dtype] = None, **config_overrides: Any) -> "DeepGenPipeline":
        """Load the authors' native checkpoint (``model.pt`` / ``.pth`` / ``.safetensors``) on its base models.

        Args:
            checkpoint: the native state dict (``meta_queries``, ``projector_*``, ``connector.*``,
                ``transformer.*`` and optional VLM LoRA tensors ``lmm.*lora*``; the RL model
                ``deepgenteam/DeepGen-1.0`` holds none and runs on the base VLM).
            vlm: folder or hub id of Qwen2.5-VL-3B-Instruct (with its tokenizer).
            dit: folder or hub id holding ``transformer/``, ``vae/`` and ``scheduler/``
                (UniPic2-SD3.5M-Kontext-2B).
            torch_dtype: weights dtype (default float32).
            config_overrides: what tensor shapes cannot tell, overriding ``native_config.json`` beside the
                checkpoint and the ``deepgen-1.0`` preset: ``num_attention_heads``, ``hidden_act``,
                ``layer_norm_eps`` (connector), ``lora_alpha``, ``scb_layers``; or components to use as they are:
                ``scheduler``, ``tokenizer``.
        """
        return cls._from_loaded(load_native_checkpoint(checkpoint, vlm, dit, torch_dtype=torch_dtype,
                                                       **config_overrides))

    def save_pretrained(self, save_directory: Union[str, Path], **kwargs: Any) -> None:
        """Save every component (and any LoRA adapters, separately) so :meth:`from_pretrained` restores it."""
        save_pipeline_folder(self.components, type(self).__name__, save_directory)

    def describe(self) -> str:
        """Which weights this pipeline runs, in words (for logs and the app's model banner), e.g.::

            DeepGen from deepgenteam/DeepGen-1.0-diffusers (diffusers-format release)
            VLM: release VLM, LoRA merged
        """
        lines = [f"DeepGen from {self.provenance.source} ({self.provenance.layout})",
                 f"VLM: {self.provenance.vlm}"]
        return "\n".join(lines + [f"Note: {note}" for note in self.provenance.notes])

    @property
    def connector(self) -> StackedChannelBridge:
        """The SCB under its former component name; use :attr:`scb` (kept so that earlier code still runs)."""
        return self.scb

    @property
    def model(self) -> DeepGenModel:
        """The trainable whole as one module (shares parameters with the pipeline)."""
        return DeepGenModel(self.vlm, self.scb, self.transformer)

    # --- inputs -----------------------------------------------------------------------------------------------

    @property
    def default_sample_size(self) -> int:
        """Default output side: the authors' 512, or less for a DiT trained smaller (its ``sample_size``
        latents; DeepGen-nano: 64 px)."""
        native = self.transformer.config.sample_size * self.vae_scale_factor
        return min(DEFAULT_SIZE, native, self.max_side)

    @property
    def max_side(self) -> int:
        """The largest output side in pixels (the DiT's position-embedding grid)."""
        return self.transformer.max_latent_size() * self.vae_scale_factor

    def check_inputs(self, prompt: PromptInput, negative_prompt: Optional[PromptInput], height: Optional[int],
                     width: Optional[int], num_inference_steps: int, guidance_scale: float,
                     num_images_per_prompt: int) -> list[str]:
        """Validate the call's arguments; return the prompts as a list. Raises ``ValueError`` on bad input."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError(f"`prompt` must be a non-empty string or list of strings, got {type(prompt).__name__}.")
        for i, text in enumerate(prompts):
            if not isinstance(text, str):
                raise ValueError(f"`prompt[{i}]` must be a string, got {type(text).__name__}.")
            if not text.strip():
                raise ValueError(f"`prompt[{i}]` is empty; describe the image (or the edit) you want.")
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negatives, (list, tuple)) or not all(isinstance(n, str) for n in negatives):
                raise ValueError("`negative_prompt` must be a string or a list of strings.")
            if not isinstance(negative_prompt, str) and len(negatives) != len(prompts):
                raise ValueError(f"Got {len(prompts)} prompts but {len(negatives)} negative prompts; "
                                 "pass one negative prompt per prompt or a single string.")
        multiple, max_side = 2 * self.vae_scale_factor, self.max_side
        for name, value in (("height", height), ("width", width)):
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"`{name}` must be an integer, got {value!r}.")
            if value % multiple or not multiple <= value <= max_side:
                raise ValueError(f"`{name}` must be a multiple of {multiple} between {multiple} and {max_side}, "
                                 f"got {value}.")
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= MAX_INFERENCE_STEPS:
            raise ValueError(f"`num_inference_steps` must be an integer in [1, {MAX_INFERENCE_STEPS}], "
                             f"got {num_inference_steps!r}.")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) \
                or not 0.0 <= guidance_scale <= MAX_GUIDANCE_SCALE:
            raise ValueError(f"`guidance_scale` must be a finite number in [0, {MAX_GUIDANCE_SCALE}], "
                             f"got {guidance_scale!r}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}.")
        return list(prompts)

    def prepare_images(self, image: ImagesInput, batch_size: int, height: Optional[int],
                       width: Optional[int]) -> tuple[list[list[torch.Tensor]], int, int]:
        """Normalise ``image`` to per-prompt lists of [-1, 1] tensors and choose the output size.

        ``image`` is one image or a list of images (references shared by every prompt), or a list with one list
        of images per prompt. Sizes follow the authors' inference (:func:`~deepgen.image_processing.reference_size`):

        * one reference, no ``height``/``width``: the reference is resized with ``reference_size(...,
          default_sample_size)`` (long side 512 when it is at least 512, else not scaled; sides rounded up to
          multiples of 32) and the output takes its size;
        * one reference with both sides given: the reference is resized to the output size; with one side given,
          the other follows the reference's aspect ratio (multiples of 32);
        * several references: each goes through ``reference_size(..., max(width, height))`` and the output is
          ``width`` x ``height`` (each defaults to ``default_sample_size``).
        """
        if image is None:
            return [[] for _ in range(batch_size)], height or self.default_sample_size, width or self.default_sample_size
        if isinstance(image, (list, tuple)) and image and all(isinstance(i, (list, tuple)) for i in image):
            per_prompt = [list(i) for i in image]
            if len(per_prompt) != batch_size:
                raise ValueError(f"Got {batch_size} prompts but {len(per_prompt)} image lists; pass one list of "
                                 "reference images per prompt, or one list shared by all prompts.")
        else:
            shared = list(image) if isinstance(image, (list, tuple)) else [image]
            per_prompt = [shared] * batch_size
        if any(not refs for refs in per_prompt):
            raise ValueError("Every prompt needs at least one reference image when `image` is given.")
        counts = {len(refs) for refs in per_prompt}
        if len(counts) != 1:
            raise ValueError(f"All prompts of a batch must have the same number of reference images, got {counts}.")
        rgb = [[to_rgb(i) for i in refs] for refs in per_prompt]
        single = counts == {1}
        first = rgb[0][0]
        if single and height is None and width is None:
            width, height = reference_size(*first.size, image_size=self._reference_image_size(None, None))
        elif single and (height is None or width is None):
            # One side given: keep the source's aspect ratio for the other (multiples of 32).
            source_w, source_h = first.size
            if height is None:
                height = max(REFERENCE_UNIT, round(width * source_h / source_w / REFERENCE_UNIT) * REFERENCE_UNIT)
            else:
                width = max(REFERENCE_UNIT, round(height * source_w / source_h / REFERENCE_UNIT) * REFERENCE_UNIT)
            if max(height, width) > self.max_side:
                width, height = fit_size(width, height, self.max_side)
        elif not single:
            height, width = height or self.default_sample_size, width or self.default_sample_size
        tensors = []
        for refs in rgb:
            if single:
                sizes = [(width, height)]
            else:
                image_size = self._reference_image_size(height, width)
                sizes = [reference_size(*ref.size, image_size=image_size) for ref in refs]
            tensors.append([pil_to_tensor(ref, size) for ref, size in zip(refs, sizes)])
        for k in range(len(tensors[0])):
            # The k-th references of all prompts are VAE-encoded and fed to the DiT as one batch.
            sizes = sorted({tuple(refs[k].shape[-2:]) for refs in tensors})
            if len(sizes) > 1:
                raise ValueError(f"Reference image {k} has different sizes across prompts after resizing (H, W) "
                                 f"{sizes}; give the prompts' k-th references the same aspect ratio, or run the "
                                 "prompts in separate calls.")
        return tensors, height, width

    def _reference_image_size(self, height: Optional[int], width: Optional[int]) -> int:
        """The ``image_size`` of the authors' ``resize_image``: ``max(width, height)`` (default 512), kept to a
        multiple of 32 (the ViT grid) and to the DiT's largest side."""
        side = max(height or self.default_sample_size, width or self.default_sample_size)
        side = -(-side // REFERENCE_UNIT) * REFERENCE_UNIT
        return max(REFERENCE_UNIT, min(side, self.max_side // REFERENCE_UNIT * REFERENCE_UNIT))

    # --- conditioning -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], negative_prompts: list[str],
                      images: Optional[list[list[torch.Tensor]]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode positive and negative rows in one VLM forward (they are padded together, as in the reference).

        Returns:
            ``(seq, pooled)`` with rows ``[positive..., negative...]``: (2B, L+Q, joint_dim), (2B, pooled_dim).
        """
        images = images or [[] for _ in prompts]
        inputs: VLMInputs = self.processor(list(prompts) + list(negative_prompts), images + images)
        _onload(self.vlm)
        return self.model.encode_condition(inputs.to(self._execution_device))

    @torch.no_grad()
    def encode_images(self, images: list[torch.Tensor],
                      generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None) -> torch.Tensor:
        """VAE-encode (B, 3, H, W) images in [-1, 1] to scaled latents (B, 16, H/8, W/8).

        Like the authors, we take a *sample* of the posterior (mean + std * eps), drawn from ``generator``, then
        apply the SD3 shift and scale. A list of generators draws each image's sample from its own one.
        """
        pixels = torch.stack(images).to(self._execution_device, self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        eps = randn_tensor(posterior.mean.shape, generator=generator, device=posterior.mean.device,
                           dtype=posterior.mean.dtype)
        sample = posterior.mean + posterior.std * eps
        return (sample - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def prepare_latents(self, batch_size: int, height: int, width: int, dtype: torch.dtype,
                        generator: Optional[Union[torch.Generator, list[torch.Generator]]],
                        latents: Optional[torch.Tensor]) -> torch.Tensor:
        shape = (batch_size, self.transformer.config.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {shape} for this batch and size, got {tuple(latents.shape)}.")
            return latents.to(self._execution_device, torch.float32)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for {batch_size} images; pass one per image.")
        return randn_tensor(shape, generator=generator, device=self._execution_device, dtype=torch.float32)

    def scheduler_mu(self, height: int, width: int) -> Optional[float]:
        """``mu`` for dynamic shifting, from the target latent's token count only (reference tokens not counted)."""
        config = self.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return None
        patch = self.transformer.config.patch_size
        seq_len = (height // self.vae_scale_factor // patch) * (width // self.vae_scale_factor // patch)
        slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
        return config.base_shift + (seq_len - config.base_image_seq_len) * slope

    # --- sampling ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: PromptInput,
        image: ImagesInput = None,
        negative_prompt: Optional[PromptInput] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
        seed: Optional[int] = None,
        latents: Optional[torch.Tensor] = None,
        image_latents: Optional[list[torch.Tensor]] = None,
        image_generator: Optional[torch.Generator] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["DeepGenPipeline", int, torch.Tensor, dict], dict]] = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> Union[DeepGenPipelineOutput, tuple]:
        """Generate (``image`` is None) or edit images.

        Args:
            prompt: the prompt or edit instruction, or a list of them.
            image: reference image(s) for editing: one image, a list shared by all prompts, or one list per prompt.
            negative_prompt: default ``""`` (the authors' default; :data:`EDIT_NEGATIVE_PROMPT` is their editing
                benchmarks' one); uses the same template (and, for edits, the same images).
            height, width: output size, multiples of 16. Default ``default_sample_size`` square (512 for
                DeepGen 1.0); a single-image edit without them takes the size the authors give the reference
                (see :meth:`prepare_images`).
            num_inference_steps: Euler steps (default 50). guidance_scale: CFG scale s in
                ``v = v_u + s (v_c - v_u)`` (default 4.0); at s <= 1 there is no guidance, as in the authors'
                pipeline: one conditional DiT pass per step.
            num_images_per_prompt: images per prompt.
            generator: draws the initial noise (and, unless ``image_generator`` is given, the VAE posterior sample
                of the references). A list holds one generator per image; each prompt's references are then
                sampled with the generator of its first image. seed: instead of ``generator``, as in the release
                card's examples: a generator on the execution device seeded with it (like the authors' scripts).
                latents: initial noise (B, 16, H/8, W/8) instead of drawing it.
            image_latents: the references' scaled VAE latents, one (B, 16, h, w) tensor per reference, instead of
                encoding ``image`` (the VLM still sees ``image``).
            image_generator: draws the VAE posterior sample of the references.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict`` after each step; a
                returned ``"latents"`` replaces the current ones.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"Callbacks can receive {self._callback_tensor_inputs}, not {sorted(unknown)}.")
        generator = self._seeded_generator(seed, generator)
        # 1. Check inputs and choose the output size.
        prompts = self.check_inputs(prompt, negative_prompt, height, width, num_inference_steps, guidance_scale,
                                    num_images_per_prompt)
        negatives = [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, (list, tuple)) \
            else list(negative_prompt)
        references, height, width = self.prepare_images(image, len(prompts), height, width)
        device = self._execution_device
        total = len(prompts) * num_images_per_prompt

        # 2. Encode prompts (+ references) with the VLM and SCB; rows [positive..., negative...].
        seq, pooled = self.encode_prompt(prompts, negatives, references if image is not None else None)
        seq_pos, seq_neg = seq.chunk(2)
        pooled_pos, pooled_neg = pooled.chunk(2)
        repeat = lambda t: t.repeat_interleave(num_images_per_prompt, dim=0)  # noqa: E731
        do_cfg = guidance_scale > 1.0  # the authors' pipeline: no guidance (one conditional pass) at <= 1
        if do_cfg:
            # The DiT batch is [negative..., positive...] (the reverse of the VLM batch), as in the reference.
            context = torch.cat([repeat(seq_neg), repeat(seq_pos)])
            pooled_context = torch.cat([repeat(pooled_neg), repeat(pooled_pos)])
        else:
            context, pooled_context = repeat(seq_pos), repeat(pooled_pos)

        # 3. Prepare the initial noise, then the Kontext reference latents.
        latents = self.prepare_latents(total, height, width, self.transformer.dtype, generator, latents)
        ref_latents = self._reference_latents(references, image, image_latents, image_generator, generator,
                                              num_images_per_prompt, total)
        if do_cfg:
            ref_latents = [torch.cat([ref, ref]) for ref in ref_latents]

        # 4. Timesteps (dynamic shifting uses the target latent size only).
        self.scheduler.set_timesteps(num_inference_steps, device=device, mu=self.scheduler_mu(height, width))
        timesteps = self.scheduler.timesteps

        # 5. Denoise with Euler flow matching and CFG.
        model = self.model
        self.transformer._reset_stateful_cache()  # a cancelled earlier call may have left step-cache state behind
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                latent_input = torch.cat([latents, latents]) if do_cfg else latents
                # Step-cache hooks (deepgen.acceleration) key their state by this name; CFG's halves are one call.
                with self.transformer.cache_context("cfg" if do_cfg else "cond"):
                    velocity = model(latent_input, t.expand(latent_input.shape[0]), context, pooled_context,
                                     ref_latents).float()
                if do_cfg:
                    v_uncond, v_cond = velocity.chunk(2)
                    velocity = classifier_free_guidance(v_cond, v_uncond, guidance_scale)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = (out or {}).get("latents", latents)
                progress.update()

        # 6. Decode.
        if output_type == "latent":
            images = latents
        else:
            images = self.decode_latents(latents)
            if output_type == "pil":
                images = [Image.fromarray(array) for array in tensor_to_uint8(images)]
            else:
                images = ((images.float() + 1) / 2).clamp(0, 1)
                images = images.permute(0, 2, 3, 1).cpu().numpy() if output_type == "np" else images.cpu()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DeepGenPipelineOutput(images=images)

    def _seeded_generator(self, seed: Optional[int], generator: Any) -> Any:
        if seed is None:
            return generator
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
        if generator is not None:
            raise ValueError("Pass either `seed` or `generator`, not both.")
        return torch.Generator(self._execution_device).manual_seed(seed)

    def _reference_latents(self, references: list[list[torch.Tensor]], image: ImagesInput,
                           image_latents: Optional[list[torch.Tensor]], image_generator: Optional[torch.Generator],
                           generator: Any, num_images_per_prompt: int, total: int) -> list[torch.Tensor]:
        if image is None:
            if image_latents is not None:
                raise ValueError("`image_latents` was given without `image`; the VLM needs the images too.")
            return []
        num_refs = len(references[0])
        if image_latents is not None:
            if len(image_latents) != num_refs:
                raise ValueError(f"Got {len(image_latents)} image latents for {num_refs} reference images.")
            encoded = [lat.to(self._execution_device) for lat in image_latents]
        else:
            # With one generator per image, each prompt's posterior sample comes from its first image's generator,
            # so an edit's output does not depend on which other prompts share the batch.
            sampler = image_generator if image_generator is not None else \
                (generator[::num_images_per_prompt] if isinstance(generator, list) else generator)
            encoded = [self.encode_images([refs[k] for refs in references], sampler) for k in range(num_refs)]
        refs = [lat.repeat_interleave(num_images_per_prompt, dim=0) if lat.shape[0] * num_images_per_prompt == total
                else lat for lat in encoded]
        for lat in refs:
            if lat.shape[0] != total:
                raise ValueError(f"Reference latents have batch {lat.shape[0]}, expected {total // num_images_per_prompt}.")
        return refs

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (B, 3, H, W) in ~[-1, 1]: ``vae.decode(z / scale + shift)``."""
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]

