#!/usr/bin/env python
"""First (tracing) and steady training-step time of Show-Attend-Tell: `shapes` and the Flickr8k cached-feature preset.

To compare two versions side by side, run it against each checkout in turn:

    PYTHONPATH=/path/to/checkout python scripts/bench_attention_step.py LABEL
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

from captioner.config import preset
from captioner.models.networks import build_caption_model


def main() -> None:
    rng = np.random.default_rng(0)
    cases = {}
    sat = preset("shapes")
    sat.model.decoder = "attention"
    tokens = rng.integers(4, 60, (32, 5, 13)).astype("int32")
    cases["shapes SAT"] = (
        sat,
        60,
        {"images": rng.integers(0, 255, (32, 64, 64, 3)).astype("uint8"), "tokens": tokens},
        tokens,
    )
    f8k = preset("flickr8k")
    f8k.model.encoder_weights, f8k.data.image_size = None, 224
    t2 = rng.integers(4, 2500, (32, 5, 21)).astype("int32")
    cases["flickr8k SAT cached"] = (
        f8k,
        2573,
        {"features": rng.standard_normal((32, 49, 1280)).astype("float16"), "tokens": t2},
        t2,
    )
    for name, (config, vocab, inputs, targets) in cases.items():
        keras.utils.set_random_seed(0)
        model = build_caption_model(config.model, vocab, config.data.image_size)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
        )
        t = time.perf_counter()
        model.train_on_batch(inputs, targets)
        first = time.perf_counter() - t
        model.train_on_batch(inputs, targets)
        t = time.perf_counter()
        for _ in range(6):
            model.train_on_batch(inputs, targets)
        steady = (time.perf_counter() - t) / 6
        print(
            f"{(sys.argv[1:] or [''])[0]:12s} {name:22s} first step {first:5.1f} s, steady {steady * 1000:6.0f} ms/step"
        )


if __name__ == "__main__":
    main()
