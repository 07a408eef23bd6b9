#!/usr/bin/env python
"""Is the input pipeline the bottleneck? One pass over a training split's `tf.data` batches, no model.

Two pipelines, as `captioner train` builds them: (1) `shapes` images (decoded by Pillow in parallel, cached after
the first pass, shuffled, batched) - the first and the second pass are timed; (2) a Flickr8k feature cache
(`captioner features` output) read for the official train split, either gathered per batch from the memory-mapped
shards (`FeatureCache.rows`, what training does) or from one in-memory copy (`FeatureCache.load`), alternating,
each pass after the page cache is warm. Compare with a training step (bench_precision.py): the pipeline is not the
bottleneck when a batch takes a small fraction of a step.

    python scripts/bench_input_pass.py --shapes data/shapes --flickr8k ../shared/datasets/flickr8k \\
        --cache-dir /tmp/fm/cache --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

from captioner.config import ModelConfig
from captioner.data import load_split
from captioner.data.preprocessing import caption_dataset, feature_caption_dataset
from captioner.data.vocab import Vocabulary
from captioner.models.features import FeatureCache
from captioner.models.networks import build_image_encoder


def timed_pass(dataset) -> tuple[float, int]:
    started, batches = time.perf_counter(), 0
    for _ in dataset:
        batches += 1
    return time.perf_counter() - started, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, help="the shapes dataset folder")
    parser.add_argument("--flickr8k", default=None, help="the Flickr8k folder (with --cache-dir and --weights)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--weights", default=None, help="the MobileNetV2 weights file the cache was computed with")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    records = load_split("shapes", args.shapes, "train")
    vocab = Vocabulary.build(c for r in records for c in r.captions)
    dataset = caption_dataset(
        records, vocab, 64, 5, 12, 32, shuffle=True, cache=True, on_error=lambda path, message: None
    )
    for label in ("first pass (decoding, filling the cache)", "second pass (from the cache)"):
        seconds, batches = timed_pass(dataset)
        print(
            f"shapes images, {label}: {seconds:.2f} s for {batches} batches, {1000 * seconds / batches:.1f} ms/batch",
            flush=True,
        )

    if args.flickr8k:
        keras.utils.set_random_seed(0)
        encoder = build_image_encoder(
            ModelConfig(encoder="mobilenet_v2", encoder_weights=args.weights, encoder_trainable=False), 224
        )
        cache = FeatureCache(args.cache_dir, encoder)
        records = [r for r in load_split("flickr8k", args.flickr8k, "train") if os.path.exists(r.image)]
        vocab = Vocabulary.build((c for r in records for c in r.captions), min_count=5)
        paths = [r.image for r in records]
        sources = {
            "FeatureCache.rows (per batch from the shards)": lambda: cache.rows(paths),
            "FeatureCache.load (all in memory first)": lambda: cache.load(paths),
        }
        for _ in range(args.repeats):
            for label, source in sources.items():
                started = time.perf_counter()
                features = source()
                prepared = time.perf_counter() - started
                seconds, batches = timed_pass(
                    feature_caption_dataset(features, records, vocab, 5, 18, 32, shuffle=True)
                )
                print(
                    f"flickr8k cached features, {label}: {prepared:.2f} s to prepare, {seconds:.2f} s for {batches} "
                    f"batches, "
                    f"{1000 * seconds / batches:.1f} ms/batch",
                    flush=True,
                )


if __name__ == "__main__":
    main()
