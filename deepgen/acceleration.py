"""Speed and memory options for :class:`~deepgen.pipeline.DeepGenPipeline`, each a thin call into the library
that already does it: regional ``torch.compile`` (diffusers' ``compile_repeated_blocks``), First Block Cache
(diffusers' cache hooks), torchao quantisation, and diffusers' model / group offloading.

One small function per option; :class:`AccelerationOptions` gathers them, applies them in a safe order
(:func:`accelerate`) and records itself (``to_record``) in the CLI's and the app's record JSON, so an output always
says how it was made. What changes results: ``cache_threshold`` (skips DiT blocks on steps whose first block
barely changed) and ``quantize``; compile and offloading only reorder floating-point work.

Fused QKV projections are not offered: diffusers 0.42.1's ``FusedJointAttnProcessor2_0`` skips the RMS q/k norms
of SD3.5 (and so of DeepGen's DiT), which changes outputs (max latent difference 0.06 on the tiny preset).

    opts = AccelerationOptions.fast()             # compile + First Block Cache
    accelerate(pipe, opts)                        # before the first call; once per pipeline
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

QUANTIZATION_SCHEMES = ("fp8", "int8-weight-only")
OFFLOAD_MODES = ("model", "group")
COMPONENTS = ("transformer", "vlm")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# First Block Cache threshold of --fast: the largest tried on DeepGen-nano whose ShapeEval moved by at most 0.01
# on both held-out draws (-0.006 and +0.007, 20% of DiT calls skipped; 0.1 lost 0.020). docs/acceleration.md.
DEFAULT_CACHE_THRESHOLD = 0.085


@dataclass
class AccelerationOptions:
    """Which speed options to apply to a pipeline (all off by default: plain eager).

    Attributes:
        compile: ``torch.compile`` the DiT's repeated ``JointTransformerBlock`` (regional compilation: the block
            is compiled once and reused by all 24 layers, so start-up takes seconds, not minutes).
        compile_mode: ``torch.compile`` mode; ``"reduce-overhead"`` adds CUDA graphs (static shapes per size),
            ``"max-autotune-no-cudagraphs"`` tunes the matmuls. None = the default mode.
        dynamic: compile with dynamic shapes, so new prompt lengths and sizes do not recompile (the condition
            length varies with the prompt; padding it would change results, since the released model attends to
            pads).
        cache_threshold: First Block Cache threshold (diffusers ``FirstBlockCacheConfig``); None = no caching.
            Steps whose first-block residual moved by less than this (relative mean abs) reuse the cached
            residual of the remaining blocks. Changes results.
        quantize: ``"fp8"`` (dynamic fp8 activations and weights, per row; CUDA compute capability >= 8.9) or
            ``"int8-weight-only"`` (any device); None = keep the dtype. Needs ``torchao``. Changes results.
        quantize_components: which parts to quantize: ``"transformer"`` (the DiT blocks' linears) and/or
            ``"vlm"`` (the Qwen2.5-VL language model's linears; the vision tower and ``lm_head`` stay).
        offload: ``"model"`` (accelerate's whole-model CPU offload: one component on the GPU at a time) or
            ``"group"`` (diffusers' leaf-level group offloading with CUDA streams: lowest memory); None = all on
            the device.
    """

    compile: bool = False
    compile_mode: Optional[str] = None
    dynamic: bool = True
    cache_threshold: Optional[float] = None
    quantize: Optional[str] = None
    quantize_components: tuple[str, ...] = COMPONENTS
    offload: Optional[str] = None

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZATION_SCHEMES:
            raise ValueError(f"`quantize` must be one of {QUANTIZATION_SCHEMES} or None, got {self.quantize!r}.")
        unknown = set(self.quantize_components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"`quantize_components` may hold {COMPONENTS}, got {sorted(unknown)}.")
        if self.offload is not None and self.offload not in OFFLOAD_MODES:
            raise ValueError(f"`offload` must be one of {OFFLOAD_MODES} or None, got {self.offload!r}.")
        if self.cache_threshold is not None and not (isinstance(self.cache_threshold, (int, float))
                                                     and 0 < self.cache_threshold < 1):
            raise ValueError(f"`cache_threshold` must be a number in (0, 1) (relative change of the first block's "
                             f"residual; 0.05-0.3 is usual), got {self.cache_threshold!r}.")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"`compile_mode` must be one of {COMPILE_MODES}, got {self.compile_mode!r}.")
        self.quantize_components = tuple(self.quantize_components)

    @classmethod
    def fast(cls, **overrides: Any) -> "AccelerationOptions":
        """``--fast``: regional compile + First Block Cache at :data:`DEFAULT_CACHE_THRESHOLD`."""
        return cls(**{"compile": True, "cache_threshold": DEFAULT_CACHE_THRESHOLD, **overrides})

    @property
    def changes_results(self) -> bool:
        """True when outputs differ beyond floating-point reordering from eager (caching or quantisation)."""
        return self.cache_threshold is not None or self.quantize is not None

    @property
    def enabled(self) -> bool:
        return self != AccelerationOptions()

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict of every option (for record JSONs and PNG metadata)."""
        record = asdict(self)
        record["quantize_components"] = list(self.quantize_components)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "AccelerationOptions":
        names = {f.name for f in fields(cls)}
        unknown = set(record) - names
        if unknown:
            raise ValueError(f"Unknown acceleration options {sorted(unknown)}; known: {sorted(names)}.")
        return cls(**record)


# --- one function per option ---------------------------------------------------------------------------------


def compile_transformer(pipe: Any, mode: Optional[str] = None, dynamic: bool = True) -> None:
    """Regional ``torch.compile``: compile the DiT's repeated block class in place (diffusers'
    ``compile_repeated_blocks``, driven by ``KontextSD3Transformer2DModel._repeated_blocks``)."""
    pipe.transformer.compile_repeated_blocks(mode=mode, dynamic=dynamic)


class _CachedSpan(nn.Module):
    """The DiT blocks First Block Cache may skip: all but the last.

    SD3's last block is ``context_pre_only`` and returns no context stream, which diffusers' FBC tail hook cannot
    take a residual of (it computes ``None - tensor``); the last block is therefore left out of the cached span
    and always runs (1/24 of the DiT at full size). The hooks live on the blocks themselves, so this holder is
    only needed while they are attached.
    """

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(blocks)


def enable_step_cache(pipe: Any, threshold: float) -> None:
    """First Block Cache (diffusers ``FirstBlockCacheConfig``) on the DiT, at ``threshold``.

    The pipeline runs each DiT call inside ``transformer.cache_context(...)``; CFG's two halves share one batched
    call and so one cache decision.
    """
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache

    transformer = pipe.transformer
    blocks = list(transformer.transformer_blocks)
    if len(blocks) < 3:
        raise ValueError(f"First Block Cache needs a DiT of at least 3 layers (first block, cached blocks, last "
                         f"block), this one has {len(blocks)}.")
    if transformer.is_cache_enabled:
        raise ValueError("Step caching is already enabled on this pipeline's DiT; call "
                         "`pipe.transformer.disable_cache()` first to change it.")
    config = FirstBlockCacheConfig(threshold=threshold)
    apply_first_block_cache(_CachedSpan(blocks[:-1]), config)
    # Record it as diffusers' enable_cache would, so disable_cache() and the pipeline's state reset find it.
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    transformer._cache_config = config


def _linear_filter(skip: tuple[str, ...]) -> Callable[[nn.Module, str], bool]:
    return lambda module, name: isinstance(module, nn.Linear) and not any(part in name for part in skip)


def quantize(pipe: Any, scheme: str, components: tuple[str, ...] = COMPONENTS,
             device: Optional[torch.device] = None) -> None:
    """torchao quantisation of the DiT's transformer blocks and/or the VLM's language model, in place.

    Only the large repeated linears are quantised: the DiT's embedders, ``norm_out``/``proj_out`` and the VLM's
    vision tower, embeddings and ``lm_head`` stay in their dtype (small, and the most precision-sensitive).
    ``device`` is where the model will run (default: where the DiT is; with offloading, the accelerator).
    """
    try:
        from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, PerRow,
                                          quantize_)
    except ImportError as error:
        raise ImportError("Quantisation needs torchao: `pip install torchao==0.18.0` (or a version matching your "
                          "torch), or run without `quantize`.") from error
    if scheme == "fp8":
        device = torch.device(device) if device is not None else pipe.transformer.device
        if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
            where = device.type if device.type != "cuda" else torch.cuda.get_device_name(device)
            raise ValueError(f"fp8 quantisation needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, "
                             f"Blackwell); this pipeline is on {where}. Use quantize='int8-weight-only' instead.")
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    elif scheme == "int8-weight-only":
        config = Int8WeightOnlyConfig()
    else:
        raise ValueError(f"Unknown quantisation scheme {scheme!r}; use one of {QUANTIZATION_SCHEMES}.")
    if "transformer" in components:
        for block in pipe.transformer.transformer_blocks:
            quantize_(block, config, filter_fn=_linear_filter(()))
    if "vlm" in components:
        language_model = pipe.vlm.model.language_model
        quantize_(language_model, config, filter_fn=_linear_filter(("embed_tokens",)))


def enable_offload(pipe: Any, mode: str, device: Optional[torch.device] = None) -> None:
    """Keep weights on the CPU and move them to ``device`` (default: CUDA) when used.

    ``"model"``: accelerate moves one whole component at a time (``enable_model_cpu_offload``).
    ``"group"``: diffusers moves each leaf module just in time, overlapping copies on a CUDA stream
    (``enable_group_offload(offload_type="leaf_level", use_stream=True)``): the least memory, the slowest.
    """
    device = torch.device(device) if device is not None else torch.device("cuda")
    if device.type == "cpu":
        raise ValueError("Offloading moves weights between the CPU and an accelerator; this pipeline runs on the "
                         "CPU already. Pass an accelerator device or run without `offload`.")
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "group":
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                  offload_type="leaf_level", use_stream=device.type == "cuda")
    else:
        raise ValueError(f"Unknown offload mode {mode!r}; use one of {OFFLOAD_MODES}.")


def accelerate(pipe: Any, options: AccelerationOptions, device: Optional[torch.device] = None) -> dict[str, Any]:
    """Apply ``options`` to ``pipe`` in place and return ``options.to_record()``.

    Order matters: quantise the weights first, then set up offloading, attach the cache hooks, and compile last
    (it traces what the hooks left).
    """
    if options.quantize is not None:
        quantize(pipe, options.quantize, options.quantize_components,
                 device=(device or "cuda") if options.offload is not None else None)
    if options.offload is not None:
        enable_offload(pipe, options.offload, device)
    if options.cache_threshold is not None:
        enable_step_cache(pipe, options.cache_threshold)
    if options.compile:
        compile_transformer(pipe, options.compile_mode, options.dynamic)
    return options.to_record()


# --- measuring what the options do ---------------------------------------------------------------------------


@dataclass
class CacheStats:
    """DiT calls of a run and how many of them ran the cached span of blocks (the rest reused the cache)."""

    calls: int = 0
    computed: int = 0

    @property
    def skipped(self) -> int:
        return self.calls - self.computed


@contextmanager
def count_cached_steps(pipe: Any) -> Iterator[CacheStats]:
    """Count DiT calls and full computations inside the block (forward hooks; no sync, no change to outputs).

    A call counts as computed when the second-to-last block's attention ran: First Block Cache returns before
    it on a skipped step.
    """
    stats = CacheStats()
    transformer = pipe.transformer
    probe = transformer.transformer_blocks[-2].attn

    def on_call(*_: Any) -> None:
        stats.calls += 1

    def on_compute(*_: Any) -> None:
        stats.computed += 1

    handles = [transformer.register_forward_pre_hook(on_call), probe.register_forward_pre_hook(on_compute)]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def compile_counters() -> dict[str, int]:
    """Dynamo's counts since the process started (or :func:`torch._dynamo.reset`): graphs compiled and
    recompilations (a recompile is a guard failure on a new shape or value)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]), "recompiles": int(sum(counters["recompiles"].values()))}


# --- ZeroGPU ahead-of-time compilation --------------------------------------------------------------------------


def _block_kinds(transformer: nn.Module) -> dict[tuple[bool, bool], list[nn.Module]]:
    """The DiT's blocks grouped by structure (dual attention?, context pre-only?): blocks of one kind share one
    graph (the same parameter names and shapes), so each kind is exported and compiled once."""
    kinds: dict[tuple[bool, bool], list[nn.Module]] = {}
    for block in transformer.transformer_blocks:
        kinds.setdefault((bool(block.use_dual_attention), bool(block.context_pre_only)), []).append(block)
    return kinds


def compile_ahead_of_time(pipe: Any, capture: Callable[[], Any],
                          inductor_configs: Optional[dict] = None) -> Optional[dict[tuple[bool, bool], Any]]:
    """ZeroGPU ahead-of-time compilation of the DiT's blocks, the way the ``spaces`` package documents it.

    Regional: for each kind of block (:func:`_block_kinds`; three at full size), ``spaces.aoti_capture`` records
    the inputs of one block while ``capture()`` runs the pipeline once, ``torch.export`` exports that block with
    the batch, image-token and text-token dimensions dynamic (so text-to-image, edits and every prompt length and
    size use the same graphs), and ``spaces.aoti_compile`` compiles it. Run it once at Space start-up inside a
    ``@spaces.GPU`` function and return its result; install it with :func:`apply_ahead_of_time` outside that
    function (the GPU function runs in another process, so changes to the modules there do not persist).

    Returns:
        ``{block kind: compiled program}``, or None (with a logged warning) when ``spaces`` is missing or any step
        fails, in which case the Space stays eager.
    """
    try:
        import spaces
        from torch.utils._pytree import tree_map
    except ImportError:
        logger.warning("Ahead-of-time compilation needs the `spaces` package (ZeroGPU); running eager.")
        return None
    batch = torch.export.Dim("batch", min=1, max=256)
    image_tokens = torch.export.Dim("image_tokens", min=2, max=65536)
    text_tokens = torch.export.Dim("text_tokens", min=2, max=8192)
    compiled = {}
    try:
        for kind, blocks in _block_kinds(pipe.transformer).items():
            with spaces.aoti_capture(blocks[0]) as call:
                capture()
            dynamic_shapes = tree_map(lambda _: None, call.kwargs)
            dynamic_shapes.update(hidden_states={0: batch, 1: image_tokens},
                                  encoder_hidden_states={0: batch, 1: text_tokens}, temb={0: batch})
            exported = torch.export.export(blocks[0], args=call.args, kwargs=call.kwargs,
                                           dynamic_shapes=dynamic_shapes)
            compiled[kind] = spaces.aoti_compile(exported, inductor_configs)
    except Exception as error:  # any capture/export/compile failure: the Space must still start, in eager
        logger.warning("Ahead-of-time compilation of the DiT failed (%s: %s); running eager.",
                       type(error).__name__, error)
        return None
    return compiled


def apply_ahead_of_time(pipe: Any, compiled: Optional[dict[tuple[bool, bool], Any]]) -> bool:
    """Install :func:`compile_ahead_of_time`'s programs on every block of their kind (``spaces.aoti_apply``).

    Returns False, leaving the pipeline eager, when ``compiled`` is None or does not cover this DiT's blocks.
    Apply before enabling step caching (its hooks then wrap the compiled blocks).
    """
    kinds = _block_kinds(pipe.transformer)
    if compiled is None:
        return False
    if set(compiled) != set(kinds):
        logger.warning("Ahead-of-time programs cover block kinds %s, this DiT has %s; running eager.",
                       sorted(compiled), sorted(kinds))
        return False
    import spaces

    for kind, blocks in kinds.items():
        for block in blocks:
            spaces.aoti_apply(compiled[kind], block)
    return True
