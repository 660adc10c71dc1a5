"""``python app.py`` on 127.0.0.1, driven over HTTP with ``gradio_client``: the API endpoints (in full, and with only
their essential inputs), the MCP schema, errors that read clearly and leave the server serving, and a bounded load
test (20 concurrent clients).

The app runs the ``tiny`` preset offline; requests use 64x64 images and 1 step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest
from loopback import free_port
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "assets" / "examples" / "red-circle.png"
GENERATE = dict(negative_prompt="", width=64, height=64, steps=1, guidance=4.0, seed=0, randomize_seed=False,
                num_images=1)
START_TIMEOUT_S = 120


class AppServer:
    """``python app.py --model tiny`` in a subprocess on a free loopback port (also used by test_browser.py)."""

    def __init__(self, log_path: Path, *args: str, temp: Optional[Path] = None):
        """``temp``: the app's own Gradio temp dir (``GRADIO_TEMP_DIR``), for tests that inspect what it leaves."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.temp = temp
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                   OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env.pop("GRADIO_SERVER_NAME", None)
        if temp is not None:
            temp.mkdir(parents=True, exist_ok=True)
            env["GRADIO_TEMP_DIR"] = str(temp)
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--model", "tiny", "--port", str(self.port), *args],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> "AppServer":
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"app.py did not come up in {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = AppServer(tmp_path_factory.mktemp("app") / "app.log").wait_ready()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def test_the_api_names_are_stable(client):
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/edit", "/compare", "/seed_sweep", "/prompt_batch"} <= set(named)
    assert [p["parameter_name"] for p in named["/generate"]["parameters"]] == ["prompt", *GENERATE]
    assert [p["parameter_name"] for p in named["/compare"]["parameters"]][:2] == ["contestants", "prompt"]


def test_the_page_says_which_model_runs(server):
    with urllib.request.urlopen(server.url + "config", timeout=10) as response:
        config = json.loads(response.read())
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    assert any(isinstance(t, str) and "Running model" in t and "tiny" in t for t in texts)


def test_generate(client):
    gallery, seed, info, export = client.predict("a red circle", *GENERATE.values(), api_name="/generate")
    assert seed == 0 and "tiny" in info and len(gallery) == 1
    with Image.open(gallery[0]["image"]) as image:
        assert image.format == "PNG" and image.size == (64, 64)
        assert json.loads(image.text["deepgen"])["prompt"] == "a red circle"  # lossless, settings embedded
    assert Path(export).suffix == ".zip"


def test_generate_randomized_seed_is_reported(client):
    _, seed, info, _ = client.predict("a red circle", *dict(GENERATE, randomize_seed=True, seed=5).values(),
                                      api_name="/generate")
    assert isinstance(seed, int) and f"seeds {seed}" in info


def test_edit(client):
    slider, gallery, seed, info, export = client.predict(
        [handle_file(str(EXAMPLE))], "make the circle blue", "", True, 64, 64, 1, 4.0, 3, False, 1,
        api_name="/edit")
    before, after = slider
    with Image.open(before) as b, Image.open(after) as a:
        assert b.size == (256, 256) and a.size == (256, 256)  # the output follows the source
    assert seed == 3 and len(gallery) == 1


def test_compare(client):
    gallery, grid, summary, seed, export, record = client.predict(
        ["tiny", "sd3.5-medium"], "a blue square", "", None, 64, 64, 1, 4.0, 2, False, False, api_name="/compare")
    assert len(gallery) == 1 and Path(grid).is_file() and seed == 2
    assert [run["contestant_id"] for run in record["runs"]] == ["tiny", "sd3.5-medium"]
    assert record["runs"][0]["elapsed_s"] > 0 and record["runs"][0]["peak_memory_bytes"] > 0
    assert "unavailable" in record["runs"][1]["error"] and "unavailable" in summary


def test_shortest_calls_use_the_page_defaults(client, tmp_path):
    """Only the essential inputs: everything else takes the value the page starts with."""
    gallery, seed, info, export = client.predict("a red circle", api_name="/generate")
    assert len(gallery) == 1 and isinstance(seed, int) and "4 steps" in info  # tiny's recommended steps
    slider, gallery, seed, info, export = client.predict([handle_file(str(EXAMPLE))], "make it blue",
                                                         api_name="/edit")
    with Image.open(slider[1]) as after:
        assert after.size == (256, 256)  # follows the source by default
    contestants = ["tiny", "sd3.5-medium"]
    *_, record = client.predict(contestants, "a red circle", api_name="/compare")
    assert [run["contestant_id"] for run in record["runs"]] == contestants and record["runs"][0]["files"]
    *_, record = client.predict(contestants, "a red circle", api_name="/seed_sweep")
    assert len(record["runs"][0]["seeds"]) == 4  # the page's default sweep
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n", encoding="utf-8")
    *_, record = client.predict(contestants, handle_file(str(prompts)), api_name="/prompt_batch")
    assert [run["prompt"] for run in record["runs"][::2]] == ["a red circle", "a blue square"]


def test_only_the_essential_inputs_are_required(client):
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    required = {name: [p["parameter_name"] for p in named[name]["parameters"] if not p["parameter_has_default"]]
                for name in ("/generate", "/edit", "/compare", "/seed_sweep", "/prompt_batch")}
    assert required == {"/generate": ["prompt"], "/edit": ["images", "instruction"], "/compare": ["prompt"],
                        "/seed_sweep": ["prompt"], "/prompt_batch": ["prompt_file"]}  # contestants: the page's


def test_mcp_schema_lists_the_tools_with_argument_descriptions(server):
    with urllib.request.urlopen(server.url + "gradio_api/mcp/schema", timeout=30) as response:
        tools = {tool["name"]: tool for tool in json.loads(response.read())}
    assert {"generate", "edit", "compare", "seed_sweep", "prompt_batch"} <= set(tools)
    for name in ("generate", "edit", "compare", "seed_sweep", "prompt_batch"):
        properties = tools[name]["inputSchema"]["properties"]
        assert tools[name]["description"] and all(p.get("description") for p in properties.values()), name
    generate = tools["generate"]["inputSchema"]
    assert generate["required"] == ["prompt"] and "should not show" in generate["properties"]["negative_prompt"][
        "description"]
    assert "contestants.yaml" in tools["compare"]["inputSchema"]["properties"]["contestants"]["description"]


@pytest.mark.parametrize("prompt, changes, message", [
    ("", {}, "prompt is empty"),
    ("ok", {"steps": 1000}, "Steps must be a whole number from 1 to 100, got 1000"),
    ("ok", {"num_images": 9}, "Ask for 1 to 4 images, got 9"),
    ("ok", {"width": 72}, "multiple of 16"),
])
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(client, prompt, changes, message):
    with pytest.raises(Exception) as caught:
        client.predict(prompt, *dict(GENERATE, **changes).values(), api_name="/generate")
    assert message in str(caught.value) and "Traceback" not in str(caught.value)
    gallery, *_ = client.predict("still serving", *GENERATE.values(), api_name="/generate")
    assert gallery


def test_non_image_upload_is_refused(client, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    with pytest.raises(Exception) as caught:
        client.predict([handle_file(str(fake))], "make it blue", "", True, 64, 64, 1, 4.0, 0, False, 1,
                       api_name="/edit")
    assert "not an image" in str(caught.value)


def test_load_20_concurrent_clients(server):
    """Every request of 20 concurrent clients on loopback is answered, none fails."""
    clients = [None] * 20

    def one(index: int) -> int:
        clients[index] = Client(server.url, verbose=False)
        _, seed, _, _ = clients[index].predict(f"shape {index}", *dict(GENERATE, seed=index).values(),
                                               api_name="/generate")
        return seed

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=20) as pool:
        seeds = list(pool.map(one, range(20)))
    assert seeds == list(range(20))
    print(f"20 concurrent /generate requests answered in {time.perf_counter() - started:.1f} s")


def test_refusals_are_logged_on_the_server(server):
    assert "refused request" in server.log() and server.process.poll() is None


def test_out_of_memory_leaves_the_server_serving(tmp_path, monkeypatch):
    """In-process: the first request hits torch.OutOfMemoryError, the next one succeeds."""
    import torch

    monkeypatch.syspath_prepend(str(REPO))
    import app
    from deepgen.contestants import LoadedModel
    from studio.tasks import Studio

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    studio = Studio.create(model="tiny", device="cpu", output_root=tmp_path / "out")
    real_run, calls = LoadedModel.run, []

    def run_once_out_of_memory(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(LoadedModel, "run", run_once_out_of_memory)
    demo = app.build_demo(studio)
    demo.queue(max_size=8)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match="ran out of memory"):
            client.predict("a", *GENERATE.values(), api_name="/generate")
        gallery, *_ = client.predict("a", *GENERATE.values(), api_name="/generate")
        assert gallery
    finally:
        demo.close()
        studio.close()
