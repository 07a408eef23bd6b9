#!/usr/bin/env python
"""Time per training epoch of the `flickr8k` preset on cached features of the right shape.

No Flickr8k images are needed: the real caption and split files (e.g. ../shared/datasets/flickr8k_text)
give the real vocabulary, caption lengths and split sizes; every image is a small placeholder file with
distinct bytes, and the feature cache is filled with random float16 grids of the backbone's shape
(MobileNetV2 at 224: 7x7x1280) under the key `train` computes. `train` then runs exactly as it would on the
real dataset after `captioner features`: it finds every image cached and reads features, not pixels.

    python scripts/bench_cached_epoch.py --text ../shared/datasets/flickr8k_text --work /tmp/f8k-bench [--epochs 2]
    [--decoder attention]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from captioner.config import apply_overrides, preset
from captioner.models.encoder import default_image_size
from captioner.models.features import FeatureCache
from captioner.models.networks import build_image_encoder
from captioner.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True, help="folder with Flickr8k.token.txt and the split files")
    parser.add_argument("--work", required=True, help="scratch folder (placeholders, cache, run)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--decoder", default="attention", choices=["attention", "show-tell"])
    parser.add_argument("--max-train-images", type=int, default=None)
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(args.text, work / "data")
    names = sorted({n for f in (work / "data").glob("Flickr_8k.*Images.txt") for n in f.read_text().split()})
    (work / "data" / "Images").mkdir()
    for name in names:
        (work / "data" / "Images" / name).write_bytes(name.encode())  # distinct content, distinct cache key

    config = preset("flickr8k")
    overrides = {
        "data.data_dir": str(work / "data"),
        "model.encoder_weights": "none",
        "model.decoder": args.decoder,
        "train.epochs": str(args.epochs),
        "train.patience": str(args.epochs),
        "data.feature_cache_dir": str(work / "cache"),
    }
    if args.max_train_images:
        overrides["train.max_train_images"] = str(args.max_train_images)
    apply_overrides(config, overrides)
    keras.utils.set_random_seed(config.train.seed)  # as train does, so the encoder (and its cache key) is the same
    encoder = build_image_encoder(config.model, default_image_size(config.model.encoder, 224))
    cache = FeatureCache(work / "cache", encoder)
    paths = [str(work / "data" / "Images" / n) for n in names]
    digests = cache.digests(paths)
    rng = np.random.default_rng(0)
    # ReLU6 outputs of MobileNetV2's last block are non-negative and mostly small: a plausible stand-in.
    # Drawn in chunks straight to float16, so the script's own peak memory stays out of the training's.
    features = np.empty((len(paths), *cache.shape), np.float16)
    for start in range(0, len(paths), 256):
        chunk = rng.gamma(0.5, 0.6, (min(256, len(paths) - start), *cache.shape)).astype(np.float32)
        features[start : start + len(chunk)] = np.clip(chunk, 0, 6)
    cache.store(digests, features)
    del features
    metrics = train(config, work / "run", verbose=2)["train"]
    print(
        json.dumps(
            {
                k: metrics[k]
                for k in (
                    "train_images",
                    "val_images",
                    "vocab_size",
                    "features_computed",
                    "first_epoch_seconds",
                    "steady_epoch_seconds",
                    "images_per_second",
                    "captions_per_second",
                    "peak_rss_mib",
                    "unknown_word_rate_val",
                )
            },
            indent=2,
        )
    )
    print(
        "max caption length (95th percentile):",
        json.loads((work / "run" / "config.json").read_text())["data"]["max_caption_length"],
    )


if __name__ == "__main__":
    main()
