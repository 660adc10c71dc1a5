"""The Studio: the running model, its contestants and the five tasks, all one matrix of runs.

generate, edit, compare, seed sweep and prompt-list batch each turn a :class:`~studio.settings.Settings` into jobs
(a contestant on a prompt with its seeds) and run them with :meth:`Studio.run`. Each returns lossless PNGs with
their settings embedded, a JSON record (model ids and revisions, settings, seeds, versions, device, timings) and a
zip of both. Every request is validated by :meth:`Studio.problems` before any model work.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from PIL import Image

from deepgen.acceleration import AccelerationOptions
from deepgen.builtin import OFFICIAL_DIT, OFFICIAL_VLM, default_model_name
from deepgen.contestants import Contestant, LoadedModel, load_registry
from deepgen.image_processing import save_png
from deepgen.memory import PeakMemory

from . import DEFAULT_REGISTRY
from .inputs import contestant_problems, load_references, parse_prompt_file, reference_problems, upload_paths
from .models import ModelManager, free_memory
from .records import (OUTPUT_TTL_S, ProgressFn, Run, StepCounter, TaskResult, environment_record, new_task_folder,
                      public_source)
from .settings import MATRIX_TASKS, MAX_MATRIX_RUNS, MAX_SIDE, Settings, StudioInputError, raise_for_problems
from .zerogpu import MAX_GPU_SECONDS, MIN_GPU_SECONDS, clamp_gpu_seconds, work_seconds

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One cell group of a task matrix: a contestant, a prompt and its seeds."""

    contestant_id: str
    prompt: str
    negative_prompt: str
    seeds: list[int]
    steps: int
    guidance: float


class Studio:
    """The app's state and tasks: a :class:`ModelManager`, an output folder and the five tasks.

    Every task validates its inputs first (raising :class:`StudioInputError`), then runs, writing lossless PNGs
    with the settings embedded, a ``record.json`` and a zip of both into a fresh folder named by a random id
    (user text never becomes a path).
    """

    def __init__(self, manager: ModelManager, output_root: Optional[Path] = None, output_ttl_s: float = OUTPUT_TTL_S):
        self.manager = manager
        # The running model is never evicted; its size limit is read once so validators never wait on the lock.
        active = manager.get(manager.active_id)
        self.max_side, self.default_side = active.max_side, active.default_side
        # One private folder per process (deleted by close()); Gradio copies what it serves into its own cache.
        self.output_root = Path(output_root) if output_root else Path(tempfile.mkdtemp(prefix="deepgen-studio-"))
        self.output_ttl_s = output_ttl_s

    @classmethod
    def create(cls, model: Optional[str] = None, registry: Optional[Union[str, Path]] = None,
               vlm: str = OFFICIAL_VLM, dit: str = OFFICIAL_DIT, device: Optional[str] = None,
               max_loaded: Optional[int] = None, output_root: Optional[Path] = None,
               acceleration: Optional[AccelerationOptions] = None) -> "Studio":
        """Read the registry, choose the running model and load it (and any ``preload`` contestants).

        Args:
            model: a contestant id, a built-in name, a folder, a native checkpoint or a hub id; default
                ``DEEPGEN_MODEL`` from the environment, else the best built-in model.
            registry: the contestants file (default ``contestants.yaml`` beside ``app.py``).
            vlm, dit: base models when ``model`` is a native checkpoint.
            device: ``cuda`` or ``cpu`` (default: cuda when available).
            max_loaded: how many contestants stay loaded (default ``DEEPGEN_STUDIO_MAX_LOADED`` or 2).
            output_root: where task folders go (default: a new temporary folder, deleted by :meth:`close`).
            acceleration: speed options for every DeepGen model (default none: plain eager, exact images).
        """
        contestants = load_registry(registry or DEFAULT_REGISTRY)
        model = model or os.environ.get("DEEPGEN_MODEL") or default_model_name()
        match = next((c for c in contestants if model in (c.id, c.source) and not c.filename), None)
        if match is None:
            label = Path(model).name if Path(model).exists() else model
            match = Contestant(id="running", label=f"{label} (running)", kind="deepgen", source=model, vlm=vlm,
                               dit=dit)
            contestants.insert(0, match)
        device_ = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        max_loaded = max_loaded or int(os.environ.get("DEEPGEN_STUDIO_MAX_LOADED", "2"))
        manager = ModelManager(contestants, match.id, device_, max_loaded=max_loaded, acceleration=acceleration)
        try:
            manager.get(match.id)  # loaded at start-up; a failure here is fatal, with the reason
        except StudioInputError as error:
            raise ValueError(f"Cannot start with model {model!r}: {error}") from error
        for contestant in contestants:
            if contestant.preload and contestant.id != match.id:
                try:
                    manager.get(contestant.id)
                except StudioInputError as error:
                    logger.warning("preload skipped: %s", error)
        return cls(manager, output_root=output_root)

    # --- what the page shows --------------------------------------------------------------------------------

    @property
    def active(self) -> Contestant:
        return self.manager.active

    def model_banner(self) -> str:
        return self.manager.banner()

    def contestant_choices(self) -> list[tuple[str, str]]:
        return self.manager.choices()

    def default_contestants(self) -> list[str]:
        return self.manager.default_selection()

    def contestants_table(self) -> str:
        return self.manager.table()

    # --- validation (cheap; the page's validators call it before queueing) -----------------------------------

    def problems(self, settings: Settings) -> dict[str, str]:
        """Everything wrong with a request, keyed by API input name (empty when it may run)."""
        problems: dict[str, str] = {}
        runs = 1
        if settings.task == "prompt_batch":
            try:
                runs = len(parse_prompt_file(settings.prompt_file))
            except StudioInputError as error:
                problems["prompt_file"] = str(error)
        # Matrix tasks check sizes against the app-wide limit; each contestant's own limit is checked when it runs.
        problems.update(settings.problems(MAX_SIDE if settings.task in MATRIX_TASKS else self.max_side))
        if settings.task == "seed_sweep" and "num_seeds" not in problems:
            runs = int(settings.count)
        if settings.task in MATRIX_TASKS:
            selection = contestant_problems(settings.contestants, self.manager.contestants)
            if selection:
                problems["contestants"] = selection
            elif len(settings.contestants) * runs > MAX_MATRIX_RUNS:
                problems["contestants"] = (f"{len(settings.contestants)} contestants x {runs} runs is more than "
                                           f"{MAX_MATRIX_RUNS} images per request.")
        if settings.task != "prompt_batch":
            image_problem = reference_problems(settings.images, required=settings.task == "edit")
            if image_problem:
                problems["images"] = image_problem
        if not problems:
            problem = self._work_problem(settings.resolved())
            if problem:
                problems["contestants" if settings.task in MATRIX_TASKS else settings.input_name("count")] = problem
        return problems

    def _work_problem(self, settings: Settings) -> Optional[str]:
        """Why one request is too much work for one turn on the shared GPU queue, or None."""
        jobs = self.jobs(settings)
        seconds = self._work_seconds(settings, jobs, loads=False)
        if seconds <= MAX_GPU_SECONDS:
            return None
        images, steps = sum(len(job.seeds) for job in jobs), max(job.steps for job in jobs)
        size = "the source's size" if settings.width is None else f"{settings.width}x{settings.height}"
        return (f"This request is too much work for one turn: {images} images of up to {steps} steps at {size} "
                f"need about {seconds:.0f} s of GPU; the limit is {MAX_GPU_SECONDS} s a request. Use fewer seeds, "
                f"prompts or contestants, fewer steps, or a smaller size.")

    def _work_seconds(self, settings: Settings, jobs: list[Job], loads: bool) -> float:
        c = self.manager.contestants
        work = [(c[job.contestant_id], job.steps, len(job.seeds)) for job in jobs]
        references = len(upload_paths(settings.images)) if settings.task != "prompt_batch" else 0
        return work_seconds(work, settings.width, settings.height, references,
                            self.manager.is_loaded if loads else None)

    def gpu_seconds(self, settings: Settings) -> int:
        """Seconds of GPU to ask ZeroGPU for: every job's denoising plus each model load, as :meth:`run` will do
        them (a request that is not valid yet asks for the minimum; it is refused before it runs)."""
        if self.problems(settings):
            return MIN_GPU_SECONDS
        settings = settings.resolved()
        return clamp_gpu_seconds(self._work_seconds(settings, self.jobs(settings), loads=True))

    def jobs(self, settings: Settings) -> list[Job]:
        """The jobs of resolved, valid settings, in table order (prompt lists: prompt by prompt, each on every
        contestant). :meth:`run` runs them grouped by contestant, the loaded ones first, so each model loads once."""
        if settings.task in ("generate", "edit"):
            return [self._job(self.manager.active_id, settings.prompt, settings.negative_prompt, settings.seeds,
                              settings)]
        if settings.task == "prompt_batch":
            return [self._job(cid, item.prompt,
                              settings.negative_prompt if item.negative_prompt is None else item.negative_prompt,
                              [settings.seed if item.seed is None else item.seed], settings)
                    for item in parse_prompt_file(settings.prompt_file) for cid in settings.contestants]
        seeds = settings.seeds if settings.task == "seed_sweep" else [settings.seed]
        return [self._job(cid, settings.prompt, settings.negative_prompt, seeds, settings)
                for cid in settings.contestants]

    def execution_order(self, jobs: list[Job]) -> list[int]:
        """Job indices grouped by contestant, the contestants already loaded first: no model is loaded twice in a
        request, and no loaded one is evicted before its turn."""
        first = {}
        for index, job in enumerate(jobs):
            first.setdefault(job.contestant_id, index)
        return sorted(range(len(jobs)), key=lambda i: (not self.manager.is_loaded(jobs[i].contestant_id),
                                                       first[jobs[i].contestant_id], i))

    # --- tasks ----------------------------------------------------------------------------------------------

    def run(self, settings: Settings, progress: Optional[ProgressFn] = None) -> TaskResult:
        """Validate ``settings`` (raising :class:`StudioInputError` with every problem), then run its task."""
        raise_for_problems(self.problems(settings))
        settings = settings.resolved()
        references = load_references(settings.images) if settings.task != "prompt_batch" else []
        jobs = self.jobs(settings)
        if settings.task in ("generate", "edit"):
            return self._run_matrix(settings.task, jobs, references, settings, progress, raise_errors=True)
        result = self._run_matrix(settings.task, jobs, references, settings, progress)
        if settings.task == "prompt_batch":  # one row per prompt
            columns = len(settings.contestants)
            rows = [result.runs[r:r + columns] for r in range(0, len(result.runs), columns)]
            cells = [[run.files[0] if run.files else None for run in row] for row in rows]
            row_labels = [row[0].prompt for row in rows]
        else:  # compare: one row; seed sweep: one row per seed
            seeds = result.runs[0].seeds
            cells = [[run.files[k] if k < len(run.files) else None for run in result.runs]
                     for k in range(len(seeds))]
            row_labels = [""] if settings.task == "compare" else [f"seed {s}" for s in seeds]
        result.write_grid(cells, row_labels, [run.label for run in result.runs[:len(settings.contestants)]])
        return result

    def generate(self, prompt: str, negative_prompt: str = "", *, progress: Optional[ProgressFn] = None,
                 **settings: Any) -> TaskResult:
        """Text to image with the running model: ``num_images`` images with seeds ``seed, seed+1, …``
        (``seed=None`` draws one). ``settings``: ``width``, ``height``, ``steps``, ``guidance``, ``seed``,
        ``num_images`` (defaults: :class:`Settings`)."""
        return self.run(Settings.from_inputs("generate", prompt=prompt, negative_prompt=negative_prompt, **settings),
                        progress)

    def edit(self, images: Any, instruction: str, negative_prompt: str = "", follow_source: bool = True, *,
             progress: Optional[ProgressFn] = None, **settings: Any) -> TaskResult:
        """Edit one or more uploaded reference images with the running model; by default the output follows
        the (first) source's aspect ratio. ``settings`` as for :meth:`generate`."""
        return self.run(Settings.from_inputs("edit", images=images, instruction=instruction,
                                             negative_prompt=negative_prompt, follow_source=follow_source,
                                             **settings), progress)

    def compare(self, contestants: Sequence[str], prompt: str, negative_prompt: str = "", images: Any = None, *,
                progress: Optional[ProgressFn] = None, **settings: Any) -> TaskResult:
        """One prompt (and optional source images), one seed and one set of settings across 2-4 contestants.

        With ``recommended_settings=True`` each contestant uses its own registry steps and guidance instead. A
        contestant that cannot run (unavailable, no editing, out of memory) gets an error cell; the rest run.
        """
        return self.run(Settings.from_inputs("compare", contestants=contestants, prompt=prompt,
                                             negative_prompt=negative_prompt, images=images, **settings), progress)

    def seed_sweep(self, contestants: Sequence[str], prompt: str, negative_prompt: str = "", images: Any = None, *,
                   num_seeds: int = 4, progress: Optional[ProgressFn] = None, **settings: Any) -> TaskResult:
        """Seeds ``seed … seed+num_seeds-1`` for each contestant: a grid with one row per seed."""
        return self.run(Settings.from_inputs("seed_sweep", contestants=contestants, prompt=prompt,
                                             negative_prompt=negative_prompt, images=images, num_seeds=num_seeds,
                                             **settings), progress)

    def prompt_batch(self, contestants: Sequence[str], prompt_file: Any, negative_prompt: str = "", *,
                     progress: Optional[ProgressFn] = None, **settings: Any) -> TaskResult:
        """Every prompt of an uploaded .txt/.jsonl list on every contestant: a grid with one row per prompt.

        A line's own ``seed``/``negative_prompt`` (jsonl) override the shared ones.
        """
        return self.run(Settings.from_inputs("prompt_batch", contestants=contestants, prompt_file=prompt_file,
                                             negative_prompt=negative_prompt, **settings), progress)

    # --- machinery ------------------------------------------------------------------------------------------

    def _job(self, contestant_id: str, prompt: str, negative_prompt: str, seeds: list[int],
             settings: Settings) -> Job:
        c = self.manager.contestants[contestant_id]
        steps, guidance = ((c.steps, c.guidance) if settings.recommended_settings
                           else (settings.steps, settings.guidance))
        return Job(contestant_id, prompt, negative_prompt or "", seeds, steps, guidance)

    def _run_matrix(self, task: str, jobs: list[Job], references: list[Image.Image], settings: Settings,
                    progress: Optional[ProgressFn], raise_errors: bool = False) -> TaskResult:
        """Run each job (a contestant on a prompt with its seeds) and write PNGs, record and zip.

        With ``raise_errors`` (Generate/Edit: one model) a failure raises; otherwise (Compare and friends) it is
        recorded in that run and the other runs go on.
        """
        folder = new_task_folder(self.output_root, self.output_ttl_s)
        started = time.perf_counter()
        reference_files = []
        for number, reference in enumerate(references, start=1):
            path = folder / f"reference-{number:02d}.png"
            reference.save(path, format="PNG")
            reference_files.append(path)
        steps = StepCounter(sum(job.steps * len(job.seeds) for job in jobs), progress)
        runs: list[Run] = []
        models: dict[str, dict] = {}
        for job in jobs:
            c = self.manager.contestants[job.contestant_id]
            runs.append(Run(c.id, c.label, job.prompt, job.negative_prompt, list(job.seeds), job.steps, job.guidance,
                            settings.width, settings.height,
                            references_used=min(len(references), c.max_reference_images)))
            models.setdefault(c.id, dict(c.describe(), source=public_source(c.source)))
        for index in self.execution_order(jobs):
            job, run, number = jobs[index], runs[index], index + 1
            c = self.manager.contestants[job.contestant_id]
            start = steps.done
            try:
                self._run_job(task, number, run, references, folder, steps, models[c.id])
            except StudioInputError as error:
                if raise_errors:
                    raise
                run.error = str(error).removeprefix(f"{c.label} is ")
            except torch.cuda.OutOfMemoryError as error:
                free_memory()
                logger.warning("out of memory running %s: %s", c.id, error)
                message = "ran out of memory; try a smaller size, fewer images or fewer contestants."
                if raise_errors:
                    raise StudioInputError(f"The model {message}") from error
                run.error = message
            except Exception:
                if raise_errors:
                    raise
                logger.exception("contestant %s failed", c.id)
                run.error = "failed; see the server log."
            steps.advance_to(start + job.steps * len(job.seeds), f"{c.label}: done")
        record = {
            "deepgen_studio_record": 1,
            "task": task,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "models": models,
            "settings": {"width": settings.width, "height": settings.height, "follow_source": settings.width is None,
                         "reference_images": [p.name for p in reference_files]},
            "runs": [run.to_record(folder) for run in runs],
            "total_elapsed_s": round(time.perf_counter() - started, 3),
            "environment": environment_record(self.manager.device),
            "acceleration": self.manager.acceleration.to_record(),  # speed options on the DeepGen models
        }
        result = TaskResult(task, runs, folder, record, folder / f"deepgen-{task}.zip", reference_files)
        result.write_export()
        return result

    def _run_job(self, task: str, number: int, run: Run, references: list[Image.Image], folder: Path,
                 steps: StepCounter, model_record: dict) -> None:
        """Fill ``run`` with one contestant's images (one per seed), its time and peak memory."""
        c = self.manager.contestants[run.contestant_id]
        if references and "edit" not in c.tasks:
            raise StudioInputError("does not edit images (text-to-image only).")
        if not references and "t2i" not in c.tasks:
            raise StudioInputError("needs a source image (it only edits).")
        with self.manager.lock:
            model = self.manager.get(c.id)
            model_record["revision"] = model.revision
            self._check_size(model, run.width, run.height)
            with PeakMemory(self.manager.device) as memory:
                tick = time.perf_counter()
                for k, seed in enumerate(run.seeds):
                    base = steps.done
                    image = model.run(run.prompt, run.negative_prompt, references, run.width, run.height, run.steps,
                                      run.guidance, seed,
                                      lambda i, base=base: steps.advance_to(
                                          base + i + 1, f"{c.label}: step {i + 1}/{run.steps}"))
                    path = folder / f"{task}-{number:02d}-{k + 1}-{c.id}-seed{seed}.png"
                    save_png(image, path, run.png_settings(task, model, seed, image))
                    run.files.append(path)
                    run.sizes.append(image.size)
                    steps.advance_to(base + run.steps, f"{c.label}: image {k + 1}/{len(run.seeds)}")
                run.elapsed_s = time.perf_counter() - tick
        run.peak_memory_bytes, run.peak_memory_kind = memory.peak_bytes, memory.kind

    @staticmethod
    def _check_size(model: LoadedModel, width: Optional[int], height: Optional[int]) -> None:
        limit = model.max_side
        for name, value in (("width", width), ("height", height)):
            if value is not None and value > limit:
                raise StudioInputError(f"{model.contestant.label} is limited to {limit} pixels a side; "
                                       f"the {name} is {value}.")

    def close(self) -> None:
        shutil.rmtree(self.output_root, ignore_errors=True)
