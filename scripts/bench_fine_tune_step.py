#!/usr/bin/env python
"""Seconds per training step of the `flickr8k` preset (Show-Attend-Tell) on cached inputs, frozen backbone vs the top
N blocks fine-tuned (`--fine-tune-blocks N`), measured side by side.

Each setting trains on random cached rows of its own shape (the final grid when frozen, the activations below the
top N blocks otherwise) and real-length caption batches (32 images x 5 captions of 20 tokens, the preset's step);
the settings take turns in rounds of `--steps` steps, so a machine whose speed drifts (another job, thermal) costs
them alike. The backbone's weights are the ImageNet ones (random weights give ~1e-10 activations, which some CPUs
compute at denormal speed).

    python scripts/bench_fine_tune_step.py --encoder efficientnet_lite2 --blocks 0,1,2,3 [--rounds 3 --steps 10]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from interleaved import median_step_seconds

from captioner.config import preset
from captioner.models.encoder import default_image_size
from captioner.models.networks import build_caption_model
from captioner.precision import resolve_precision

VOCAB, LENGTH, CAPTIONS = 2539, 20, 5  # the Flickr8k preset's vocabulary, padded caption length and captions per image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite2")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--blocks", default="0,1,2,3", help="comma-separated values of --fine-tune-blocks")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting per round")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    config = preset("flickr8k")
    batch = config.train.batch_size
    precision = resolve_precision(args.precision, "train_cached")
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, VOCAB, size=(batch, CAPTIONS, LENGTH + 1)).astype("int32")
    inputs, targets = tokens[:, :, :-1], tokens[:, :, 1:]
    models, data = {}, {}
    for n in [int(b) for b in args.blocks.split(",")]:
        model_config = config.model
        model_config.encoder, model_config.encoder_weights, model_config.fine_tune_blocks = (
            args.encoder,
            args.weights,
            n,
        )
        model_config.encoder_trainable = False
        model = build_caption_model(model_config, VOCAB, default_image_size(args.encoder, 224), precision)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4, global_clipnorm=config.train.clip_norm),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
        )
        rows = np.abs(rng.normal(size=(batch, *model.encoder.cached_shape))).astype("float16")  # post-ReLU-like values
        data[n] = ({"features": rows, "tokens": inputs}, targets)
        model.train_on_batch(*data[n])  # compile and warm up
        models[n] = model
    medians = median_step_seconds(
        {n: (lambda m=model, d=data[n]: m.train_on_batch(*d)) for n, model in models.items()}, args.rounds, args.steps
    )
    base = medians[min(models)]
    print(
        f"{args.encoder}, precision {precision}, batch {batch} images x {CAPTIONS} captions, "
        f"{args.rounds} rounds x {args.steps} steps per setting"
    )
    for n, median in medians.items():
        trained = sum(int(np.prod(w.shape)) for w in models[n].encoder.trainable_weights)
        print(
            f"fine-tune-blocks {n}: cached rows {models[n].encoder.cached_shape}, {trained:,} backbone weights "
            f"trained, "
            f"{median * 1000:.0f} ms/step (x{median / base:.2f}), {188 * median:.0f} s per 188-step epoch"
        )


if __name__ == "__main__":
    main()
