"""Assemble the DeepGen Studio Space bundle and publish it to the Hugging Face Hub.

    python space/deploy.py --repo USER/NAME [--private] [--dry-run] [--out DIR]
                           [--model ID] [--variable KEY=VALUE]... [--secret KEY[=VALUE]]... [--hardware zero-a10g]

The bundle is ``app.py``, the ``deepgen/`` package, ``contestants.yaml``, the example images, and this folder's
``README.md`` (the Space card) and ``requirements.txt``. ``--dry-run`` only builds the folder (and prints where);
otherwise it creates the Space repo (``sdk: gradio``), sets its variables and secrets, and uploads the folder.
A ``--secret KEY`` without a value takes it from the environment variable of that name, so tokens stay out of
shell history. Authentication is huggingface_hub's own (``hf auth login`` or ``HF_TOKEN``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml


REPO_ROOT = Path(__file__).resolve().parents[1]
SPACE_DIR = REPO_ROOT / "space"
# bundle path <- repository path
BUNDLE_FILES = {
    "app.py": "app.py",
    "contestants.yaml": "contestants.yaml",
    "README.md": "space/README.md",
    "requirements.txt": "space/requirements.txt",
}
BUNDLE_DIRS = {"deepgen": "deepgen", "studio": "studio", "assets/examples": "assets/examples"}
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".DS_Store", "*.egg-info")
MARKER = ".deepgen-space-bundle"  # lets --out be rebuilt without deleting a folder we did not make
# What ZeroGPU runs, from the Hub's ZeroGPU documentation (docs/hub/spaces-zerogpu.md, "Supported Versions", as read
# on 2026-12-01): the card's requirements must pin one of these torch releases and its python_version be one of these.
ZEROGPU_TORCH_VERSIONS = ("2.8.0", "2.9.1", "2.10.0", "2.11.0")
ZEROGPU_PYTHON_VERSIONS = ("3.10.13", "3.12.12")
CARD_KEYS = ("sdk", "sdk_version", "app_file", "python_version", "short_description", "models", "license")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_card(path: Path) -> dict:
    """The metadata (YAML front matter) of a Space card, read by huggingface_hub's card API."""
    from huggingface_hub import SpaceCard

    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        raise ValueError(f"{path} must start with YAML front matter between '---' lines.")
    try:
        return SpaceCard(text).data.to_dict()
    except (ValueError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: the front matter is not valid YAML: {error}") from error


def check_card(meta: dict) -> None:
    missing = [key for key in CARD_KEYS if not meta.get(key)]
    if missing:
        raise ValueError(f"The Space card is missing {missing} in its front matter.")
    if meta["sdk"] != "gradio" or meta["app_file"] != "app.py":
        raise ValueError("The Space card must say sdk: gradio and app_file: app.py.")
    if len(str(meta["short_description"])) > 60:
        raise ValueError("short_description must be at most 60 characters (a Hub limit).")
    if str(meta["python_version"]) not in ZEROGPU_PYTHON_VERSIONS:
        raise ValueError(f"python_version {meta['python_version']!r} is not one ZeroGPU runs; use one of "
                         f"{ZEROGPU_PYTHON_VERSIONS}.")


def torch_pin(requirements: Path) -> str:
    """The ``torch==X`` pin of a requirements file; it must be a release ZeroGPU supports."""
    pins = re.findall(r"^torch==([0-9.]+)\s*(?:#.*)?$", requirements.read_text(encoding="utf-8"), flags=re.M)
    if len(pins) != 1:
        raise ValueError(f"{requirements} must pin torch exactly once (torch==X), found {pins}.")
    if pins[0] not in ZEROGPU_TORCH_VERSIONS:
        raise ValueError(f"torch=={pins[0]} is not a release ZeroGPU supports; use one of {ZEROGPU_TORCH_VERSIONS}.")
    return pins[0]


def build_bundle(out: Optional[Path] = None) -> Path:
    """Copy the Space's files into ``out`` (a fresh temporary folder by default) and return it."""
    check_card(read_card(SPACE_DIR / "README.md"))
    torch_pin(SPACE_DIR / "requirements.txt")
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="deepgen-space-"))
    elif out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ValueError(f"{out} is not empty and was not made by this script; choose another --out.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for target, source in BUNDLE_FILES.items():
        shutil.copy2(REPO_ROOT / source, out / target)
    for target, source in BUNDLE_DIRS.items():
        shutil.copytree(REPO_ROOT / source, out / target, ignore=IGNORE, dirs_exist_ok=True)
    (out / MARKER).write_text("built by space/deploy.py\n", encoding="utf-8")
    return out


def bundle_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def parse_pairs(items: Sequence[str], what: str, from_environment: bool = False) -> dict[str, str]:
    """``KEY=VALUE`` items (or ``KEY`` alone, read from the environment, when ``from_environment``)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not ENV_NAME.match(key):
            raise ValueError(f"{what} {key!r} is not a valid name (letters, digits and _).")
        if not sep:
            if not from_environment:
                raise ValueError(f"{what} {key!r} needs a value: {key}=VALUE.")
            if key not in os.environ:
                raise ValueError(f"{what} {key} has no value and ${key} is not set in the environment.")
            value = os.environ[key]
        pairs[key] = value
    return pairs


def publish(folder: Path, repo: str, private: bool = False, variables: Optional[dict[str, str]] = None,
            secrets: Optional[dict[str, str]] = None, hardware: Optional[str] = None, api: Any = None) -> str:
    """Create (or reuse) the Space, set its variables and secrets, request hardware, upload ``folder``."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    url = api.create_repo(repo, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    for key, value in (variables or {}).items():
        api.add_space_variable(repo, key, value)
    for key, value in (secrets or {}).items():
        api.add_space_secret(repo, key, value)
    if hardware:
        api.request_space_hardware(repo, hardware)
    api.upload_folder(repo_id=repo, repo_type="space", folder_path=str(folder), ignore_patterns=[MARKER],
                      commit_message="Deploy DeepGen Studio")
    return str(url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Build and publish the DeepGen Studio Space.")
    parser.add_argument("--repo", required=True, help="the Space, as USER/NAME or ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--dry-run", action="store_true", help="only build the bundle folder")
    parser.add_argument("--out", type=Path, default=None, help="bundle folder (default: a new temporary folder)")
    parser.add_argument("--model", default=None, help="sets the DEEPGEN_MODEL variable (the model the Space runs)")
    parser.add_argument("--variable", action="append", default=[], metavar="KEY=VALUE", help="a Space variable")
    parser.add_argument("--secret", action="append", default=[], metavar="KEY[=VALUE]",
                        help="a Space secret; KEY alone reads $KEY (e.g. --secret HF_TOKEN for gated baselines)")
    parser.add_argument("--hardware", default=None, help="request hardware, e.g. zero-a10g (ZeroGPU)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not REPO_ID.match(args.repo):
            raise ValueError(f"--repo must look like USER/NAME, got {args.repo!r}.")
        variables = parse_pairs(args.variable, "Variable")
        if args.model:
            variables["DEEPGEN_MODEL"] = args.model
        secrets = parse_pairs(args.secret, "Secret", from_environment=True)
        folder = build_bundle(args.out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"bundle: {folder} ({bundle_size(folder) / 2**20:.1f} MiB)")
    if args.dry_run:
        print(f"dry run: nothing published (would create space {args.repo}, variables {sorted(variables)}, "
              f"secrets {sorted(secrets)})")
        return 0
    url = publish(folder, args.repo, args.private, variables, secrets, args.hardware)
    print(f"published: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
