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

import tensorflow as tf
from bench_precision import compiled_caption_model, train_row_inputs  # the same rows, beside this script
from tensorflow.tsl.profiler.protobuf import xplane_pb2


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
        config, vocab_size, inputs, targets = train_row_inputs(name)
        model = compiled_caption_model(config, vocab_size, "float32")
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
        print(
            f"\n{name}: {wall * 1000:.0f} ms/step wall (traced); op time summed over threads "
            f"{summed / args.steps / 1000:.0f} ms/step"
        )
        print("| op type | ms/step | share of op time |\n|---|---|---|")
        for op, micros in totals.most_common(args.top):
            print(f"| {op} | {micros / args.steps / 1000:.1f} | {micros / summed:.0%} |")
        rest = summed - sum(m for _, m in totals.most_common(args.top))
        print(f"| (all other op types) | {rest / args.steps / 1000:.1f} | {rest / summed:.0%} |", flush=True)


if __name__ == "__main__":
    main()
