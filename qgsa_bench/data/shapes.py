"""`shapes`: a synthetic multi-object VQA set, generated deterministically from a seed (no files).

Each image holds 2-5 non-overlapping objects (shape x colour x size). Each image gets two questions,
about different objects where possible, of four types:
  color  "what color is the circle?"          (the shape is unique in the image)
  shape  "what shape is the red object?"      (the colour is unique in the image)
  exist  "is there a blue triangle?"          (yes, or no for an absent pair)
  count  "how many squares are there?"        (digits, as VQA normalisation writes them)
Several objects per image is the point: only then does the question decide which patches matter.
Boxes [x, y, w, h] are the tight boxes of each object's drawn pixels (None for count and "no").

`shapes-hires` (`hires`): the same objects and question types on a larger canvas (448 px) that SmolVLM's
processor splits into 224-px tiles (2 x 2 + a global view), 3-8 objects per image. Object sides are the same
fractions of a 224-px TILE as the base set's of its 224-px image, so inside a tile an object looks as it
does in `shapes`, while the global view (the whole canvas shrunk to 224 px) shows it at half that size.
No object straddles a tile boundary (each lies wholly inside one tile, 2 px clear of its edges): a question
about one object then needs exactly one tile, which is what a tile selector's budget of one tile tests.
Boxes are in canvas pixels.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np

COLORS = {"red": (220, 30, 30), "green": (40, 170, 60), "blue": (30, 60, 220),
          "yellow": (230, 200, 20), "purple": (140, 50, 180), "orange": (240, 130, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (0.12, 0.16), "large": (0.20, 0.26)}  # side as a fraction of the image side
BACKGROUND = (235, 235, 235)
QUESTION_TYPES = ("color", "shape", "exist", "count")
SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}
QUESTIONS_PER_IMAGE = 2
DEFAULT_IMAGES = 200
HIRES = {"image_size": 448, "tile": 224, "objects": (3, 8)}  # the `shapes-hires` set


def _inside_one_tile(x: int, y: int, side: int, tile: int | None) -> bool:
    """True when the square [x, x + side) x [y, y + side) lies in one tile, 2 px clear of its edges."""
    return tile is None or all((v - 2) // tile == (v + side + 1) // tile for v in (x, y))


def _place(rng: random.Random, size: int, n: int, tile: int | None = None) -> list[dict]:
    """n objects at random on a size x size canvas, 4 px apart; sides as fractions of `tile` (default: the
    canvas), each wholly inside one tile when `tile` is given (at most n: a crowded draw gives up after 200)."""
    objects, boxes = [], []
    for _ in range(n):
        for _try in range(200):
            size_name = rng.choice(list(SIZES))
            side = int(rng.uniform(*SIZES[size_name]) * (tile or size))
            x, y = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
            if _inside_one_tile(x, y, side, tile) and all(x + side + 4 <= bx or bx + bs + 4 <= x or y + side + 4 <= by or by + bs + 4 <= y
                   for bx, by, bs in boxes):
                boxes.append((x, y, side))
                objects.append({"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)),
                                "size": size_name, "x": x, "y": y, "side": side})
                break
    return objects


def _mask(obj: dict, size: int, fill: int):
    """The object's pixels as an "L" image: `fill` inside, 0 elsewhere."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    x, y, s = obj["x"], obj["y"], obj["side"]
    if obj["shape"] == "circle":
        d.ellipse((x, y, x + s - 1, y + s - 1), fill=fill)
    elif obj["shape"] == "square":
        d.rectangle((x, y, x + s - 1, y + s - 1), fill=fill)
    else:
        d.polygon([(x + (s - 1) / 2, y), (x + s - 1, y + s - 1), (x, y + s - 1)], fill=fill)
    return mask


def draw(objects: list[dict], size: int):
    """Render the objects; each gets its tight pixel box [x, y, w, h]."""
    from PIL import Image

    img = Image.new("RGB", (size, size), BACKGROUND)
    for obj in objects:
        mask = _mask(obj, size, 255)
        img.paste(COLORS[obj["color"]], mask=mask)
        ys, xs = np.nonzero(np.asarray(mask))
        obj["box"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return img


def patch_labels(objects: list[dict], image_size: int, patch: int) -> np.ndarray:
    """Per patch of the (image_size/patch)^2 grid: [colour, shape, centre] class indices.

    colour in 0..len(COLORS) and shape in 0..len(SHAPES), 0 = background: the object that covers most of
    the patch's pixels if it covers at least a quarter of them; centre = 1 on the patch that holds an
    object's box centre. Base-train's auxiliary loss reads these (a label per patch, like segmentation)."""
    grid = image_size // patch
    cover = np.zeros((len(objects) + 1, grid, grid))
    cover[0] = 0.25 - 1e-9  # background wins unless an object covers at least a quarter of the patch
    labels = np.zeros((3, grid, grid), dtype=np.int64)
    for j, obj in enumerate(objects, start=1):
        m = np.asarray(_mask(obj, image_size, 1), dtype=np.float64)[: grid * patch, : grid * patch]
        cover[j] = m.reshape(grid, patch, grid, patch).mean(axis=(1, 3))
        cx, cy = obj["x"] + obj["side"] / 2, obj["y"] + obj["side"] / 2
        labels[2, min(int(cy // patch), grid - 1), min(int(cx // patch), grid - 1)] = 1
    owner = cover.argmax(axis=0)
    colors, shapes_ = list(COLORS), list(SHAPES)
    for j, obj in enumerate(objects, start=1):
        labels[0][owner == j] = colors.index(obj["color"]) + 1
        labels[1][owner == j] = shapes_.index(obj["shape"]) + 1
    return labels


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _questions(rng: random.Random, objects: list[dict], n: int = QUESTIONS_PER_IMAGE):
    """n x (type, question, answer, referent index or None), different referents while there are any."""
    shapes = [o["shape"] for o in objects]
    colors = [o["color"] for o in objects]
    out, used = [], set()
    for _ in range(n):
        free = [i for i in range(len(objects)) if i not in used] or list(range(len(objects)))
        kinds = list(QUESTION_TYPES)
        rng.shuffle(kinds)
        for kind in kinds:
            if kind == "color":
                cands = [i for i in free if shapes.count(shapes[i]) == 1]
                if cands:
                    i = rng.choice(cands)
                    out.append((kind, f"what color is the {shapes[i]}?", colors[i], i))
                    break
            elif kind == "shape":
                cands = [i for i in free if colors.count(colors[i]) == 1]
                if cands:
                    i = rng.choice(cands)
                    out.append((kind, f"what shape is the {colors[i]} object?", shapes[i], i))
                    break
            elif kind == "exist":
                pairs = list(zip(colors, shapes))
                unique = [i for i in free if pairs.count(pairs[i]) == 1]
                if unique and rng.random() < 0.5:
                    i = rng.choice(unique)
                    out.append((kind, f"is there {_a(colors[i])} {colors[i]} {shapes[i]}?", "yes", i))
                    break
                absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in set(pairs)]
                c, s = rng.choice(absent)
                out.append((kind, f"is there {_a(c)} {c} {s}?", "no", None))
                break
            else:
                s = rng.choice(sorted(set(shapes)))
                out.append((kind, f"how many {s}s are there?", str(shapes.count(s)), None))
                break
        if out and out[-1][3] is not None:
            used.add(out[-1][3])
    return out


def generate(n_images: int = DEFAULT_IMAGES, seed: int = 0, split: str = "test", image_size: int = 224,
             objects: tuple[int, int] = (2, 5), questions: int = QUESTIONS_PER_IMAGE, tile: int | None = None,
             name: str = "shapes"):
    """Deterministic: the same arguments give the same images, questions and boxes.

    `objects`: the range of objects per image (base-train's curriculum starts with one); `questions`
    per image (base-train asks more of each image it encodes); `tile` (px): objects sized for and kept
    inside tiles of this size (None: the canvas is the unit); `name`: the set's name in ids and `dataset`,
    and part of the random stream (so `shapes-hires` draws other images than `shapes`)."""
    from qgsa_bench.data.types import VQASample

    samples = []
    for index in range(n_images):
        rng = random.Random(f"{name}/{seed}/{SPLIT_OFFSET.get(split, 3)}/{index}")
        placed = _place(rng, image_size, rng.randint(*objects), tile)
        image = draw(placed, image_size)
        for q, (kind, question, answer, ref) in enumerate(_questions(rng, placed, questions)):
            samples.append(VQASample(
                id=f"{name}-{split}-{index:05d}-{q}", question=question, answers=[answer], image=image,
                question_type=kind, box=None if ref is None else tuple(float(v) for v in placed[ref]["box"]),
                split=split, dataset=name,
                extra={"image_index": index, "referent": ref, "objects": placed}))
    return samples


def hires(n_images: int = DEFAULT_IMAGES, seed: int = 0, split: str = "test", questions: int = QUESTIONS_PER_IMAGE,
          objects: tuple[int, int] | None = None):
    """The `shapes-hires` set (module docstring): 448-px canvases, 3-8 objects inside 224-px tiles."""
    return generate(n_images, seed, split, HIRES["image_size"], objects or HIRES["objects"], questions,
                    tile=HIRES["tile"], name="shapes-hires")


GENERATED = {"shapes": generate, "shapes-hires": hires}  # the generated sets, by the name users type


def write_parquet(samples, out: Path, split: str) -> Path:
    """Write samples in the lmms-lab RefCOCO parquet layout (+ question_type), readable by any tool."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoded: dict[int, bytes] = {}
    rows = []
    for s in samples:
        index = s.extra["image_index"]
        if index not in encoded:
            buffer = io.BytesIO()
            s.image.save(buffer, format="PNG")
            encoded[index] = buffer.getvalue()
        rows.append({
            "question_id": s.id, "image": {"bytes": encoded[index], "path": f"{index:05d}.png"},
            "question": s.question, "answer": list(s.answers), "bbox": None if s.box is None else list(s.box),
            "question_type": s.question_type, "file_name": f"{index:05d}.png", "dataset": s.dataset,
        })
    path = Path(out) / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
