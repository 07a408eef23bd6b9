#!/usr/bin/env python
"""Where a training step's time goes: a per-op profile of a few steps, by TensorFlow's own profiler.

Traces `--steps` training steps (after two untraced warm-ups) of the same rows as bench_precision.py (random
weights and batches of the real shapes: `shapes` Show-and-Tell / Show-Attend-Tell, 32 images x 5 captions;
`flickr8k` Show-Attend-Tell on 32 cached 7x7x1280 grids), then reads the trace (an XPlane protobuf, parsed with
the copy of its schema that TensorFlow ships) and sums the time of every TensorFlow op by its type (MatMul,
Conv2D, Conv2DBackpropFilter, ...). Op times are per thread; with several threads their sum can exceed the
wall time, so the table gives each type's share of the summed op time, beside the wall time per step.

    python scripts/profile_step.py [--rows shapes-nic,shapes-sat,flickr8k] [--steps 5] [--top 12]
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from captioner.config import preset
from captioner.models import build_caption_model


def row_inputs(name: str):
    """(config, vocab size, inputs, targets) of one benchmark row."""
    rng = np.random.default_rng(0)
    if name == "flickr8k":
        config = preset("flickr8k")
        config.model.encoder_weights = None
        config.data.image_size = 224
        tokens = rng.integers(4, 2500, (32, 5, 21)).astype("int32")
        return config, 2573, {"features": rng.standard_normal((32, 49, 1280)).astype("float16"), "tokens": tokens}, tokens
    config = preset("shapes")
    config.model.decoder = "attention" if name == "shapes-sat" else "lstm"
    tokens = rng.integers(4, 60, (32, 5, 13)).astype("int32")
    return config, 60, {"images": rng.integers(0, 255, (32, 64, 64, 3)).astype("uint8"), "tokens": tokens}, tokens


def op_times(trace_dir: Path) -> collections.Counter:
    """Microseconds per TensorFlow op type, summed over every thread of the host plane."""
    totals: collections.Counter = collections.Counter()
    for path in trace_dir.rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {key: meta.name for key, meta in plane.event_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    name = names.get(event.metadata_id, "")
                    # Op events are "scope/op_name:OpType"; the framework's own ("ExecutorState::Process",
                    # "EagerLocalExecute: __inference_...", "KernelAndDeviceFunc::Run") enclose them: skipped.
                    if ":" in name and "::" not in name and " " not in name:
                        totals[name.rsplit(":", 1)[1]] += event.duration_ps / 1e6
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="shapes-nic,shapes-sat,flickr8k")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    for name in args.rows.split(","):
        config, vocab_size, inputs, targets = row_inputs(name)
        keras.utils.set_random_seed(0)
        model = build_caption_model(config.model, vocab_size, config.data.image_size)
        model.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=5.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
        for _ in range(2):
            model.train_on_batch(inputs, targets)
        with tempfile.TemporaryDirectory() as trace_dir:
            tf.profiler.experimental.start(trace_dir)
            started = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(inputs, targets)
            wall = (time.perf_counter() - started) / args.steps
            tf.profiler.experimental.stop()
            totals = op_times(Path(trace_dir))
        summed = sum(totals.values())
        print(f"\n{name}: {wall * 1000:.0f} ms/step wall (traced); op time summed over threads {summed / args.steps / 1000:.0f} ms/step")
        print("| op type | ms/step | share of op time |\n|---|---|---|")
        for op, micros in totals.most_common(args.top):
            print(f"| {op} | {micros / args.steps / 1000:.1f} | {micros / summed:.0%} |")
        rest = summed - sum(m for _, m in totals.most_common(args.top))
        print(f"| (all other op types) | {rest / args.steps / 1000:.1f} | {rest / summed:.0%} |", flush=True)


if __name__ == "__main__":
    main()
