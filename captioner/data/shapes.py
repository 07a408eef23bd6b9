"""The built-in `shapes` dataset: seeded scenes of coloured shapes with captions and question/answer pairs.

Every image is drawn from its own random stream, seeded by (seed, split, index), so the files are
byte-identical for the same arguments whatever the order or parallelism of generation. Each scene has
1-4 objects (circle, square, triangle, diamond; 7 colours; small or big) placed without overlap and so that
every pair has one clear relation (left/right or above/below). Captions come from paraphrase templates;
question/answer pairs cover colour, shape, size, count, existence and relation.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioner.data.records import CaptionRecord, QAPair, split_to_json
from captioner.fileio import write_json

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 212, 30),
    "purple": (140, 60, 190),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
}
SIZES = {"small": 0.10, "big": 0.17}  # radius as a fraction of the image side
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
SPLITS = ("train", "val", "test")
_SUPERSAMPLE = 4  # draw at 4x and downsample, for anti-aliased edges


@dataclass(frozen=True)
class ShapesSpec:
    """Arguments of one generation run; stored in `dataset.json` beside the files."""

    image_size: int = 64  # side of the square images, pixels
    num_train: int = 6000  # images in the train split
    num_val: int = 1000  # images in the val split
    num_test: int = 1000  # images in the test split
    seed: int = 0  # base seed; every image's stream is seeded by (seed, split, index)
    min_objects: int = 1  # objects per scene, at least
    max_objects: int = 4  # objects per scene, at most


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    x: float  # centre, pixels
    y: float  # centre, pixels (y grows downwards)

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where `a` is relative to `b`, along the axis on which they differ most."""
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def sample_scene(rng: np.random.Generator, spec: ShapesSpec) -> list[ShapeObject]:
    """Objects with no overlap and, for every pair, one axis clearly dominant (ratio >= 1.5)."""
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    side = spec.image_size
    while True:
        kinds = [
            (str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(list(SIZES)))) for _ in range(count)
        ]
        placed: list[ShapeObject] = []
        for shape, color, size in kinds:
            radius = SIZES[size] * side
            for _ in range(200):
                x, y = rng.uniform(radius + 1, side - radius - 1, size=2)
                candidate = ShapeObject(shape, color, size, float(x), float(y))
                if all(_compatible(candidate, other, side) for other in placed):
                    placed.append(candidate)
                    break
            else:
                break  # no room: draw new kinds
        if len(placed) == count:
            return sorted(placed, key=lambda o: o.x)


def _compatible(a: ShapeObject, b: ShapeObject, side: int) -> bool:
    gap = (SIZES[a.size] + SIZES[b.size]) * side + 0.03 * side
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    return np.hypot(dx, dy) >= gap and max(dx, dy) >= 1.5 * min(dx, dy)


def render(objects: list[ShapeObject], rng: np.random.Generator, size: int) -> Image.Image:
    """A lightly noisy grey background with the objects drawn on it."""
    big = size * _SUPERSAMPLE
    background = int(rng.integers(95, 160))
    canvas = Image.new("RGB", (big, big), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        cx, cy, r = obj.x * _SUPERSAMPLE, obj.y * _SUPERSAMPLE, SIZES[obj.size] * big
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif obj.shape == "square":
            h = r * 0.85
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)], fill=fill)
        else:  # diamond
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    small = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    noise = rng.normal(0.0, 6.0, size=small.shape)
    return Image.fromarray(np.clip(small + noise, 0, 255).astype(np.uint8))


def _a(words: str) -> str:
    """'a red circle', 'an orange circle'."""
    return ("an " if words[0] in "aeiou" else "a ") + words


def _plural(shape: str) -> str:
    return shape + "s"


def _with_article(count: int, words: str) -> str:
    return _a(words) if count == 1 else f"{NUMBER_WORDS[count]} {words}"


def _listing(objects: list[ShapeObject]) -> str:
    phrases = [_a(o.phrase) for o in objects]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _groups(objects: list[ShapeObject]) -> str:
    """'two red circles and a blue square': objects grouped by colour and shape, in left-to-right order."""
    counts: dict[tuple[str, str], int] = {}
    for o in objects:
        counts[(o.color, o.shape)] = counts.get((o.color, o.shape), 0) + 1
    parts = [_with_article(n, f"{color} {_plural(shape) if n > 1 else shape}") for (color, shape), n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption_candidates(objects: list[ShapeObject]) -> list[str]:
    """Six paraphrases of the scene; five are kept per image."""
    n = len(objects)
    if n == 1:
        (o,) = objects
        return [
            _a(o.phrase),
            f"there is {_a(o.phrase)}",
            f"{_a(o.phrase)} on a gray background",
            f"a single {o.color} {o.shape}",
            f"an image with one {o.phrase}",
            f"{_a(o.color)} {o.shape} that is {o.size}",
        ]
    if n == 2:
        a, b = objects
        pair = (
            f"two {a.color} {_plural(a.shape)}"
            if (a.color, a.shape) == (b.color, b.shape)
            else f"two shapes, {_a(a.phrase)} and {_a(b.phrase)}"
        )
        return [
            f"{_a(a.phrase)} {relation(a, b)} {_a(b.phrase)}",
            f"there is {_a(a.phrase)} {relation(a, b)} {_a(b.phrase)}",
            f"{_a(b.phrase)} {relation(b, a)} {_a(a.phrase)}",
            f"{_a(a.phrase)} and {_a(b.phrase)}",
            pair,
            f"{_a(a.color)} {a.shape} {relation(a, b)} {_a(b.color)} {b.shape}",
        ]
    a, b = objects[0], objects[1]
    number = NUMBER_WORDS[n]
    return [
        _listing(objects),
        f"{number} shapes: {_listing(objects)}",
        _groups(objects),
        f"there are {number} shapes: {_groups(objects)}",
        f"{number} shapes with {_a(a.phrase)} {relation(a, b)} {_a(b.phrase)}",
        f"there are {number} shapes",
    ]


def questions(objects: list[ShapeObject], rng: np.random.Generator) -> list[QAPair]:
    """Question/answer pairs about the scene, each answer a single word."""
    pairs = [QAPair("how many shapes are there?", NUMBER_WORDS[len(objects)], "count")]
    shape = str(rng.choice(SHAPES))
    n_shape = sum(o.shape == shape for o in objects)
    pairs.append(QAPair(f"how many {_plural(shape)} are there?", NUMBER_WORDS[n_shape], "count"))

    def unique(attr: str, value: str) -> bool:
        return sum(getattr(o, attr) == value for o in objects) == 1

    target = objects[int(rng.integers(len(objects)))]
    if unique("shape", target.shape):
        pairs.append(QAPair(f"what color is the {target.shape}?", target.color, "color"))
    if unique("color", target.color):
        pairs.append(QAPair(f"what shape is the {target.color} object?", target.shape, "shape"))
    described = [o for o in objects if sum((p.color, p.shape) == (o.color, o.shape) for p in objects) == 1]
    if described:
        o = described[int(rng.integers(len(described)))]
        pairs.append(QAPair(f"what size is the {o.color} {o.shape}?", o.size, "size"))
    if rng.random() < 0.5:
        o = objects[int(rng.integers(len(objects)))]
        pairs.append(QAPair(f"is there {_a(o.color)} {o.shape}?", "yes", "exist"))
    else:
        present = {(o.color, o.shape) for o in objects}
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = absent[int(rng.integers(len(absent)))]
        pairs.append(QAPair(f"is there {_a(color)} {shape}?", "no", "exist"))
    if len(described) >= 2:
        i, j = rng.choice(len(described), size=2, replace=False)
        a, b = described[int(i)], described[int(j)]
        true_rel = relation(a, b)
        asked = (
            true_rel
            if rng.random() < 0.5
            else str(rng.choice([r for r in ("to the left of", "to the right of", "above", "below") if r != true_rel]))
        )
        answer = "yes" if asked == true_rel else "no"
        pairs.append(QAPair(f"is the {a.color} {a.shape} {asked} the {b.color} {b.shape}?", answer, "relation"))
    return pairs


def make_example(
    spec: ShapesSpec, split: str, index: int
) -> tuple[Image.Image, list[ShapeObject], list[str], list[QAPair]]:
    """Scene, image, five captions and the questions of one image; a pure function of its arguments."""
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index])
    objects = sample_scene(rng, spec)
    image = render(objects, rng, spec.image_size)
    candidates = caption_candidates(objects)
    chosen = sorted(rng.choice(len(candidates), size=5, replace=False))
    captions = [candidates[int(k)] for k in chosen]
    return image, objects, captions, questions(objects, rng)


def _write_chunk(args: tuple[ShapesSpec, str, int, int, str]) -> list[CaptionRecord]:
    spec, split, start, stop, image_dir = args
    records = []
    for index in range(start, stop):
        image, objects, captions, qa = make_example(spec, split, index)
        path = Path(image_dir) / f"{split}_{index:05d}.png"
        image.save(path, format="PNG", optimize=False)
        meta = {"num_objects": len(objects), "objects": [dataclasses.asdict(o) for o in objects]}
        records.append(CaptionRecord(image=str(path), captions=tuple(captions), qa=tuple(qa), meta=meta))
    return records


def generate(out_dir: str | os.PathLike, spec: ShapesSpec = ShapesSpec(), workers: int | None = None) -> dict[str, int]:
    """Write `images/*.png`, `{train,val,test}.json` and `dataset.json` under `out_dir`.

    Args:
        out_dir: str. Target folder; created if missing.
        spec: ShapesSpec. Sizes and seed.
        workers: int. Processes drawing images. Defaults to the CPU count.

    Returns:
        dict[str, int]: images written per split.
    """
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    sizes = {"train": spec.num_train, "val": spec.num_val, "test": spec.num_test}
    workers = workers or os.cpu_count() or 1
    chunk = 250
    jobs = [
        (spec, split, s, min(s + chunk, n), str(image_dir)) for split, n in sizes.items() for s in range(0, n, chunk)
    ]
    if workers == 1:
        results = [_write_chunk(job) for job in jobs]
    else:  # spawned, not forked: a forked copy of a multithreaded parent (JAX, TensorFlow) can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_write_chunk, jobs))
    by_split: dict[str, list[CaptionRecord]] = {split: [] for split in sizes}
    for job, records in zip(jobs, results):
        by_split[job[1]].extend(records)
    for split, records in by_split.items():
        write_json(out / f"{split}.json", split_to_json("shapes", split, records, out))
    write_json(out / "dataset.json", {"dataset": "shapes", "spec": dataclasses.asdict(spec), "splits": sizes})
    return sizes
