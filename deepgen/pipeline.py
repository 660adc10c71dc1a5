"""``DeepGenPipeline``: text-to-image and image editing with DeepGen 1.0, in diffusers' idiom."""

from __future__ import annotations

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
from .image_processing import ImageInput, fit_size, pil_to_tensor, tensor_to_uint8, to_rgb
from .kontext import KontextSD3Transformer2DModel
from .model import DeepGenModel, build_bridge, build_vlm
from .scb import StackedChannelBridge
from .tokenizer import build_tokenizer
from .vlm import DeepGenProcessor, VLMInputs

MAX_INFERENCE_STEPS = 1000
MAX_GUIDANCE_SCALE = 100.0
DEFAULT_SIZE = 512
PromptInput = Union[str, list[str]]
ImagesInput = Union[ImageInput, list[ImageInput], list[list[ImageInput]], None]


@dataclass
class DeepGenPipelineOutput(BaseOutput):
    """``images``: a list of PIL images, a (B, H, W, 3) float array in [0, 1], a (B, 3, H, W) tensor in [0, 1],
    or (B, 16, h, w) latents, depending on ``output_type``."""

    images: Union[list[Image.Image], np.ndarray, torch.Tensor]


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
        connector: :class:`StackedChannelBridge` (think tokens, projectors, connector).
        transformer: :class:`KontextSD3Transformer2DModel`.
        vae: SD3 ``AutoencoderKL``.
        scheduler: ``FlowMatchEulerDiscreteScheduler``.
    """

    model_cpu_offload_seq = "vlm->connector->transformer->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vlm: Qwen2_5_VLForConditionalGeneration, tokenizer: PreTrainedTokenizerBase,
                 connector: StackedChannelBridge, transformer: KontextSD3Transformer2DModel, vae: AutoencoderKL,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(vlm=vlm, tokenizer=tokenizer, connector=connector, transformer=transformer, vae=vae,
                              scheduler=scheduler)
        vision = vlm.config.vision_config
        self.processor = DeepGenProcessor(tokenizer, vision.patch_size, vision.spatial_merge_size,
                                          vision.temporal_patch_size)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

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
            connector = build_bridge(config).to(torch_dtype)
            transformer = KontextSD3Transformer2DModel.from_config(config.transformer).to(torch_dtype)
            vae = AutoencoderKL.from_config(config.vae).to(torch_dtype)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config.scheduler)
        return cls(vlm=vlm.eval(), tokenizer=tokenizer, connector=connector.eval(), transformer=transformer.eval(),
                   vae=vae.eval(), scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, Path], torch_dtype: Optional[torch.dtype] = None,
                        **kwargs: Any) -> "DeepGenPipeline":
        """Load our own saved format or the diffusers-format release (``deepgenteam/DeepGen-1.0-diffusers``).

        Args:
            pretrained_model_name_or_path: a local folder or a hub id.
            torch_dtype: dtype of the weights (default float32; use ``torch.bfloat16`` on GPU).
            kwargs: components to use instead of the saved ones (``scheduler=...``, ``tokenizer=...``); hub
                options (``revision``, ``token``, ``cache_dir``, ``local_files_only``); and, for the diffusers
                release's connector (whose config is not published), what its shapes cannot tell:
                ``num_attention_heads``, ``hidden_act``, ``layer_norm_eps``, ``scb_layers`` (default: the
                ``deepgen-1.0`` preset).
        """
        from .loading import load_pipeline_folder

        return load_pipeline_folder(cls, pretrained_model_name_or_path, torch_dtype=torch_dtype, **kwargs)

    @classmethod
    def from_native_checkpoint(cls, checkpoint: Union[str, Path], vlm: Union[str, Path], dit: Union[str, Path],
                               torch_dtype: Optional[torch.dtype] = None, **config_overrides: Any) -> "DeepGenPipeline":
        """Load the authors' native checkpoint (``model.pt`` / ``.pth`` / ``.safetensors``) on its base models.

        Args:
            checkpoint: the native state dict (``meta_queries``, ``projector_*``, ``connector.*``,
                ``transformer.*`` and optional VLM LoRA tensors ``lmm.*lora*``).
            vlm: folder or hub id of Qwen2.5-VL-3B-Instruct (with its tokenizer).
            dit: folder or hub id holding ``transformer/``, ``vae/`` and ``scheduler/``
                (UniPic2-SD3.5M-Kontext-2B).
            torch_dtype: weights dtype (default float32).
            config_overrides: what tensor shapes cannot tell, overriding ``native_config.json`` beside the
                checkpoint and the ``deepgen-1.0`` preset: ``num_attention_heads``, ``hidden_act``,
                ``layer_norm_eps`` (connector), ``lora_alpha``, ``scb_layers``; or components to use as they are:
                ``scheduler``, ``tokenizer``.
        """
        from .loading import load_native_checkpoint

        return load_native_checkpoint(cls, checkpoint, vlm, dit, torch_dtype=torch_dtype, **config_overrides)

    def save_pretrained(self, save_directory: Union[str, Path], **kwargs: Any) -> None:
        """Save every component (and any LoRA adapters, separately) so :meth:`from_pretrained` restores it."""
        from .loading import save_pipeline_folder

        save_pipeline_folder(self, save_directory)

    @property
    def model(self) -> DeepGenModel:
        """The trainable whole as one module (shares parameters with the pipeline)."""
        return DeepGenModel(self.vlm, self.connector, self.transformer)

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
        of images per prompt. A single reference is resized to the output size; by default the output follows
        the source's aspect ratio with its long side at most 512 (multiples of 32). Several references keep
        their own aspect ratios (long side <= the output's long side).
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
        first = rgb[0][0]
        if height is None and width is None:
            width, height = fit_size(*first.size, max_side=max(32, min(self.default_sample_size, max(first.size))))
        elif height is None or width is None:
            # One side given: keep the source's aspect ratio for the other (multiples of 32).
            source_w, source_h = first.size
            if height is None:
                height = max(32, round(width * source_h / source_w / 32) * 32)
            else:
                width = max(32, round(height * source_w / source_h / 32) * 32)
            if max(height, width) > self.max_side:
                width, height = fit_size(width, height, self.max_side)
        tensors = []
        for refs in rgb:
            if len(refs) == 1:
                sizes = [fit_size(width, height, max(width, height))]
            else:
                sizes = [fit_size(*ref.size, max_side=max(width, height)) for ref in refs]
            tensors.append([pil_to_tensor(ref, size) for ref, size in zip(refs, sizes)])
        for k in range(len(tensors[0])):
            # The k-th references of all prompts are VAE-encoded and fed to the DiT as one batch.
            sizes = sorted({tuple(refs[k].shape[-2:]) for refs in tensors})
            if len(sizes) > 1:
                raise ValueError(f"Reference image {k} has different sizes across prompts after resizing (H, W) "
                                 f"{sizes}; give the prompts' k-th references the same aspect ratio, or run the "
                                 "prompts in separate calls.")
        return tensors, height, width

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
    def encode_images(self, images: list[torch.Tensor], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """VAE-encode (B, 3, H, W) images in [-1, 1] to scaled latents (B, 16, H/8, W/8).

        Like the authors, we take a *sample* of the posterior (mean + std * eps), drawn from ``generator``, then
        apply the SD3 shift and scale.
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
            negative_prompt: default ``""``; uses the same template (and, for edits, the same images).
            height, width: output size, multiples of 16. Default ``default_sample_size`` square (512 for
                DeepGen 1.0); for a single-image edit the output follows the source's aspect ratio (long side at
                most that, multiples of 32).
            num_inference_steps: Euler steps (default 50). guidance_scale: CFG scale s in
                ``v = v_u + s (v_c - v_u)`` (default 4.0; 1.0 skips the unconditional DiT pass).
            num_images_per_prompt: images per prompt.
            generator: draws the initial noise (and, unless ``image_generator`` is given, the VAE posterior sample
                of the references). latents: initial noise (B, 16, H/8, W/8) instead of drawing it.
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
        do_cfg = guidance_scale != 1.0
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
                    velocity = v_uncond + guidance_scale * (v_cond - v_uncond)
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
            sampler = image_generator if image_generator is not None else \
                (generator[0] if isinstance(generator, list) else generator)
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

