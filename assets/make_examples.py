"""Draw the example images shipped with DeepGen Studio (``assets/examples/``) and list the examples.

Run from the repository root: ``python assets/make_examples.py``. The pictures are simple flat shapes on plain
backgrounds, in the spirit of the procedural shape world the DeepGen-nano models are trained on, drawn with PIL
so the project makes every example it ships. ``examples.json`` lists the Generate prompts and the Edit examples
(image files + instruction) that ``studio.inputs.load_examples`` reads.

DeepGen-nano knows only its shape world's words, so its examples (``examples:`` of the nano entries in
``contestants.yaml``) are world samples: :data:`NANO_PROMPTS` and :data:`NANO_EDITS` name them by capability and
index in ``world.dataset("train", 16, seed=NANO_SEED, capabilities=(capability,))``, and :data:`NANO_PLAIN` a bare
prompt of ``world.plain_samples``, chosen among those the shipped ``deepgen-nano`` got right (ShapeEval
``correct``, 30 steps, guidance 4). The edits' sources are rendered by the
world into ``examples/nano/`` at the 64 px the nano models work at.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from deepgen.nano import world

HERE = Path(__file__).resolve().parent / "examples"
SIZE = 256


def canvas(background: str = "white", size: tuple[int, int] = (SIZE, SIZE)) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", size, background)
    return image, ImageDraw.Draw(image)


def red_circle() -> Image.Image:
    image, draw = canvas()
    draw.ellipse((78, 78, 178, 178), fill=(220, 40, 40))
    return image


def square_and_triangle() -> Image.Image:
    image, draw = canvas((245, 240, 225))
    draw.rectangle((40, 96, 112, 168), fill=(40, 90, 210))
    draw.polygon([(150, 170), (218, 170), (184, 100)], fill=(40, 170, 70))
    return image


def yellow_star_wide() -> Image.Image:
    image, draw = canvas((30, 30, 60), size=(384, 256))
    cx, cy, outer, inner = 192, 128, 80, 32
    points = []
    for k in range(10):
        radius = outer if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    draw.polygon(points, fill=(250, 210, 40))
    return image


def green_background_scene() -> Image.Image:
    image, draw = canvas((200, 230, 200))
    draw.rectangle((0, 190, SIZE, SIZE), fill=(120, 90, 60))
    return image


IMAGES = {
    "red-circle.png": red_circle,
    "square-and-triangle.png": square_and_triangle,
    "yellow-star-wide.png": yellow_star_wide,
    "green-scene.png": green_background_scene,
}

EXAMPLES = {
    "generate": [
        "a red circle in the center on a white background",
        "a small blue square at the top left and a green triangle at the bottom right",
        "three yellow stars in a row on a dark blue background",
        "a purple ring above an orange square, flat colors",
    ],
    "edit": [
        {"images": ["red-circle.png"], "instruction": "make the circle blue"},
        {"images": ["square-and-triangle.png"], "instruction": "move the square to the right of the triangle"},
        {"images": ["yellow-star-wide.png"], "instruction": "add a small white moon at the top right"},
        {"images": ["red-circle.png", "green-scene.png"],
         "instruction": "put the circle from the first image on the ground of the second image"},
    ],
}


NANO_SEED = 11
NANO_SIZE = 64
# Index in ``world.plain_samples("train", 16, seed=NANO_SEED)``: a bare prompt ("a purple circle"), shown first for
# the models that draw one object for it (``nano_examples(plain=True)``).
NANO_PLAIN = 15
# (capability, index): generation, reasoning generation (riddle words) and text rendering.
NANO_PROMPTS = (("generation", 11), ("generation", 6), ("reasoning_generation", 15), ("reasoning_generation", 11),
                ("text_rendering", 5))
# (capability, index, source image file under examples/nano/): add, move, remove, reasoning recolour.
NANO_EDITS = (("editing", 10, "add-square-source.png"), ("editing", 6, "move-diamond-source.png"),
              ("editing", 13, "erase-triangle-source.png"), ("reasoning_editing", 11, "paint-diamond-source.png"))


def nano_sample(capability: str, index: int) -> world.Sample:
    return world.dataset("train", 16, seed=NANO_SEED, capabilities=(capability,))[index]


def nano_examples(plain: bool = False) -> dict:
    """The nano entries' ``examples:`` (image paths relative to the repository root, as in contestants.yaml);
    ``plain`` puts the bare :data:`NANO_PLAIN` prompt first."""
    bare = [world.plain_samples("train", 16, seed=NANO_SEED)[NANO_PLAIN].prompt] if plain else []
    return {"prompts": bare + [nano_sample(*key).prompt for key in NANO_PROMPTS],
            "edits": [{"image": f"assets/examples/nano/{name}", "instruction": nano_sample(capability, index).prompt}
                      for capability, index, name in NANO_EDITS]}


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, draw in IMAGES.items():
        draw().save(HERE / name, format="PNG")
    (HERE / "nano").mkdir(exist_ok=True)
    for capability, index, name in NANO_EDITS:
        nano_sample(capability, index).source_image(NANO_SIZE).save(HERE / "nano" / name, format="PNG")
    (HERE / "examples.json").write_text(json.dumps(EXAMPLES, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(IMAGES)} images and examples.json to {HERE}, {len(NANO_EDITS)} nano sources to {HERE / 'nano'}")
    print("deepgen-nano examples (contestants.yaml):", json.dumps(nano_examples(plain=True), indent=2))


if __name__ == "__main__":
    main()
