#!/usr/bin/env python
"""The TFLite (LiteRT) export against CaptionGenerator: `captioner export --format tflite` (an encoder and ONE
decoder step, the usual way around the converter's trouble with LSTM loops), greedy captions from the
exported files (`captioner.serving.export.tflite_greedy`, one image at a time) compared with CaptionGenerator's greedy
captions of the same images. Prints sizes, conversion time, identical captions and ms per image.

    python scripts/try_tflite.py --run runs/demo --images 'data/shapes/images/test_*.png' [--count 50] [--work
    /tmp/tflite]
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from captioner.config import DecodeConfig
from captioner.data.images import load_image
from captioner.generation.decoding import CaptionGenerator
from captioner.run import load_run
from captioner.serving.export import export_tflite, tflite_greedy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--work", default="/tmp/tflite-export")
    args = parser.parse_args()
    run = load_run(args.run)
    started = time.perf_counter()
    folder = export_tflite(run, args.work)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(Path(folder).glob("*.tflite")))
    print(f"converted in {time.perf_counter() - started:.1f}s: {sizes}")
    paths = sorted(glob.glob(args.images))[: args.count]
    images = np.stack([load_image(p, run.model.encoder.image_size) for p in paths])
    reference = CaptionGenerator(
        run.model, run.vocab, DecodeConfig(max_length=run.config.decode.max_length, beam_size=1)
    )(images).captions
    started = time.perf_counter()
    captions = tflite_greedy(folder, images)
    seconds = time.perf_counter() - started
    same = sum(a == b for a, b in zip(captions, reference))
    print(
        f"{same} of {len(paths)} captions identical to CaptionGenerator's greedy ones; "
        f"TFLite greedy loop {1000 * seconds / len(paths):.1f} ms per image"
    )


if __name__ == "__main__":
    main()
