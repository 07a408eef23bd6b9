#!/usr/bin/env python
"""Feature-extraction throughput of the frozen backbones (what `captioner features` runs once per image).

Random weights (`weights=None`): the speed does not depend on the weight values, and nothing is downloaded.
Random 0-255 images of the backbone's input size, batches of 32, `training=False`, as `FeatureCache.extract`.
The first batch (tracing, allocation) is timed on its own; the rest are the steady state.

    python scripts/bench_features.py [--encoders mobilenet_v2,efficientnet_b0] [--batches 6] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from captioner.models.encoder import ImageEncoder

FLICKR8K_IMAGES = 8091  # images with captions in Flickr8k.token.txt
FLICKR30K_IMAGES = 31783
COCO_IMAGES = 123287  # train2014 + val2014


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="mobilenet_v2,efficientnet_b0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=6, help="timed batches after the first")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3), dtype=np.uint8)
    print(
        f"| encoder | input | grid | first batch (s) | images/s | Flickr8k ({FLICKR8K_IMAGES:,}) | Flickr30k | COCO "
        f"2014 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.encoders.split(","):
        encoder = ImageEncoder(name, image_size=args.image_size, weights=None, encoder_trainable=False)
        started = time.perf_counter()
        np.asarray(encoder(images, training=False)[0])
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(args.batches):
            grid, _ = encoder(images, training=False)
            np.asarray(grid).astype(np.float16)
        rate = args.batches * args.batch_size / (time.perf_counter() - started)
        side = encoder.grid_shape
        projected = [f"{n / rate / 60:.0f} min" for n in (FLICKR8K_IMAGES, FLICKR30K_IMAGES, COCO_IMAGES)]
        print(
            f"| {name} | {args.image_size}x{args.image_size} | {side[0]}x{side[1]}x{side[2]} | {first:.1f} | "
            f"{rate:.1f} | " + " | ".join(projected) + " |"
        )


if __name__ == "__main__":
    main()
