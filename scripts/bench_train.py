#!/usr/bin/env python
"""Training-step throughput: each image encoded once for its 5 captions, versus once per caption.

Both variants see 160 captions per step (32 images x 5 captions, or 160 image-caption pairs whose
images repeat 5 times) with the default `shapes` model, so captions per second compare directly.

    python scripts/bench_train.py --data-dir data/shapes [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from captioner.config import preset
from captioner.data import load_split
from captioner.data.arrays import caption_arrays
from captioner.data.images import load_image
from captioner.data.vocab import Vocabulary
from captioner.models.networks import build_caption_model


def measure(model, images, tokens, targets, steps: int) -> float:
    """Seconds per step after two warm-up steps (tracing)."""
    for _ in range(2):
        model.train_on_batch({"images": images, "tokens": tokens}, targets)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch({"images": images, "tokens": tokens}, targets)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/shapes")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    config = preset("shapes")
    records = load_split("shapes", args.data_dir, "train")[:32]
    vocab = Vocabulary.build(c for r in load_split("shapes", args.data_dir, "train") for c in r.captions)
    images = np.stack([load_image(r.image, 64) for r in records])  # (32, 64, 64, 3)
    tokens, targets = caption_arrays(records, vocab, 5, config.data.max_caption_length)  # (32, 5, steps)
    results = {}
    for name, batch in {
        "encode once, 5 captions per image": (images, tokens, targets),
        "encode per caption (image repeated 5x)": (
            np.repeat(images, 5, axis=0),  # (160, 64, 64, 3)
            tokens.reshape(160, 1, -1),
            targets.reshape(160, 1, -1),
        ),
    }.items():
        keras.utils.set_random_seed(0)
        model = build_caption_model(config.model, len(vocab), 64)
        model.compile(
            optimizer=keras.optimizers.Adam(config.train.learning_rate, global_clipnorm=config.train.clip_norm),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
        )
        seconds = measure(model, *batch, steps=args.steps)
        results[name] = seconds
        print(
            f"{name:42s} {seconds * 1000:7.1f} ms/step  {160 / seconds:7.0f} captions/s  {32 / seconds:6.0f} distinct "
            f"images/s"
        )
    once, repeated = results.values()
    print(f"speed-up of encoding once: {repeated / once:.2f}x")


if __name__ == "__main__":
    main()
