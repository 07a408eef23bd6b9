#!/usr/bin/env python
"""Seconds per training step of the `flickr8k` preset for decoder variants (cell x layers), side by side.

Every variant trains on the same random cached grids (MobileNetV2's 7x7x1280 by default) and the same caption
batches (32 images x 5 captions of 20 tokens, the preset's step); the variants take turns in rounds of `--steps`
steps, so a machine whose speed drifts (another job) costs them alike. Only the decoder differs.

    python scripts/bench_decoder_step.py --variants lstm:1,gru:1,lstm:2,gru:2,lstm:1:hard [--decoder attention]
    [--rounds 3 --steps 8]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from interleaved import median_step_seconds

from captioner.config import preset
from captioner.models.networks import build_caption_model
from captioner.precision import resolve_precision

VOCAB, LENGTH, CAPTIONS = 2539, 20, 5  # the Flickr8k preset's vocabulary, padded caption length and captions per image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        default="lstm:1,gru:1,lstm:2,gru:2",
        help="comma-separated CELL:LAYERS[:hard] (hard: hard attention)",
    )
    parser.add_argument("--decoder", default="attention", choices=["attention", "show-tell"])
    parser.add_argument(
        "--grid", default="49,1280", help="cached grid positions,channels (default MobileNetV2's 49,1280)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant per round")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    config = preset("flickr8k")
    batch = config.train.batch_size
    precision = resolve_precision(args.precision, "train_cached")
    positions, channels = (int(x) for x in args.grid.split(","))
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, VOCAB, size=(batch, CAPTIONS, LENGTH + 1)).astype("int32")
    data = (
        {
            "features": np.abs(rng.normal(size=(batch, positions, channels))).astype("float16"),
            "tokens": tokens[:, :, :-1],
        },
        tokens[:, :, 1:],
    )
    models = {}
    for variant in args.variants.split(","):
        cell, layers, *attention = variant.split(":")  # CELL:LAYERS or CELL:LAYERS:hard
        model_config = config.model
        model_config.attention = attention[0] if attention else "soft"
        model_config.encoder, model_config.encoder_weights, model_config.encoder_trainable = "mobilenet_v2", None, False
        model_config.decoder, model_config.cell, model_config.num_layers = args.decoder, cell, int(layers)
        keras.utils.set_random_seed(0)
        model = build_caption_model(model_config, VOCAB, 224, precision)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4, global_clipnorm=config.train.clip_norm),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
        )
        model.train_on_batch(*data)  # compile and warm up
        models[variant] = model
    medians = median_step_seconds(
        {v: (lambda m=model: m.train_on_batch(*data)) for v, model in models.items()}, args.rounds, args.steps
    )
    base = medians[next(iter(models))]
    print(
        f"{args.decoder}, precision {precision}, batch {batch} images x {CAPTIONS} captions, grid "
        f"{positions}x{channels}, "
        f"{args.rounds} rounds x {args.steps} steps per variant"
    )
    for variant, median in medians.items():
        weights = sum(int(np.prod(w.shape)) for w in models[variant].decoder.trainable_weights)
        print(
            f"{variant}: {weights:,} decoder weights, {median * 1000:.0f} ms/step (x{median / base:.2f}), "
            f"{188 * median:.0f} s per 188-step epoch"
        )


if __name__ == "__main__":
    main()
