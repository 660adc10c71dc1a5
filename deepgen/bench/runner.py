"""Running a benchmark: per-item seeds, exact sharding over processes, resume, and the run record.

- **Seeds.** Image ``k`` of item ``i`` starts from noise drawn by its own CPU generator seeded with
  :func:`sample_seed` ``(seed, benchmark, item id, k)``, so the images do not depend on batch size, process count
  or order (the authors' scripts draw all noise from one generator per process).
- **Sharding.** After every process has listed the unfinished items (before anyone writes), they are split into
  contiguous, disjoint shards (:func:`shard`, as accelerate's ``split_between_processes`` without padding): no item
  is generated twice and the last round is not topped up. Each process writes only its own items' files.
- **Resume.** An item is finished when all its files exist; files are written to a temp file then renamed, so a
  killed job loses at most the batch in flight. A rerun with other generation settings into the same folder is
  refused (it would mix two runs); a rerun with nothing left to do writes nothing.
- **Record.** ``record.json`` (for DPG-Bench ``<out>.record.json``) holds the model id and revision, the settings,
  library versions, device, the item index (for browsing), and per session timings and counts.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Sequence, TypeVar

import torch
from PIL.PngImagePlugin import PngInfo

from ..environment import PACKAGES as DEFAULT_PACKAGES
from ..environment import environment_record
from ..image_processing import to_rgb
from .base import Benchmark, Item, RecordError, remove_partial_files, save_text

logger = logging.getLogger(__name__)
T = TypeVar("T")
RECORD_VERSION = 1
PACKAGES = (*DEFAULT_PACKAGES, "datasets", "pillow")


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides the images (a resumed run must use the same)."""

    height: int
    width: int
    steps: int
    guidance: float
    negative_prompt: str
    images_per_prompt: int
    seed: int


def sample_seed(seed: int, benchmark: str, item_id: str, k: int) -> int:
    """The noise seed of image ``k`` of item ``item_id``: a 63-bit hash of (seed, benchmark, item id, k) only."""
    digest = hashlib.sha256(f"{seed}\0{benchmark}\0{item_id}\0{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Process ``index``'s contiguous share of ``items`` among ``count``: sizes differ by at most one, the
    first ``len(items) % count`` shares one larger; nothing is repeated or padded."""
    if not 0 <= index < count:
        raise ValueError(f"process index {index} out of range for {count} processes.")
    base, extra = divmod(len(items), count)
    start = index * base + min(index, extra)
    return list(items[start:start + base + (index < extra)])


def plan_batches(items: Sequence[Item], key: Callable[[Item], Hashable], batch_size: int) -> list[list[Item]]:
    """Batches of at most ``batch_size`` items with equal ``key`` (groups in order of first appearance)."""
    groups: dict[Hashable, list[Item]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def read_items(benchmark: Benchmark, data: Path, skip_bad: bool) -> tuple[list[Item], list[str]]:
    """All items of ``data`` (ids unique) and the errors of the records skipped (``skip_bad``), or the first
    bad record's :class:`RecordError` (file and line) before anything is generated."""
    items, skipped, seen = [], [], {}
    for entry in benchmark.read(data):
        if isinstance(entry, RecordError):
            if not skip_bad:
                raise ValueError(f"{entry} -- stopping before anything is generated (pass --skip-bad-records to "
                                 "skip malformed records and run the others)") from entry
            skipped.append(str(entry))
            logger.warning("skipping a malformed record: %s", entry)
            continue
        if entry.id in seen:
            raise ValueError(f"{entry.where}: id {entry.id!r} repeats the record at {seen[entry.id]}; ids must be "
                             "unique (they name the output files and seed the noise)")
        seen[entry.id] = entry.where
        items.append(entry)
    return items, skipped


def environment(device: torch.device, num_processes: int) -> dict:
    return dict(environment_record(device, PACKAGES), num_processes=num_processes)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check_resume(previous: Optional[dict], benchmark: str, model: dict, settings: GenerationSettings,
                  out: Path, record_path: Path) -> None:
    if previous is None:
        if out.is_dir() and any(p for p in out.iterdir() if p != record_path):
            raise ValueError(f"{out} is not empty and has no run record ({record_path.name}); use an empty or new "
                             "--out folder, so files of another run are not taken for finished items.")
        return
    wanted = {"benchmark": benchmark, "model": {k: model.get(k) for k in ("id", "source", "revision")},
              "settings": asdict(settings)}
    found = {"benchmark": previous.get("benchmark"),
             "model": {k: previous.get("model", {}).get(k) for k in ("id", "source", "revision")},
             "settings": previous.get("settings")}
    if wanted != found:
        flat = lambda record: {f"{group}.{k}" if isinstance(v, dict) else group: value  # noqa: E731
                               for group, v in record.items()
                               for k, value in (v.items() if isinstance(v, dict) else [(None, v)])}
        there, now = flat(found), flat(wanted)
        differences = [f"{key} {there.get(key)!r} there, {now[key]!r} now" for key in now if now[key] != there.get(key)]
        raise ValueError(f"{out} holds a run with other settings ({'; '.join(differences)}). Resume with the same "
                         "model and settings, or pass a new --out.")


def _pnginfo(benchmark: str, item: Item, model: dict, settings: GenerationSettings) -> PngInfo:
    info = PngInfo()
    info.add_text("deepgen", json.dumps({"benchmark": benchmark, "item": item.id, "prompt": item.prompt,
                                         "model": model.get("id"), "revision": model.get("revision"),
                                         **asdict(settings)}, sort_keys=True, ensure_ascii=False))
    return info


def run_benchmark(benchmark: Benchmark, data: Path, out: Path, model: Any, settings: GenerationSettings,
                  batch_size: int, limit: Optional[int] = None, skip_bad: bool = False,
                  state: Any = None, progress: bool = True) -> dict:
    """Generate ``benchmark`` on ``data`` into ``out`` with ``model`` (a :class:`deepgen.bench.models.BenchModel`).

    Args:
        limit: run only the first ``limit`` items (in the benchmark's order).
        skip_bad: skip malformed records (each reported with file and line) instead of stopping.
        state: an ``accelerate.PartialState`` (default: a new one; one process unless launched by accelerate).
        progress: show a tqdm bar per process.

    Returns:
        The run record (on every process; only the main process writes it).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = state or PartialState()
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}.")
    benchmark.check_images_per_prompt(settings.images_per_prompt)
    started, clock = _now(), time.perf_counter()
    items, skipped = read_items(benchmark, data, skip_bad)
    items = items[:limit] if limit is not None else items
    for item in items:
        item.outputs = benchmark.outputs(item.id, item.record, settings.images_per_prompt)
    record_path = benchmark.record_path(out)
    previous = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
    description = model.describe()
    _check_resume(previous, benchmark.name, description, settings, out, record_path)
    if state.is_main_process:
        remove_partial_files(out)
    pending = [item for item in items if not all((out / p).is_file() for p in item.outputs)]
    state.wait_for_everyone()  # everyone has listed the pending items before anyone writes

    mine = shard(pending, state.process_index, state.num_processes)
    record = previous or {"version": RECORD_VERSION, "benchmark": benchmark.name, "title": benchmark.title,
                          "model": description, "settings": asdict(settings), "sessions": []}
    record.update(data=str(Path(str(data)).resolve()) if Path(str(data)).exists() else str(data),
                  out=str(out.resolve()), environment=environment(state.device, state.num_processes),
                  items=[{"id": item.id, "prompt": item.prompt, "outputs": list(item.outputs),
                          "source": benchmark.source_file(item)} for item in items])
    if state.is_main_process and pending:
        out.mkdir(parents=True, exist_ok=True)
        record["status"] = "running"
        save_text(json.dumps(record, indent=2, ensure_ascii=False), record_path)

    def key(item: Item) -> Hashable:
        return model.batch_key(item.prompt, settings.negative_prompt, item.source is not None, item.id)

    generated, generating_s = 0, 0.0
    bar = tqdm(total=len(mine), desc=f"{benchmark.name} [{state.process_index}/{state.num_processes}]",
               position=state.process_index, disable=not progress or not mine, unit="item")
    for batch in plan_batches(mine, key, batch_size):
        tick = time.perf_counter()
        generators = [torch.Generator("cpu").manual_seed(sample_seed(settings.seed, benchmark.name, item.id, k))
                      for item in batch for k in range(settings.images_per_prompt)]
        sources = [to_rgb(item.source()) for item in batch] if batch[0].source is not None else None
        images = model.generate([item.prompt for item in batch], [settings.negative_prompt] * len(batch), sources,
                                settings.height, settings.width, settings.steps, settings.guidance,
                                settings.images_per_prompt, generators)
        n = settings.images_per_prompt
        for b, item in enumerate(batch):
            benchmark.write(item, images[b * n:(b + 1) * n], out, _pnginfo(benchmark.name, item, description,
                                                                           settings))
        generated += len(batch)
        generating_s += time.perf_counter() - tick
        bar.update(len(batch))
    bar.close()

    state.wait_for_everyone()
    stats = gather_object([{"process": state.process_index, "items": generated, "seconds": round(generating_s, 3)}])
    finished = sum(all((out / p).is_file() for p in item.outputs) for item in items)
    session = {"started": started, "finished": _now(), "seconds": round(time.perf_counter() - clock, 3),
               "num_processes": state.num_processes, "batch_size": batch_size, "limit": limit,
               "generated_items": sum(s["items"] for s in stats), "skipped_finished": len(items) - len(pending),
               "processes": stats}
    record.update(status="complete" if finished == len(items) else "incomplete",
                  counts={"items": len(items), "finished": finished,
                          "images": finished * settings.images_per_prompt, "skipped_bad_records": len(skipped)},
                  skipped_bad_records=skipped)
    if pending:
        record["sessions"] = record.get("sessions", []) + [session]
    if state.is_main_process and (pending or (previous or {}).get("status") != "complete"):
        summary = benchmark.finish(out, items)
        if summary:
            record["scores"] = "scores.json"
            print(summary)
        save_text(json.dumps(record, indent=2, ensure_ascii=False), record_path)
    if state.is_main_process:
        verb = f"generated {session['generated_items']} items" if pending else "nothing to do: every item is done"
        print(f"{benchmark.title}: {verb}; {finished}/{len(items)} finished in {out}", file=sys.stderr)
        print(f"Score with:\n  {benchmark.scorer_command(out, data)}")
    return record
