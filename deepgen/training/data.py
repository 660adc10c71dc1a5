"""Training data for stages 1 and 2: text-to-image pairs and edit triplets through 🤗 ``datasets``.

Sources (:class:`~deepgen.training.config.DataSourceConfig`) are parquet files, imagefolders (images +
``metadata.jsonl``; an edit's source is the ``source_image_file_name`` column), webdataset ``.tar`` shards or hub
datasets (optionally streamed). A row with a source image is an edit triplet (source, instruction, target),
otherwise a text-to-image pair.

Preprocessing (``DataConfig.image_process``): ``"center_crop"`` resizes the short side to ``resolution`` and
crops the centre square; ``"fix_pixels"``, the authors' aspect buckets, keeps the aspect ratio at about
``resolution``² pixels with both sides rounded up to multiples of 32 and batches rows of one size together. An
edit's source takes its target's size; pixels are scaled to [-1, 1]. Bad rows (an image
that is missing or does not decode, an empty caption) are skipped and counted in :attr:`MixedBatchStream.stats`,
never fatal. Captions are dropped (replaced by ``""``) with probability ``caption_dropout`` for CFG
(``edit_caption_dropout`` for edit batches).

:class:`MixedBatchStream` mixes sources by weight and yields batches that are all text-to-image or all edits
(Kontext reference tokens need the same number of references in every row). It is deterministic in
``(seed, rank)`` and its :meth:`~MixedBatchStream.state_dict` records the exact position, so a resumed run sees
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import glob
import io
import logging
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import datasets
import torch
from PIL import Image

from ..image_processing import pil_to_tensor
from .config import DataConfig, DataSourceConfig
from .flow_matching import drop_captions
from .seeding import step_seed

logger = logging.getLogger(__name__)

MAX_LOGGED_BAD_RECORDS = 10  # warn about the first few bad rows per stream, count all of them
AnyDataset = Union[datasets.Dataset, datasets.IterableDataset]


# --- preprocessing ----------------------------------------------------------------------------------------------


class BadRecord(Exception):
    """A row that cannot be used; ``reason`` names the counter it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size`` (bicubic), then crop the central ``size`` x ``size`` square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_to_area(image: Image.Image, size: int, multiple: int = 32) -> Image.Image:
    """The authors' ``fix_pixels`` aspect buckets: keep the aspect ratio at about ``size``² pixels, both sides
    rounded **up** to multiples of ``multiple`` (deepgen ``src/datasets/utils.py:12-22``), bicubic.

    e.g. 1024 x 768 at 512 -> 608 x 448 (591.2 and 443.4 rounded up).
    """
    width, height = image.size
    ratio = size / math.sqrt(width * height)
    new_w, new_h = (math.ceil(side * ratio / multiple) * multiple for side in (width, height))
    return image if (new_w, new_h) == (width, height) else image.resize((new_w, new_h), Image.BICUBIC)


def resize_cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to cover ``width`` x ``height`` (bicubic, aspect kept), then crop the centre to exactly that size:
    an edit's source brought to its target's bucket."""
    scale = max(width / image.width, height / image.height)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def decode_image(value: Any) -> Optional[Image.Image]:
    """An image cell as stored by ``datasets`` (``{"bytes", "path"}`` with decoding off), raw bytes, a path or a
    PIL image -> RGB PIL image; None for an empty cell. Raises ``BadRecord`` if it does not decode."""
    if value is None:
        return None
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            if value.get("bytes") is not None:
                image = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                image = Image.open(value["path"])
            else:
                return None
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, (str, os.PathLike)):
            image = Image.open(value)
        else:
            raise BadRecord("unreadable_image", f"unsupported image cell of type {type(value).__name__}")
        image.load()
        return image.convert("RGB")
    except BadRecord:
        raise
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        raise BadRecord("unreadable_image", str(error)) from error


@dataclass
class Example:
    """One preprocessed row: target ``pixel_values`` (3, H, W) in [-1, 1] (H = W = S for centre crops), its
    prompt, and for an edit the source image resized to the same (3, H, W)."""

    pixel_values: torch.Tensor
    prompt: str
    source_pixel_values: Optional[torch.Tensor] = None

    @property
    def is_edit(self) -> bool:
        return self.source_pixel_values is not None


def preprocess_row(row: dict[str, Any], source: DataSourceConfig, resolution: int,
                   image_process: str = "center_crop") -> Example:
    """Map one dataset row to an :class:`Example` using the source's column mapping; raise ``BadRecord``.

    ``image_process``: "center_crop" (short side to ``resolution``, square centre crop) or "fix_pixels" (the
    authors' aspect buckets, :func:`resize_to_area`); an edit's source is brought to its target's size.
    """
    prompt = row.get(source.prompt_column)
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRecord("empty_prompt", f"column {source.prompt_column!r} is {prompt!r}")
    target = decode_image(row.get(source.image_column))
    if target is None:
        raise BadRecord("missing_image", f"column {source.image_column!r} is empty")
    source_image = None
    if source.source_image_column is not None:
        source_image = decode_image(row.get(source.source_image_column))
    if image_process == "fix_pixels":
        target = resize_to_area(target, resolution)
        source_image = None if source_image is None else resize_cover_crop(source_image, *target.size)
    else:
        target = resize_center_crop(target, resolution)
        source_image = None if source_image is None else resize_center_crop(source_image, resolution)
    pixels = pil_to_tensor(target)  # (3, H, W) in [-1, 1]
    source_pixels = None if source_image is None else pil_to_tensor(source_image)
    return Example(pixels, prompt.strip(), source_pixels)


@dataclass
class Batch:
    """``pixel_values`` (B, 3, S, S) and, for an edit batch, ``source_pixel_values`` (B, 3, S, S), in [-1, 1];
    ``prompts``: B captions/instructions (some "" after caption dropout)."""

    pixel_values: torch.Tensor
    prompts: list[str]
    source_pixel_values: Optional[torch.Tensor] = None

    @property
    def is_edit(self) -> bool:
        return self.source_pixel_values is not None

    def __len__(self) -> int:
        return len(self.prompts)


def collate(examples: Sequence[Example]) -> Batch:
    """Stack examples of one kind (all text-to-image or all edits) into a :class:`Batch`."""
    kinds = {example.is_edit for example in examples}
    if len(kinds) != 1:
        raise ValueError("A batch must be all text-to-image rows or all edit rows (Kontext needs one reference "
                         "per row); MixedBatchStream groups them for you.")
    sources = [example.source_pixel_values for example in examples]
    return Batch(
        pixel_values=torch.stack([example.pixel_values for example in examples]),
        prompts=[example.prompt for example in examples],
        source_pixel_values=torch.stack(sources) if kinds == {True} else None,
    )


# --- loading sources --------------------------------------------------------------------------------------------


def _data_files(path: str, suffix: str) -> list[str]:
    """Expand a file, directory, glob or brace pattern (``shard-{000..009}.tar``) into sorted file paths."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, f"**/*{suffix}"), recursive=True))
    elif "{" in path and ".." in path:
        head, rest = path.split("{", 1)
        span, tail = rest.split("}", 1)
        start, end = span.split("..")
        files = [f"{head}{i:0{len(start)}d}{tail}" for i in range(int(start), int(end) + 1)]
    else:
        files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
    if not files:
        raise ValueError(f"No {suffix} files match {path!r}.")
    return files


def resolve_format(source: DataSourceConfig) -> str:
    """The explicit format, or a guess from the path: .parquet, .tar, a folder of those, an imagefolder, a hub id."""
    if source.format != "auto":
        return source.format
    path = source.path
    if path.endswith(".parquet") or (os.path.isdir(path) and glob.glob(os.path.join(path, "**/*.parquet"),
                                                                        recursive=True)):
        return "parquet"
    if path.endswith(".tar") or "tar}" in path or (os.path.isdir(path) and glob.glob(os.path.join(path, "*.tar"))):
        return "webdataset"
    if os.path.isdir(path):
        return "imagefolder"
    if any(c in path for c in "*?[") or os.path.exists(path):
        raise ValueError(f"Cannot tell the format of data source {path!r}; set its `format` to one of parquet, "
                         "imagefolder, webdataset.")
    return "hub"


def load_source(source: DataSourceConfig, cache_dir: Optional[str] = None) -> AnyDataset:
    """Load one source as a ``datasets`` Dataset (or IterableDataset when streaming), image columns undecoded.

    Images stay encoded (``Image(decode=False)``) so that a corrupt file becomes a counted bad record when the row
    is read instead of an exception inside ``datasets``.
    """
    fmt = resolve_format(source)
    dataset: AnyDataset
    if fmt == "parquet":
        dataset = datasets.load_dataset("parquet", data_files=_data_files(source.path, ".parquet"), split="train",
                                        streaming=source.streaming, cache_dir=cache_dir)
    elif fmt == "webdataset":
        dataset = datasets.load_dataset("webdataset", data_files=_data_files(source.path, ".tar"), split="train",
                                        streaming=source.streaming, cache_dir=cache_dir)
    elif fmt == "imagefolder":
        dataset = datasets.load_dataset("imagefolder", data_dir=source.path, split="train",
                                        streaming=source.streaming, cache_dir=cache_dir)
    else:
        dataset = datasets.load_dataset(source.path, source.name, split=source.split, streaming=source.streaming,
                                        cache_dir=cache_dir)
    columns = dataset.column_names
    if columns is not None:
        for role, column in (("image_column", source.image_column), ("prompt_column", source.prompt_column)):
            if column not in columns:
                raise ValueError(f"Data source {source.path!r} has no column {column!r} ({role}); its columns are "
                                 f"{columns}. Set data.sources.N.{role} to the right one.")
    features = dataset.features or {}
    for column in (source.image_column, source.source_image_column):
        if column is not None and isinstance(features.get(column), datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


# --- readers: deterministic, resumable positions in one source ----------------------------------------------------


class MapReader:
    """Reads a map-style dataset in seeded per-epoch permutations, rank ``r`` of ``W`` taking every W-th index.

    The position is one integer, so resuming is exact and free (nothing is re-read).
    """

    def __init__(self, dataset: datasets.Dataset, seed: int, rank: int, world_size: int):
        self.dataset = dataset
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shard_len = len(dataset) // world_size  # equal shards keep every rank in the same epoch
        if self.shard_len < 1:
            raise ValueError(f"A data source has {len(dataset)} rows, fewer than the {world_size} processes.")
        self.position = 0
        self._epoch, self._order = -1, None

    def next_row(self) -> dict[str, Any]:
        epoch, offset = divmod(self.position, self.shard_len)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order, self._epoch = torch.randperm(len(self.dataset), generator=generator), epoch
        self.position += 1
        return self.dataset[int(self._order[self.rank + self.world_size * offset])]

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


class StreamReader:
    """Reads a streamed (iterable) dataset: split by node, shuffled with a buffer, reshuffled every epoch.

    The position is the number of rows read in the current epoch; resuming re-reads and skips that many rows
    (exact, but it costs the reading time), because a shuffle buffer cannot be saved.
    """

    def __init__(self, dataset: datasets.IterableDataset, seed: int, rank: int, world_size: int, buffer_size: int):
        from datasets.distributed import split_dataset_by_node

        if world_size > 1:
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        self.dataset = dataset.shuffle(seed=seed, buffer_size=buffer_size) if buffer_size > 1 else dataset
        self.epoch, self.position = 0, 0
        self._iterator: Optional[Iterator[dict[str, Any]]] = None

    def _start(self) -> None:
        self.dataset.set_epoch(self.epoch)
        self._iterator = iter(self.dataset)
        for _ in range(self.position):
            next(self._iterator)

    def next_row(self) -> dict[str, Any]:
        if self._iterator is None:
            self._start()
        try:
            row = next(self._iterator)
        except StopIteration:
            if self.position == 0:
                raise ValueError("A streamed data source is empty (on this process).") from None
            self.epoch, self.position = self.epoch + 1, 0
            self._start()
            row = next(self._iterator)
        self.position += 1
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None


# --- mixing and batching ----------------------------------------------------------------------------------------


class MixedBatchStream:
    """An endless, resumable stream of :class:`Batch` es mixed from several sources by weight.

    Each row is drawn from a source chosen with probability proportional to its weight (a draw that depends only
    on ``(seed, rank, row number)``), preprocessed, and placed in a text-to-image or an edit buffer; a buffer
    that holds ``batch_size`` rows becomes the next batch, with caption dropout applied.

    Args:
        datasets_: one loaded dataset per source (see :func:`load_source`).
        sources: their configs (column mapping, weight).
        resolution: square training size S (or the bucket area's side with ``image_process="fix_pixels"``).
        batch_size: rows per batch (per process).
        caption_dropout: probability of replacing a prompt by "" (default 0.1).
        edit_caption_dropout: the same for edit batches (default None: ``caption_dropout``).
        seed: data seed; rank, world_size: this process and the number of processes.
        shuffle_buffer: shuffle buffer of streamed sources.
    """

    def __init__(self, datasets_: Sequence[AnyDataset], sources: Sequence[DataSourceConfig], resolution: int,
                 batch_size: int, caption_dropout: float = 0.1, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, edit_caption_dropout: Optional[float] = None,
                 image_process: str = "center_crop"):
        if len(datasets_) != len(sources) or not sources:
            raise ValueError("Give one dataset per source config, and at least one.")
        self.sources = list(sources)
        self.readers = [
            StreamReader(ds, seed + i, rank, world_size, shuffle_buffer) if isinstance(ds, datasets.IterableDataset)
            else MapReader(ds, seed + i, rank, world_size)
            for i, ds in enumerate(datasets_)
        ]
        self.weights = [source.weight for source in sources]
        self.resolution = resolution
        self.batch_size = batch_size
        self.caption_dropout = caption_dropout
        self.edit_caption_dropout = caption_dropout if edit_caption_dropout is None else edit_caption_dropout
        self.seed, self.rank = seed, rank
        self.rows_drawn = 0
        self.batches_emitted = 0
        self.image_process = image_process
        # Rows waiting for a batch, by kind ("t2i"/"edit") and, for aspect buckets, size ("t2i@608x448").
        self.pending: dict[str, list[Example]] = {"t2i": [], "edit": []}
        self.stats: Counter = Counter()

    def _next_example(self) -> Example:
        """Draw rows until one preprocesses cleanly; count every bad one."""
        while True:
            rng = random.Random(f"deepgen-data/{self.seed}/{self.rank}/{self.rows_drawn}")
            index = rng.choices(range(len(self.readers)), weights=self.weights)[0]
            self.rows_drawn += 1
            row = self.readers[index].next_row()
            self.stats["rows_read"] += 1
            try:
                example = preprocess_row(row, self.sources[index], self.resolution, self.image_process)
            except BadRecord as bad:
                self.stats[f"skipped_{bad.reason}"] += 1
                self.stats["skipped"] += 1
                if self.stats["skipped"] <= MAX_LOGGED_BAD_RECORDS:
                    logger.warning("Skipping a bad row of data source %r (%s).", self.sources[index].path, bad)
                continue
            self.stats["rows_used"] += 1
            return example

    def next_batch(self) -> Batch:
        while True:
            example = self._next_example()
            kind = "edit" if example.is_edit else "t2i"
            height, width = example.pixel_values.shape[-2:]
            bucket = kind if height == width == self.resolution else f"{kind}@{width}x{height}"
            self.pending.setdefault(bucket, []).append(example)
            if len(self.pending[bucket]) == self.batch_size:
                batch = collate(self.pending[bucket])
                self.pending[bucket] = []
                generator = torch.Generator().manual_seed(step_seed(self.seed, self.rank, self.batches_emitted))
                dropout = self.edit_caption_dropout if kind == "edit" else self.caption_dropout
                batch.prompts = drop_captions(batch.prompts, dropout, generator)
                self.batches_emitted += 1
                self.stats[f"batches_{kind}"] += 1
                return batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly here (pending rows are kept as tensors)."""
        return {
            "rows_drawn": self.rows_drawn,
            "batches_emitted": self.batches_emitted,
            "readers": [reader.state_dict() for reader in self.readers],
            "pending": {kind: [vars(e) for e in examples] for kind, examples in self.pending.items()},
            "stats": dict(self.stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["readers"]) != len(self.readers):
            raise ValueError(f"The checkpoint's data state has {len(state['readers'])} sources but the config has "
                             f"{len(self.readers)}; resume with the same data.sources.")
        self.rows_drawn = int(state["rows_drawn"])
        self.batches_emitted = int(state["batches_emitted"])
        for reader, reader_state in zip(self.readers, state["readers"]):
            reader.load_state_dict(reader_state)
        self.pending = {kind: [Example(**e) for e in examples] for kind, examples in state["pending"].items()}
        self.stats = Counter(state["stats"])


def build_stream(config: DataConfig, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> MixedBatchStream:
    """Load every source of ``config`` and mix them into one :class:`MixedBatchStream`."""
    if not config.sources:
        raise ValueError("data.sources is not set; give the datasets to train on, e.g. data.sources=[{format: "
                         "parquet, path: data/train}] (parquet, imagefolder, webdataset shards or a hub dataset).")
    loaded = [load_source(source, config.cache_dir) for source in config.sources]
    return MixedBatchStream(loaded, config.sources, config.resolution, batch_size, config.caption_dropout,
                            seed=seed, rank=rank, world_size=world_size, shuffle_buffer=config.shuffle_buffer,
                            edit_caption_dropout=config.edit_caption_dropout, image_process=config.image_process)

