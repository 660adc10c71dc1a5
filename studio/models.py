"""The model manager: contestants loaded on demand, a few kept loaded, the unavailable ones reported, not fatal.

Also what the page says about the models (the banner, the Compare checkboxes and table).
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import Optional, Sequence

import torch

from deepgen.acceleration import AccelerationOptions, accelerate
from deepgen.builtin import RANDOM_PRESETS, available_builtin_models
from deepgen.contestants import (Contestant, LoadedModel, explain_load_error, hub_cache_path, hub_offline, is_builtin,
                                 load_contestant)

from .records import public_source
from .settings import MIN_CONTESTANTS, StudioInputError

logger = logging.getLogger(__name__)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelManager:
    """Loads contestants on demand and keeps at most ``max_loaded`` of them (the running model is never evicted).

    A contestant that fails to load is remembered as unavailable with a one-line reason; the app keeps serving.
    Model calls are serialised by a lock (the pipelines' schedulers are stateful).
    """

    def __init__(self, contestants: Sequence[Contestant], active_id: str, device: torch.device, max_loaded: int = 2,
                 acceleration: Optional[AccelerationOptions] = None):
        self.contestants = {c.id: c for c in contestants}
        self.acceleration = acceleration or AccelerationOptions()  # applied to every DeepGen model it loads
        if active_id not in self.contestants:
            raise ValueError(f"The running model {active_id!r} is not among the contestants.")
        self.active_id = active_id
        self.device = device
        self.max_loaded = max(1, max_loaded)
        self.lock = threading.RLock()
        self._loaded: dict[str, LoadedModel] = {}  # insertion order = least recently used first
        self._failed: dict[str, str] = {}

    @property
    def active(self) -> Contestant:
        return self.contestants[self.active_id]

    def is_loaded(self, contestant_id: str) -> bool:
        return contestant_id in self._loaded

    def chosen(self, contestant_ids: Sequence[str]) -> list[Contestant]:
        """The known contestants among ``contestant_ids`` (unknown ids are validation's business)."""
        return [self.contestants[c] for c in contestant_ids or [] if c in self.contestants]

    def availability(self, contestant_id: str) -> tuple[bool, str]:
        """(available, reason) without loading anything or touching the network."""
        c = self.contestants[contestant_id]
        if contestant_id in self._loaded:
            return True, "loaded"
        if contestant_id in self._failed:
            return False, self._failed[contestant_id]
        if is_builtin(c.source):
            if c.source in available_builtin_models():
                return True, "built in"
            return False, "not shipped in this install (its checkpoint is not in deepgen/assets/)."
        if Path(c.source).exists():
            return True, "local files"
        cache_file = c.filename or "model_index.json"
        if hub_cache_path(c.source, cache_file, c.revision) is not None:
            return True, "in the local hub cache"
        if hub_offline():
            return False, "not in the local cache, and the hub is offline (HF_HUB_OFFLINE=1)."
        return True, "downloads from the Hugging Face Hub on first use"

    def get(self, contestant_id: str) -> LoadedModel:
        """The loaded model; loads it (evicting the least recently used) if needed.

        Raises:
            StudioInputError: it cannot be loaded; the message says why.
        """
        with self.lock:
            if contestant_id in self._loaded:
                self._loaded[contestant_id] = self._loaded.pop(contestant_id)  # most recently used
                return self._loaded[contestant_id]
            available, reason = self.availability(contestant_id)
            if not available:
                raise StudioInputError(f"{self.contestants[contestant_id].label} is unavailable: {reason}")
            self._make_room()
            contestant = self.contestants[contestant_id]
            logger.info("loading %s (%s) on %s", contestant.id, contestant.source, self.device)
            try:
                model = load_contestant(contestant, self.device)
                if contestant.kind == "deepgen":
                    accelerate(model.pipe, self.acceleration, self.device)
            except Exception as error:  # any failure: mark unavailable, keep serving
                logger.exception("could not load contestant %s", contestant_id)
                free_memory()
                self._failed[contestant_id] = explain_load_error(error)
                raise StudioInputError(f"{contestant.label} is unavailable: {self._failed[contestant_id]}") from error
            self._loaded[contestant_id] = model
            return model

    def _make_room(self) -> None:
        """Unload least recently used contestants (never the running one) until one more fits."""
        while len(self._loaded) >= self.max_loaded:
            victim = next((i for i in self._loaded if i != self.active_id), None)
            if victim is None:
                return
            logger.info("unloading %s to make room", victim)
            del self._loaded[victim]
            free_memory()

    # --- what the page says about the models ----------------------------------------------------------------

    def banner(self) -> str:
        """One Markdown line saying plainly which model runs, on what."""
        c, model = self.active, self.get(self.active_id)
        dtype = str(c.torch_dtype(self.device)).replace("torch.", "")
        text = (f"**Running model:** {c.label} — `{public_source(c.source)}` (revision `{model.revision}`) on "
                f"**{self.device.type}**, {dtype}.")
        if c.source in RANDOM_PRESETS:
            text += (" ⚠️ This is the random-weight test preset: its images are noise. Start the app with "
                     "`--model` or `DEEPGEN_MODEL` to serve a trained DeepGen model.")
        provenance = getattr(model.pipe, "provenance", None)  # DeepGen pipelines say which weights they hold
        if provenance is not None:
            text += f" VLM weights: {provenance.vlm}."
            text += "".join(f" ⚠️ {note}" for note in provenance.notes)
        return text

    def choices(self) -> list[tuple[str, str]]:
        """(label, id) pairs for the Compare checkboxes; unavailable ones are marked."""
        choices = []
        for cid, c in self.contestants.items():
            available, _ = self.availability(cid)
            choices.append((c.label if available else f"{c.label} (unavailable)", cid))
        return choices

    def default_selection(self) -> list[str]:
        """The running model plus the next available contestant, when there is one."""
        chosen = [self.active_id]
        for cid in self.contestants:
            if cid not in chosen and self.availability(cid)[0] and len(chosen) < MIN_CONTESTANTS:
                chosen.append(cid)
        return chosen

    def table(self) -> str:
        """A Markdown table of every contestant: what it is, what it does, whether it can run here."""
        rows = ["| id | model | kind | does | status |", "| --- | --- | --- | --- | --- |"]
        for cid, c in self.contestants.items():
            available, reason = self.availability(cid)
            status = ("✅ " if available else "⛔ unavailable: ") + reason
            note = f" — {c.note}" if c.note else ""
            rows.append(f"| `{cid}` | {c.label}{note} | {c.kind} | {', '.join(c.tasks)} | {status} |")
        return "\n".join(rows)
