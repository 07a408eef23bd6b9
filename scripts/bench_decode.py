#!/usr/bin/env python
"""Decoding throughput of a run: batched graph-mode greedy / beam search against the naive loop.

The naive baseline is what captioning tutorials write: for every image, call the model once per word
(eager Keras calls on a batch of one, argmax in NumPy, stop at <end>). It is measured on a few images
and reported per caption. The first call of each batched decoder (tracing) is timed on its own.

    python scripts/bench_decode.py --run runs/demo [--images 512] [--naive-images 24]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from captioner.config import DecodeConfig
from captioner.data import load_split
from captioner.data.images import load_image
from captioner.generation.decoding import CaptionGenerator
from captioner.run import load_run


def naive_caption(run, image: np.ndarray, max_length: int) -> list[int]:
    decoder = run.model.decoder
    grid, pooled = run.model.encode(image[None])
    state, memory = decoder.initial_state(pooled, grid), decoder.memory(grid)
    token, words = run.vocab.start_id, []
    for _ in range(max_length):
        logits, state, _ = decoder.step(np.array([token], np.int32), state, memory)
        token = int(np.argmax(np.asarray(logits)[0]))
        words.append(token)
        if token == run.vocab.end_id:
            break
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--naive-images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run = load_run(args.run)
    size = run.model.encoder.image_size
    records = load_split(run.config.data.dataset, run.config.data.data_dir, "test")[: args.images]
    images = np.stack([load_image(r.image, size) for r in records])  # (images, size, size, 3)
    max_length = run.config.decode.max_length
    print(
        f"run {args.run} ({run.config.model.decoder}), {len(images)} test images of {size}x{size}, max length "
        f"{max_length}"
    )

    rates = {}
    for beam in (1, 3, 5):
        generator = CaptionGenerator(run.model, run.vocab, DecodeConfig(max_length=max_length, beam_size=beam))
        started = time.perf_counter()
        generator(images)
        first = time.perf_counter() - started
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            generator(images)
            times.append(time.perf_counter() - started)
        generator(images[:100])  # another batch size: must not trace again
        steady = statistics.median(times)
        rates[beam] = len(images) / steady
        name = "greedy" if beam == 1 else f"beam {beam}"
        print(
            f"{name:7s} first call {first:6.2f} s (tracing), steady {steady:6.3f} s/batch "
            f"= {rates[beam]:7.0f} captions/s; traces for batch sizes {len(images)}, {len(images)}, 100: "
            f"{generator.trace_count}"
        )

    naive = images[: args.naive_images]
    naive_caption(run, naive[0], max_length)  # warm-up
    started = time.perf_counter()
    tokens = [naive_caption(run, image, max_length) for image in naive]
    per_caption = (time.perf_counter() - started) / len(naive)
    reference = CaptionGenerator(run.model, run.vocab, DecodeConfig(max_length=max_length, beam_size=1))(naive).captions
    same = sum(run.vocab.decode(t) == r for t, r in zip(tokens, reference))
    print(
        f"naive   {per_caption * 1000:6.1f} ms/caption = {1 / per_caption:7.1f} captions/s "
        f"(eager, one image and one word per call; {same}/{len(naive)} captions equal to batched greedy)"
    )
    print(
        f"speed-up of batched greedy over naive: {rates[1] * per_caption:.0f}x; beam 5 over naive greedy: "
        f"{rates[5] * per_caption:.0f}x"
    )


if __name__ == "__main__":
    main()
