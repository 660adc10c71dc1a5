"""Serving the page to the public: bounded memory per session, a cap on request bodies, a clean cache, a clean exit.

:func:`launch` is how ``app.py`` starts the server. It passes Gradio the limits below and adds two things Gradio
leaves to the app:

* :class:`BodySizeLimit`, ASGI middleware that refuses an oversized request with 413 before its body is read
  (by its ``Content-Length``, or while it streams in when there is none);
* :func:`cache_janitor`, which removes the empty folders Gradio's cache clean-up leaves behind (one per uploaded or
  served file), every ``delete_cache`` interval and at shutdown;
* :class:`StudioBlocks`, the page's ``gr.Blocks``, which checks the raw file payloads of an API call before Gradio
  moves them into its cache, so that a forged path or a link to a private address gets a message of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import gradio as gr
from starlette.middleware import Middleware

from .inputs import MAX_UPLOAD_BYTES, file_payload_problem, is_link, upload_paths
from .settings import MAX_REFERENCE_IMAGES

# Gradio keeps a copy of the page's config (~200 KB) for every session that called an event, up to
# `state_session_capacity` sessions (10,000 by default: ~2 GB). The page keeps nothing a user would miss when their
# session is evicted (only the clicked gallery image), so a few hundred recent sessions is plenty.
MAX_SESSIONS = 256
# Bodies larger than this are refused before they are read: one file at the upload limit plus room for the form
# fields; an upload request may carry an Edit's reference images at once.
BODY_MARGIN_BYTES = 1024 * 1024
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + BODY_MARGIN_BYTES
MAX_UPLOAD_BODY_BYTES = MAX_REFERENCE_IMAGES * MAX_UPLOAD_BYTES + BODY_MARGIN_BYTES
UPLOAD_ROUTE = "/gradio_api/upload"
# Gradio's delete_cache: every 30 minutes, delete cached files older than an hour.
DELETE_CACHE = (1800, 3600)

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: a request whose body is larger than ``max_bytes`` (``max_upload_bytes`` on the upload
    route) gets 413 with a JSON message, before the app reads it into memory or onto disk."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, max_upload_bytes: int = MAX_UPLOAD_BODY_BYTES):
        self.app, self.max_bytes, self.max_upload_bytes = app, max_bytes, max_upload_bytes

    def limit(self, path: str) -> int:
        return self.max_upload_bytes if path.rstrip("/").endswith(UPLOAD_ROUTE) else self.max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, "The Content-Length header is not a number.")
                return
            if int(declared) > limit:
                await _send_json(send, 413, _too_large(limit))
                return
        received, started = 0, False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, _too_large(limit))


def _too_large(limit: int) -> str:
    return (f"The request is larger than {limit // (1024 * 1024)} MiB; files may be at most "
            f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MiB each.")


async def _send_json(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def remove_empty_folders(root: Path, min_age_s: float = 0.0) -> int:
    """Remove empty folders under ``root`` (deepest first, ``root`` itself kept) whose last change is older than
    ``min_age_s`` (so a folder Gradio has just made for a file is left alone); returns how many were removed."""
    root, removed, cutoff = Path(root), 0, time.time() - min_age_s
    if not root.is_dir():
        return 0
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: len(entry[0]), reverse=True):
        path = Path(folder)
        if path == root:
            continue
        try:
            if path.stat().st_mtime <= cutoff and not any(path.iterdir()):
                path.rmdir()
                removed += 1
        except OSError:  # gone already, or filled meanwhile
            continue
    return removed


def cache_janitor(cache_dir: Path, frequency_s: int, age_s: int) -> Callable[[Any], contextlib.AbstractAsyncContextManager]:
    """A FastAPI lifespan that removes empty folders from Gradio's cache every ``frequency_s`` seconds (those older
    than ``age_s``, the age at which Gradio deletes their files) and all of them at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(frequency_s)
                await asyncio.to_thread(remove_empty_folders, cache_dir, age_s)

        task = asyncio.create_task(sweep())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan


class StudioBlocks(gr.Blocks):
    """``gr.Blocks`` whose API calls get the app's own message for a bad file payload.

    Gradio checks a file input's payload while moving it into its cache, before any event function runs, and its
    refusals (a path that was not uploaded, a link to a private address, pydantic's text for a malformed payload)
    reach a client as an empty error, since the app does not show raw exception text. The payloads of every
    ``gr.File`` input are checked first (:func:`studio.inputs.file_payload_problem`), and a public link that Gradio
    then cannot fetch is reported as such."""

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        super().validate_inputs(block_fn, inputs)
        for block, value in _file_inputs(block_fn, inputs):
            problem = file_payload_problem(_field_name(block), value, Path(self.GRADIO_CACHE),
                                           multiple=block.file_count != "single")
            if problem:
                raise gr.Error(problem, print_exception=False)

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as error:
            for block, value in _file_inputs(block_fn, inputs):
                links = [path for path in upload_paths(value) if is_link(path)]
                if links:
                    raise gr.Error(f"{_field_name(block)}: the link {links[0][:200]} could not be fetched (this "
                                   "server fetches only public http(s) links to files); upload the file instead.",
                                   print_exception=False) from error
            raise


def _file_inputs(block_fn: Any, inputs: list[Any]) -> list[tuple[gr.File, Any]]:
    return [(block, value) for block, value in zip(block_fn.inputs, inputs) if isinstance(block, gr.File)]


def _field_name(block: gr.File) -> str:
    """A file input's label without its hints: "Images to edit (1-4)" -> "Images to edit"."""
    return re.split(r"[:(]", block.label or "")[0].strip() or "The file"


def launch(demo: gr.Blocks, *, max_sessions: int = MAX_SESSIONS, **kwargs: Any) -> None:
    """``demo.launch(**kwargs)`` with the limits above; blocks until the server stops (returns at once with
    ``prevent_thread_lock=True``). Call :func:`shutdown` afterwards."""
    frequency_s, age_s = demo.delete_cache or DELETE_CACHE
    demo.launch(max_file_size=MAX_UPLOAD_BYTES, state_session_capacity=max_sessions,
                app_kwargs={"middleware": [Middleware(BodySizeLimit)],
                            "lifespan": cache_janitor(Path(demo.GRADIO_CACHE), frequency_s, age_s)},
                **kwargs)


def shutdown(demo: gr.Blocks) -> None:
    """Close the server through Gradio (its lifespan deletes the cached files), then remove the folders left."""
    demo.close(verbose=False)
    remove_empty_folders(Path(demo.GRADIO_CACHE))
