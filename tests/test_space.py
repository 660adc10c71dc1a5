"""The Space bundle: ``space/deploy.py --dry-run`` builds the folder, its card and requirements are what a ZeroGPU
Space needs, its app builds from the bundle alone, and publishing makes the expected Hub calls (with a fake API)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_deploy():
    spec = importlib.util.spec_from_file_location("space_deploy", REPO / "space" / "deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy = load_deploy()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space") / "bundle"
    result = subprocess.run([sys.executable, str(REPO / "space" / "deploy.py"), "--repo", "someone/deepgen-studio",
                             "--dry-run", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "nothing published" in result.stdout
    return out


def test_dry_run_builds_the_bundle(bundle):
    for name in ("app.py", "README.md", "requirements.txt", "contestants.yaml", "deepgen/__init__.py",
                 "studio/tasks.py", "studio/ui/__init__.py", "deepgen/pipeline.py", "assets/examples/examples.json",
                 "assets/examples/red-circle.png"):
        assert (bundle / name).is_file(), name
    assert not list(bundle.rglob("__pycache__")) and not (bundle / "tests").exists()


def test_card_front_matter(bundle):
    meta = deploy.read_card(bundle / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    for key in ("sdk_version", "python_version", "short_description", "models", "license"):
        assert meta[key], key
    assert "deepgenteam/DeepGen-1.0" in meta["models"] and len(meta["short_description"]) <= 60
    import gradio

    assert meta["sdk_version"] == gradio.__version__  # the version the tests ran with


def test_requirements_pin_a_zerogpu_torch(bundle):
    assert deploy.torch_pin(bundle / "requirements.txt") in deploy.ZEROGPU_TORCH_VERSIONS
    text = (bundle / "requirements.txt").read_text()
    assert "diffusers==" in text and "transformers==" in text and "spaces" in text


@pytest.mark.parametrize("version, message", [("3.11.9", "not one ZeroGPU runs"), ("", "missing")])
def test_cards_for_a_python_zerogpu_does_not_run_are_refused(tmp_path, version, message):
    card = (REPO / "space" / "README.md").read_text()
    card = re.sub(r'python_version: .*', f'python_version: "{version}"', card)
    (tmp_path / "README.md").write_text(card)
    with pytest.raises(ValueError, match=message):
        deploy.check_card(deploy.read_card(tmp_path / "README.md"))


def test_a_card_without_valid_front_matter_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("---\nsdk: [gradio\n---\n# x\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        deploy.read_card(tmp_path / "README.md")


# Wheel tags of the Linux x86_64 machines ZeroGPU runs on (manylinux 2.17 to 2.39 covers torch's CUDA wheels).
LINUX_TAGS = [f"manylinux_2_{minor}_x86_64" for minor in range(17, 40)] + ["manylinux2014_x86_64", "any"]
OFFLINE_SIGNS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                 "Could not fetch URL")


@pytest.mark.slow
def test_space_requirements_resolve_on_the_zerogpu_python(bundle, tmp_path):
    """pip resolves the bundle's requirements for the card's Python on Linux, with the pinned ZeroGPU torch."""
    python = deploy.read_card(bundle / "README.md")["python_version"]
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--python-version", ".".join(python.split(".")[:2]), "--implementation", "cp",
               "--only-binary=:all:", "--target", str(tmp_path / "target"), "--report", str(report),
               "-r", str(bundle / "requirements.txt")]
    for tag in LINUX_TAGS:
        command += ["--platform", tag]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0 and any(sign in result.stderr for sign in OFFLINE_SIGNS):
        pytest.skip("the package index is unreachable from here")
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert resolved["torch"] == deploy.torch_pin(bundle / "requirements.txt")
    for pin in re.findall(r"^([A-Za-z0-9_.-]+)==([0-9.]+)", (bundle / "requirements.txt").read_text(), flags=re.M):
        assert resolved[pin[0].lower()] == pin[1], pin


def test_the_bundled_app_builds_from_the_bundle_alone(bundle, tmp_path):
    """Import the bundle's app.py and construct its Blocks, with the bundle's own deepgen/ package."""
    code = (
        "import sys, deepgen, studio, app\n"
        "assert deepgen.__file__.startswith(sys.argv[1]), deepgen.__file__\n"
        "assert studio.__file__.startswith(sys.argv[1]), studio.__file__\n"
        "studio = app.create_studio(app.build_parser().parse_args(['--model', 'tiny']))\n"
        "demo = app.build_demo(studio)\n"
        "import gradio\n"
        "assert isinstance(demo, gradio.Blocks)\n"
        "names = {d['api_name'] for d in demo.get_config_file()['dependencies'] if d.get('api_name')}\n"
        "assert {'generate', 'edit', 'compare'} <= names, names\n"
        "studio.close()\n"
        "print('built', sorted(names))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(bundle), GRADIO_ANALYTICS_ENABLED="False")
    result = subprocess.run([sys.executable, "-c", code, str(bundle)], cwd=bundle, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built" in result.stdout


def test_bad_arguments_are_refused(tmp_path, monkeypatch, capsys):
    assert deploy.main(["--repo", "not-a-repo-id", "--dry-run"]) == 2
    assert "USER/NAME" in capsys.readouterr().err
    monkeypatch.delenv("DEEPGEN_TEST_SECRET", raising=False)
    assert deploy.main(["--repo", "a/b", "--dry-run", "--secret", "DEEPGEN_TEST_SECRET"]) == 2
    assert "not set in the environment" in capsys.readouterr().err
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("not ours")
    assert deploy.main(["--repo", "a/b", "--dry-run", "--out", str(stranger)]) == 2
    assert (stranger / "keep.txt").is_file()


def test_publish_creates_the_space_sets_variables_and_secrets_then_uploads(bundle):
    class FakeApi:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *args, **kwargs: self.calls.append((name, args, kwargs)) or "https://hf.co/spaces/a/b"

    api = FakeApi()
    url = deploy.publish(bundle, "a/b", private=True, variables={"DEEPGEN_MODEL": "deepgen-nano"},
                         secrets={"HF_TOKEN": "hf_x"}, hardware="zero-a10g", api=api)
    names = [name for name, _, _ in api.calls]
    assert names == ["create_repo", "add_space_variable", "add_space_secret", "request_space_hardware",
                     "upload_folder"] and url
    _, args, kwargs = api.calls[0]
    assert args == ("a/b",) and kwargs["repo_type"] == "space" and kwargs["space_sdk"] == "gradio"
    assert kwargs["private"] is True
    assert api.calls[1][1] == ("a/b", "DEEPGEN_MODEL", "deepgen-nano")
    upload = api.calls[-1][2]
    assert upload["repo_type"] == "space" and upload["folder_path"] == str(bundle)
