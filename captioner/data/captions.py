"""Caption loaders for real datasets: Flickr8k (original and `captions.txt` layouts), Karpathy split JSON
(Flickr8k / Flickr30k / COCO) and the official COCO captions JSON. Pure Python, no TensorFlow.

Real files are messy. Each loader keeps what it can use and counts the rest in a `Skipped`, by reason:
lines that break the format, captions of images that no split lists, split entries without captions, and
captions of images that are not on disk. A split is never dropped silently: an empty one is an error.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from captioner.data.records import CaptionRecord, Skipped
from captioner.errors import CaptionerError

FLICKR8K_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images")  # "Flicker" (sic) is the original
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
TOKEN_FILE = "Flickr8k.token.txt"
CSV_FILE = "captions.txt"
CSV_HELD_OUT = 1000  # captions.txt without split files: the last 1,000 images (sorted) test, the 1,000 before them val


def _find(data_dir: Path, name: str) -> Path | None:
    """`name` in data_dir or one folder below (archives unpack as Flickr8k_text/, Flickr8k_Dataset/, ...)."""
    for candidate in (data_dir / name, *sorted(data_dir.glob(f"*/{name}"))):
        if candidate.exists():
            return candidate
    return None


def _image_dir(data_dir: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        found = _find(data_dir, name)
        if found is not None and found.is_dir():
            return found
    return data_dir


def _records(
    captions: dict[str, list[str]], names: list[str], image_dir: Path, skipped: Skipped
) -> list[CaptionRecord]:
    """Records of `names` in order; names without captions or without an image file are counted, not kept."""
    records = []
    for name in dict.fromkeys(names):
        if name not in captions:
            skipped.add("split entry without captions", name)
            continue
        path = image_dir / name
        if not path.is_file():
            skipped.add("image not on disk", name)
            continue
        records.append(CaptionRecord(image=str(path), captions=tuple(captions[name])))
    return records


def read_flickr8k_tokens(path: Path, skipped: Skipped) -> dict[str, list[str]]:
    """`IMAGE#N<TAB>caption` lines -> {image: [captions in N order]} (a repeated N keeps both captions)."""
    captions: dict[str, list[tuple[int, str]]] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            key, tab, caption = line.partition("\t")
            name, hash_, index = key.rpartition("#")[0], "#" in key, key.rpartition("#")[2]
            if not tab or not hash_ or not index.isdigit() or "\t" in caption or not caption.strip():
                skipped.add("malformed line", f"{path.name}:{number}: {line[:80]}")
                continue
            captions.setdefault(name, []).append((int(index), caption.strip()))
    return {name: [c for _, c in sorted(numbered, key=lambda item: item[0])] for name, numbered in captions.items()}


def read_flickr8k_csv(path: Path, skipped: Skipped) -> dict[str, list[str]]:
    """The `captions.txt` layout: a header `image,caption`, then one caption a row (commas quoted as CSV)."""
    captions: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
            raise CaptionerError(f"{path} does not start with the header 'image,caption'")
        for number, row in enumerate(rows, start=2):
            if len(row) < 2 or not row[0].strip() or not ",".join(row[1:]).strip():
                skipped.add("malformed line", f"{path.name}:{number}: {','.join(row)[:80]}")
                continue
            captions.setdefault(row[0].strip(), []).append(",".join(row[1:]).strip())
    return captions


def load_flickr8k(data_dir: Path, split: str, skipped: Skipped) -> list[CaptionRecord]:
    """Flickr8k in its original layout (`Flickr8k.token.txt` + `Flickr_8k.*Images.txt`) or as `captions.txt`."""
    if split not in FLICKR8K_SPLIT_FILES:
        raise CaptionerError(f"flickr8k has the splits train, val (Flickr_8k.devImages.txt) and test, not '{split}'")
    token_file, csv_file = _find(data_dir, TOKEN_FILE), _find(data_dir, CSV_FILE)
    if token_file is None and csv_file is None:
        raise CaptionerError(
            f"no {TOKEN_FILE} or {CSV_FILE} in {data_dir}; point --data-dir at the unpacked Flickr8k folder"
        )
    captions = read_flickr8k_tokens(token_file, skipped) if token_file else read_flickr8k_csv(csv_file, skipped)
    image_dir = _image_dir(data_dir, FLICKR8K_IMAGE_DIRS)
    split_files = {name: _find(data_dir, file) for name, file in FLICKR8K_SPLIT_FILES.items()}
    if all(split_files.values()):
        lists = {
            name: [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
            for name, path in split_files.items()
        }
    elif token_file is None:  # captions.txt alone: a fixed, documented split of the sorted names
        names = sorted(captions)
        lists = {
            "train": names[: -2 * CSV_HELD_OUT],
            "val": names[-2 * CSV_HELD_OUT : -CSV_HELD_OUT],
            "test": names[-CSV_HELD_OUT:],
        }
    else:
        missing = [FLICKR8K_SPLIT_FILES[n] for n, p in split_files.items() if p is None]
        raise CaptionerError(
            f"{data_dir} has {TOKEN_FILE} but not {', '.join(missing)}; copy the split files beside it"
        )
    listed = {name for names in lists.values() for name in names}
    for name in sorted(set(captions) - listed):
        for number in range(len(captions[name])):
            skipped.add("caption of an image in no split", f"{name} caption {number + 1}")
    return _records(captions, lists[split], image_dir, skipped)


def load_karpathy(data_dir: Path, split: str, skipped: Skipped) -> list[CaptionRecord]:
    """Karpathy's split JSON (`dataset_flickr8k.json`, `dataset_flickr30k.json`, `dataset_coco.json`).

    `restval` (COCO) is folded into train, as is customary. Images are looked for at `filepath/filename`
    (COCO) or `filename` under `data_dir`, `data_dir/images`, `Images`, `Flicker8k_Dataset` or `flickr30k-images`.
    """
    files = sorted(data_dir.glob("dataset_*.json")) or sorted(data_dir.glob("*/dataset_*.json"))
    if not files:
        raise CaptionerError(f"no dataset_*.json (Karpathy split) in {data_dir}")
    if len(files) > 1:
        raise CaptionerError(
            f"several Karpathy split files in {data_dir} ({', '.join(f.name for f in files)}); keep one per folder"
        )
    try:
        images = json.loads(files[0].read_text(encoding="utf-8"))["images"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CaptionerError(f"{files[0]} is not a Karpathy split file ({exc.__class__.__name__})") from None
    if split not in ("train", "val", "test"):
        raise CaptionerError(f"karpathy has the splits train (with restval), val and test, not '{split}'")
    roots = [
        data_dir / d for d in ("", "images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images")
    ]
    captions: dict[str, list[str]] = {}
    names: list[str] = []
    for entry in images:
        try:
            entry_split = "train" if entry["split"] == "restval" else entry["split"]
            relative = str(Path(entry.get("filepath", "")) / entry["filename"])
            sentences = [s["raw"].strip() if s.get("raw") else " ".join(s["tokens"]) for s in entry["sentences"]]
        except (KeyError, TypeError):
            skipped.add("malformed image entry", str(entry)[:80])
            continue
        if entry_split != split:
            continue
        sentences = [s for s in sentences if s]
        if not sentences:
            skipped.add("split entry without captions", relative)
            continue
        path = next((root / relative for root in roots if (root / relative).is_file()), roots[0] / relative)
        captions[str(path)] = sentences
        names.append(str(path))
    return _records(captions, names, Path(), skipped)  # the paths as found: absolute, or relative to the working folder


COCO_SUBTYPES = {"train": "train2014", "val": "val2014"}


def load_coco(data_dir: Path, split: str, skipped: Skipped) -> list[CaptionRecord]:
    """The official `annotations/captions_{train,val}2014.json`; images in `{train,val}2014/` (or `images/...`)."""
    if split not in COCO_SUBTYPES:
        raise CaptionerError(
            "coco captions have the splits train and val; for a test split use --dataset karpathy with "
            "dataset_coco.json"
        )
    subtype = COCO_SUBTYPES[split]
    path = _find(data_dir, f"captions_{subtype}.json") or _find(data_dir / "annotations", f"captions_{subtype}.json")
    if path is None:
        raise CaptionerError(f"no captions_{subtype}.json in {data_dir} or {data_dir / 'annotations'}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        files = {image["id"]: image["file_name"] for image in payload["images"]}
        annotations = payload["annotations"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CaptionerError(f"{path} is not a COCO captions file ({exc.__class__.__name__})") from None
    captions: dict[str, list[str]] = {}
    for annotation in annotations:
        try:
            name, caption = files[annotation["image_id"]], str(annotation["caption"]).strip()
        except (KeyError, TypeError):
            skipped.add("caption of an unknown image id", str(annotation)[:80])
            continue
        if caption:
            captions.setdefault(name, []).append(caption)
    image_dir = next((d for d in (data_dir / subtype, data_dir / "images" / subtype) if d.is_dir()), data_dir / subtype)
    for _, name in sorted(files.items()):
        if name not in captions:
            skipped.add("split entry without captions", name)
    return _records(captions, [name for _, name in sorted(files.items()) if name in captions], image_dir, skipped)
