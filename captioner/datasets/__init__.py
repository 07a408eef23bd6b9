"""Dataset loaders: annotation files in, `CaptionRecord`s out. Pure Python, no TensorFlow."""

from __future__ import annotations

from pathlib import Path

from captioner.datasets.records import CaptionRecord, QAPair, read_split_file
from captioner.errors import CaptionerError

DATASETS = ("shapes",)


def load_split(dataset: str, data_dir: str | Path, split: str) -> list[CaptionRecord]:
    """Records of one split of a dataset.

    Args:
        dataset: str. One of DATASETS.
        data_dir: str. Folder the dataset was generated or downloaded into.
        split: str. "train", "val" or "test".
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CaptionerError(f"dataset directory {data_dir} does not exist; create it with `captioner data shapes --out {data_dir}`")
    if dataset == "shapes":
        records = read_split_file(data_dir / f"{split}.json")
    else:
        raise CaptionerError(f"unknown dataset '{dataset}'; choose one of: {', '.join(DATASETS)}")
    empty = [r.image_id for r in records if not any(c.strip() for c in r.captions)]
    if empty:
        raise CaptionerError(f"{len(empty)} image(s) in the {split} split have only empty captions (first: {empty[0]}); fix or remove them")
    return records


__all__ = ["CaptionRecord", "QAPair", "DATASETS", "load_split", "read_split_file"]
