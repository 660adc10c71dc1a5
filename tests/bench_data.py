"""The invented example records of ../shared/BENCHMARKS.md written to disk, with the images they point to.

Used by tests/test_bench*.py; each ``write_<benchmark>(root)`` returns the ``--data`` path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

EDIT_NEG = ("blurry, low quality, low resolution, distorted, deformed, broken content, missing parts, damaged "
            "details, artifacts, glitch, noise, pixelated, grainy, compression artifacts, bad composition, wrong "
            "proportion, incomplete editing, unfinished, unedited areas.")


def picture(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


def write_geneval(root: Path) -> Path:
    records = [
        {"tag": "colors", "include": [{"class": "toaster", "count": 1, "color": "purple"}],
         "prompt": "synthetic test photo of a purple toaster on a striped towel",
         "detailed_caption": "A glossy purple toaster sits on a red-and-white striped towel."},
        # The official file has no detailed_caption; the authors' script raised KeyError on it.
        {"tag": "position", "include": [{"class": "clock", "count": 1},
                                        {"class": "bicycle", "count": 1, "position": ["left of", 0]}],
         "prompt": "synthetic test photo of a bicycle parked left of a clock"},
    ]
    path = root / "geneval_prompt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_dpg(root: Path) -> Path:
    folder = root / "prompts"
    folder.mkdir()
    (folder / "synthetic_0001.txt").write_text("A copper teapot shaped like a snail rests on a mossy stone beside "
                                               "three paper lanterns at dusk.\nsecond line is ignored\n")
    (folder / "synthetic_0002.txt").write_text("An astronaut made of knitted wool waters a cactus inside a glass "
                                               "greenhouse on a snowy hill.")
    return folder


def write_unigenbench(root: Path) -> Path:
    path = root / "test_prompts_en.csv"
    path.write_text(
        'index,prompt_en,sub_dims_en\n'
        '0,"A lighthouse built from stacked teacups stands on a cloud while two owls read a map.","{""Primary '
        'Categories"": ""Creative Divergence"", ""Testpoints"": [""Compound - Imagination""], ""Testpoint '
        'Description"": [""two owls""]}"\n'
        '1,"Watercolor painting of a red fox in a yellow raincoat jumping over a puddle.","{""Primary Categories"":'
        ' ""Art"", ""Testpoints"": [""Style""], ""Testpoint Description"": [""Watercolor painting""]}"\n')
    return path


def write_wise(root: Path) -> Path:
    path = root / "cultural_common_sense.json"
    path.write_text(json.dumps([
        {"prompt_id": 9001, "Prompt": "The fruit a fictional festival in Zarnia uses as its lantern",
         "Explanation": "Invented: Zarnian lanterns are hollowed melons.", "Category": "Cultural knowledge",
         "Subcategory": "Festival"},
        {"prompt_id": 9002, "Prompt": "An ice cube left on a hot pan for ten minutes",
         "Explanation": "Invented: only a small puddle or steam remains.", "Category": "Natural science",
         "Subcategory": "Physics"},
    ], indent=2))
    return path


def write_corebench(root: Path) -> Path:
    path = root / "corebench.jsonl"
    path.write_text(json.dumps({"ID": "C-MI-9001", "Main Class": "Composition", "Sub Class": "Multi-Instance",
                                "Prompt": "Generate an image of five paper boats of different colors floating in a "
                                          "bathtub.",
                                "Checklist": [{"question": "Are there exactly five paper boats?", "tags": ["0-hop"]}]})
                    + "\n" + json.dumps({"ID": "R-LR-9002", "Main Class": "Reasoning", "Sub Class": "Logical",
                                         "Prompt": "Three jars in a row; the green jar is leftmost. Show the jars.",
                                         "Checklist": []}) + "\n")
    return path


def write_imgedit(root: Path) -> Path:
    folder = root / "singleturn"
    (folder / "animal").mkdir(parents=True)
    (folder / "style").mkdir()
    # An RGBA source needs PNG bytes; PIL reads images by content, whatever the extension.
    picture(80, 60, "RGBA").save(folder / "animal" / "synthetic_0001.jpg", format="PNG")
    picture(60, 80, "L", seed=1).save(folder / "style" / "synthetic_0002.jpg", format="JPEG")
    (folder / "singleturn.json").write_text(json.dumps({
        "90001": {"id": "animal/synthetic_0001.jpg", "prompt": "Give the hamster a tiny blue scarf.",
                  "edit_type": "add"},
        "90002": {"id": "style/synthetic_0002.jpg", "prompt": "Render the harbor scene as a charcoal sketch.",
                  "edit_type": "style"},
    }, indent=2))
    return folder


def gedit_rows() -> dict:
    return {"task_type": ["color_alter", "subject-add"], "key": ["synth0001", "synth0002"],
            "instruction": ["Make the umbrella lime green.", "在桌子上加一只橙色的猫"],
            "instruction_language": ["en", "cn"],
            "input_image": [picture(64, 48, "RGBA", seed=2), picture(48, 64, "L", seed=3)],
            "input_image_raw": [picture(128, 96, seed=4), picture(96, 128, seed=5)],
            "Intersection_exist": [True, False]}


def write_gedit(root: Path, parquet: bool = False) -> Path:
    import datasets

    features = datasets.Features({"task_type": datasets.Value("string"), "key": datasets.Value("string"),
                                  "instruction": datasets.Value("string"),
                                  "instruction_language": datasets.Value("string"),
                                  "input_image": datasets.Image(), "input_image_raw": datasets.Image(),
                                  "Intersection_exist": datasets.Value("bool")})
    dataset = datasets.Dataset.from_dict(gedit_rows(), features=features)
    if parquet:
        path = root / "GEdit-Bench" / "data"
        path.mkdir(parents=True)
        dataset.to_parquet(str(path / "train-00000-of-00001.parquet"))
        return path.parent
    dataset.save_to_disk(str(root / "GEdit-Bench"))
    return root / "GEdit-Bench"


def write_rise(root: Path) -> Path:
    folder = root / "RISEBench-full"
    for name in ("temporal_reasoning_images", "logical_reasoning_images"):
        (folder / name).mkdir(parents=True)
    picture(64, 64, seed=6).save(folder / "temporal_reasoning_images" / "9001.png")
    picture(64, 32, "RGBA", seed=7).save(folder / "logical_reasoning_images" / "9002.png")
    (folder / "datav2_total_w_subtask.json").write_text(json.dumps([
        {"index": "temporal_reasoning_9001", "category": "temporal_reasoning", "subtask": "Life Progression",
         "instruction": "Show this sapling after fifty years of growth.",
         "image": "temporal_reasoning_images/9001.png", "reference": "A tall mature tree with a thick trunk."},
        {"index": "logical_reasoning_9002", "category": "logical_reasoning", "subtask": "Puzzle Solving",
         "instruction": "Fill the empty cell so every row sums to ten.",
         "image": "logical_reasoning_images/9002.png", "reference_txt": "The empty cell contains 4."},
    ], indent=2))
    return folder


def write_unireditbench(root: Path) -> Path:
    folder = root / "UniREditBench"
    for name in ("synthetic_physics", "synthetic_maze"):
        (folder / "original_image" / name).mkdir(parents=True)
    picture(64, 64, seed=8).save(folder / "original_image" / "synthetic_physics" / "0.png")
    picture(64, 64, "L", seed=9).save(folder / "original_image" / "synthetic_maze" / "1.png")
    (folder / "data.json").write_text(json.dumps([
        {"index": 0, "original_image_path": "original_image/synthetic_physics/0.png",
         "reference_image_path": "reference_image/synthetic_physics/0.png",
         "instruction": "Show the candle after it has burned for three hours.", "name": "synthetic_physics",
         "idx": 0, "reference_effect": "Candle much shorter with a pool of wax."},
        {"index": 1, "original_image_path": "original_image/synthetic_maze/1.png",
         "reference_image_path": "reference_image/synthetic_maze/1.png",
         "instruction": "Draw the shortest path from the star to the exit.",
         "rules": "Moves are only horizontal or vertical; walls are black.", "name": "synthetic_maze", "idx": 1,
         "reference_effect": "A red line from star to exit avoiding walls."},
    ], indent=2))
    return folder


def write_cvtg(root: Path, style_folder: str = "CVTG-Style") -> Path:
    folder = root / "CVTG-2K"
    records = {"data_list": [
        {"index": 1, "prompt": 'A bakery window with a chalkboard reading "Fresh Moon Buns" and a paper sign saying '
                               '"Closed Tuesdays".', "carrier_list": ["chalkboard", "paper sign"],
         "sentence_list": ["Fresh Moon Buns", "Closed Tuesdays"]},
        {"index": 2, "prompt": 'A train platform with a banner that says "Platform Nine".',
         "carrier_list": ["banner"], "sentence_list": ["Platform Nine"]},
    ]}
    for bench in ("CVTG", style_folder):
        (folder / bench).mkdir(parents=True)
        (folder / bench / "2.json").write_text(json.dumps(records, indent=2))
    return folder


WRITERS = {"geneval": write_geneval, "dpg": write_dpg, "unigenbench": write_unigenbench, "wise": write_wise,
           "corebench": write_corebench, "imgedit": write_imgedit, "gedit": write_gedit, "rise": write_rise,
           "unireditbench": write_unireditbench, "cvtg": write_cvtg}

# The files each run of the two records above writes (BENCHMARKS.md's layouts), with 1 image per prompt for
# GenEval/UniGenBench/CoReBench (the tests pass --images-per-prompt 2 there to check the k index, 4 for DPG).
EXPECTED = {
    "geneval": {"00000/metadata.jsonl", "00000/samples/0000.png", "00000/samples/0001.png",
                "00001/metadata.jsonl", "00001/samples/0000.png", "00001/samples/0001.png"},
    "dpg": {"synthetic_0001.png", "synthetic_0002.png"},
    "unigenbench": {"0_0.png", "0_1.png", "1_0.png", "1_1.png"},
    "wise": {"9001.png", "9002.png"},
    "corebench": {"C-MI/C-MI-9001-0.png", "C-MI/C-MI-9001-1.png", "R-LR/R-LR-9002-0.png", "R-LR/R-LR-9002-1.png"},
    "imgedit": {"90001.png", "90002.png"},
    "gedit": {"fullset/color_alter/en/synth0001.png", "fullset/color_alter/en/synth0001_SRCIMG.png",
              "fullset/subject-add/cn/synth0002.png", "fullset/subject-add/cn/synth0002_SRCIMG.png"},
    "rise": {"temporal_reasoning/temporal_reasoning_9001.png", "logical_reasoning/logical_reasoning_9002.png"},
    "unireditbench": {"synthetic_physics/0.png", "synthetic_maze/1.png"},
    "cvtg": {"CVTG/2/1.png", "CVTG/2/2.png", "CVTG-Style/2/1.png", "CVTG-Style/2/2.png"},
}
IMAGES_PER_PROMPT = {"geneval": 2, "dpg": 4, "unigenbench": 2, "corebench": 2}
