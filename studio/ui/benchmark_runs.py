"""Compare → "Benchmark runs": 2-4 runs of ``python -m deepgen bench`` side by side, item by item.

Runs are only found under the configured root (``DEEPGEN_BENCH_ROOT`` or ``app.py --bench-root``): the page offers
their keys and :func:`deepgen.bench.browse.select_runs` accepts nothing else, so no path from the browser is ever
opened. Images are sent to the page as pixels (not file paths), and the view exports like the other tabs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import gradio as gr
from PIL import Image

from deepgen.bench import browse

from ..records import new_task_folder
from ..tasks import Studio

PAGE_ITEMS = 8  # items per page of the view


def _no_root_message() -> str:
    return (f"No benchmark root is configured. Start the app with `--bench-root DIR` (or set `{browse.ROOT_ENV}`) "
            "to browse the runs of `python -m deepgen bench` found under DIR.")


def run_choices(root: Optional[Path]) -> list[tuple[str, str]]:
    return [(run.label, run.key) for run in browse.discover_runs(root)] if root else []


def show_runs(studio: Studio, root: Optional[Path], keys: list[str], query: str,
              page: float) -> tuple[Optional[Image.Image], str, Optional[str]]:
    """(grid of the page's items, their prompts as Markdown, export zip) for the selected runs."""
    if root is None:
        raise gr.Error(_no_root_message(), print_exception=False)
    if not isinstance(page, (int, float)) or page != int(page) or page < 1:
        raise gr.Error(f"The page must be a whole number from 1, got {page!r}.", print_exception=False)
    try:
        runs = browse.select_runs(root, keys)
    except ValueError as error:
        raise gr.Error(str(error), print_exception=False) from None
    rows, total = browse.build_rows(root, runs, query or "", (int(page) - 1) * PAGE_ITEMS, PAGE_ITEMS)
    if not rows:
        return None, f"No items match ({total} in all).", None
    lines = [f"**{total} items**, showing {(int(page) - 1) * PAGE_ITEMS + 1}-"
             f"{(int(page) - 1) * PAGE_ITEMS + len(rows)}. Columns: "
             + ", ".join(f"`{run.model}` ({run.key})" for run in runs), ""]
    lines += [f"- `{row.item_id}`: {row.prompt}" for row in rows]
    export = browse.export_view(runs, rows, new_task_folder(studio.output_root, studio.output_ttl_s))
    return browse.make_view_grid(runs, rows), "\n".join(lines), str(export)


def build_benchmark_runs(studio: Studio, root: Optional[Path]) -> None:
    """The sub-tab's layout and wiring (page-only: no API endpoint)."""
    with gr.Accordion("Benchmark runs", open=False, elem_id="benchmark-runs"):
        gr.Markdown("Runs of `python -m deepgen bench` found under the benchmark root"
                    + (f" (`{root.name}`)." if root else f". {_no_root_message()}"))
        with gr.Row():
            runs = gr.Dropdown(run_choices(root), multiselect=True, max_choices=browse.MAX_RUNS,
                               label=f"Runs ({browse.MIN_RUNS}-{browse.MAX_RUNS}, one benchmark)", scale=4)
            refresh = gr.Button("Refresh list", scale=1)
        with gr.Row():
            query = gr.Textbox(label="Filter by item id or prompt", scale=3)
            page = gr.Number(1, label="Page", precision=0, minimum=1, scale=1)
            show = gr.Button("Show", variant="primary", scale=1)
        grid = gr.Image(label="Source, then each run's images", type="pil", format="png", interactive=False)
        prompts = gr.Markdown()
        export = gr.File(label="Export: grid PNG + view.json (.zip)", interactive=False)
    refresh.click(lambda: gr.Dropdown(choices=run_choices(root)), None, runs, queue=False, api_visibility="private")
    show.click(lambda keys, text, number: show_runs(studio, root, keys, text, number), [runs, query, page],
               [grid, prompts, export], api_visibility="private")
