"""A hostile but fair client against ``python app.py --model tiny`` on loopback: bad inputs of every kind through
``gradio_client`` and raw ``queue/join``, the file-route redirect probe, an oversized body, memory across many new
sessions, and the clean-up after SIGTERM. Every URL here is 127.0.0.0/8, the server is one this module starts, and
every request is bounded in count and time."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from test_app_http import EXAMPLE, GENERATE, AppServer

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

psutil = pytest.importorskip("psutil")
MAX_SESSIONS = 32


def start(tmp_path: Path, *args: str) -> AppServer:
    """The app with its own Gradio temp dir (``server.temp``)."""
    return AppServer(tmp_path / "app.log", *args, temp=tmp_path / "gradio-temp").wait_ready()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = start(tmp_path_factory.mktemp("hostile"), "--max-sessions", str(MAX_SESSIONS))
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def fn_index(server: AppServer, api_name: str) -> int:
    config = httpx.get(server.url + "config", timeout=10).json()
    return next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == api_name)


def join(server: AppServer, index: int, data: list, session: str = "") -> str:
    """One raw ``queue/join`` and its outcome: the error text, or "ok"."""
    session = session or uuid.uuid4().hex
    response = httpx.post(server.url + "gradio_api/queue/join", timeout=30,
                          json={"data": data, "fn_index": index, "session_hash": session, "event_data": None})
    body = response.json()
    if response.status_code != 200 or "event_id" not in body:
        return json.dumps(body)
    with httpx.stream("GET", server.url + "gradio_api/queue/data", params={"session_hash": session},
                      timeout=60) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                return "ok" if message.get("success") else str(message.get("output", {}).get("error"))
    return "no answer"


# (changes to GENERATE's values, the message the field gets); one line per kind of bad input
BAD_INPUTS = [
    ({"width": "64"}, "Width must be a multiple of 16 between 64 and"),
    ({"steps": None}, "Steps must be a whole number from 1 to 100, got None"),
    ({"seed": 1.5}, "The seed must be a whole number from 0 to 4294967295, got 1.5"),
    ({"seed": None}, "The seed must be a whole number"),
    ({"randomize_seed": "yes"}, "Randomize seed must be true or false, got 'yes'"),
    ({"guidance": "high"}, "Guidance must be a number from 0 to"),
    ({"num_images": [2]}, "Ask for 1 to 4 images, got a list"),
    ({"negative_prompt": 5}, "The negative prompt must be text, got 5"),
]


@pytest.mark.parametrize("changes, message", BAD_INPUTS)
def test_bad_inputs_get_the_fields_message_through_the_client(client, changes, message):
    with pytest.raises(Exception) as caught:
        client.predict("a red circle", *dict(GENERATE, **changes).values(), api_name="/generate")
    assert message in str(caught.value) and "Traceback" not in str(caught.value)


@pytest.mark.parametrize("changes, message", BAD_INPUTS[:3] + [({"prompt": ["a", "b"]}, "The prompt must be text")])
def test_bad_inputs_get_the_same_message_through_raw_queue_join(server, changes, message):
    values = {"prompt": "a red circle", **GENERATE, **changes}
    data = [values.pop("prompt"), *values.values()]
    outcome = join(server, fn_index(server, "generate"), data)
    assert message in outcome and "Original error" not in outcome


EDIT_REST = ["make it blue", "", True, 64, 64, 1, 4.0, 0, False, 1]
FILE = {"_type": "gradio.FileData"}
# (the Edit images' raw payload, the message); every link points at loopback, and none is ever connected to
FORGED_FILES = [
    ([{"path": "/etc/passwd", "meta": FILE}], "Images to edit: file 1 was not uploaded to this server"),
    ([{"path": "file:///etc/passwd", "meta": FILE}], "Images to edit: file 1 was not uploaded to this server"),
    ([{"path": 5, "meta": FILE}], "Images to edit: file 1 is not an uploaded file"),
    (["/etc/passwd"], "Images to edit: file 1 is not an uploaded file"),
    ({"path": "/etc/passwd", "meta": FILE}, "Images to edit must be a list of uploaded files"),
    ([{"path": "http://127.0.0.2:9/x.png", "meta": FILE}], "is a link to a local or private address (127.0.0.2)"),
    ([{"path": "http://[::1]:9/x.png", "meta": FILE}], "is a link to a local or private address (::1)"),
    ([{"path": "http://localhost:9/x.png", "meta": FILE}], "is a link to this machine or its network"),
    # a name Gradio itself resolves to loopback and refuses to fetch
    ([{"path": "http://localhost.:9/x.png", "meta": FILE}], "the link http://localhost.:9/x.png could not be fetched"),
]


@pytest.mark.parametrize("payload, message", FORGED_FILES)
def test_forged_file_payloads_and_blocked_links_say_so_through_raw_queue_join(server, payload, message):
    outcome = join(server, fn_index(server, "edit"), [payload, *EDIT_REST])
    assert message in outcome
    assert list(server.temp.rglob("passwd")) == []


def test_a_blocked_link_says_so_through_the_client(client):
    with pytest.raises(Exception) as caught:
        client.predict([handle_file("http://127.0.0.2:9/x.png")], *EDIT_REST, api_name="/edit")
    assert "is a link to a local or private address (127.0.0.2)" in str(caught.value)


def test_a_png_without_extension_is_edited(client, tmp_path):
    plain = tmp_path / "no-extension"
    plain.write_bytes(EXAMPLE.read_bytes())
    slider, *_ = client.predict([handle_file(str(plain))], *EDIT_REST, api_name="/edit")
    assert slider[1]


def test_the_file_route_does_not_redirect_to_other_sites(server):
    """Gradio < 6.20 answered ``/gradio_api/file=<absolute URL>`` with a 302 to that URL (an open redirect)."""
    target = "http://127.0.0.2:9/x.png"
    response = httpx.get(server.url + "gradio_api/file=" + target, follow_redirects=False, timeout=10)
    assert not response.is_redirect and target not in response.headers.get("location", "")
    assert response.status_code in (403, 404)


def test_an_oversized_body_is_refused_before_it_is_read(server):
    """Only the headers are sent: the answer comes without the server waiting for (or storing) 50 MB."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{\"data\": [")
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its answer (headers, then body)
            answer += chunk
    assert answer.decode().startswith("HTTP/1.1 413") and b"larger than 21 MiB" in answer


def rss(server: AppServer) -> int:
    return psutil.Process(server.process.pid).memory_info().rss


def refused_from_new_sessions(server: AppServer, count: int) -> None:
    index = fn_index(server, "generate")
    for _ in range(count):
        assert "prompt is empty" in join(server, index, ["", *GENERATE.values()])


def test_memory_stays_flat_across_many_new_sessions(server):
    refused_from_new_sessions(server, 2 * MAX_SESSIONS)  # warm-up: the session store is full from here on
    before = rss(server)
    refused_from_new_sessions(server, 200)
    grown = (rss(server) - before) / 2**20
    print(f"RSS after 200 more refused requests from new sessions: {grown:+.1f} MiB")
    assert grown < 8


# Gradio also keeps each session's message queue, up to 2,000 sessions (queueing.Queue's LRU): ~8 KB each.
GRADIO_MESSAGE_SESSIONS = 2000


@pytest.mark.slow
def test_memory_stays_flat_across_1000_new_sessions(server):
    """Once every per-session store is full (ours and Gradio's), 1,000 more new sessions leave memory flat."""
    refused_from_new_sessions(server, GRADIO_MESSAGE_SESSIONS)
    before = rss(server)
    refused_from_new_sessions(server, 1000)
    grown = (rss(server) - before) / 2**20
    print(f"RSS after 1,000 more refused requests from new sessions: {grown:+.1f} MiB")
    assert grown < 8


@pytest.mark.slow
def test_40_clients_are_all_served(server):
    """40 concurrent ``gradio_client`` users, six /generate calls each: all 240 answered right, none refused."""
    def user(index: int) -> list[int]:
        client = Client(server.url, verbose=False)
        return [client.predict(f"shape {index}", *dict(GENERATE, seed=100 * index + call).values(),
                               api_name="/generate")[1] for call in range(6)]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=40) as pool:
        seeds = list(pool.map(user, range(40)))
    assert seeds == [[100 * index + call for call in range(6)] for index in range(40)]
    print(f"240 /generate calls from 40 concurrent clients answered in {time.perf_counter() - started:.1f} s")
    assert server.process.poll() is None


@pytest.mark.slow
def test_a_burst_of_100_joins_is_answered(server):
    """100 raw ``queue/join`` calls at once, each from its own session: each one completes or, past the bounded
    queue (``--queue-size``, 64), is refused at once with Gradio's "Queue is full"; then the app still serves."""
    index = fn_index(server, "generate")
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=100) as pool:
        outcomes = list(pool.map(lambda n: join(server, index, [f"shape {n}", *GENERATE.values()]), range(100)))
    served = outcomes.count("ok")
    assert all(outcome == "ok" or "Queue is full" in outcome for outcome in outcomes) and served >= 64
    print(f"100 simultaneous joins: {served} served, {100 - served} refused as the queue was full, "
          f"in {time.perf_counter() - started:.1f} s")
    assert Client(server.url, verbose=False).predict("a red circle", api_name="/generate")[0]


def test_sigterm_leaves_the_temp_dir_empty(tmp_path):
    app = start(tmp_path)
    try:
        client = Client(app.url, verbose=False)
        client.predict([handle_file(str(EXAMPLE))], *EDIT_REST, api_name="/edit")
        assert any(app.temp.rglob("*"))
    finally:
        app.process.send_signal(signal.SIGTERM)
        assert app.process.wait(timeout=60) == 0
        app.stop()
    assert sorted(app.temp.rglob("*")) == []
