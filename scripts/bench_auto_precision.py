#!/usr/bin/env python
"""What `--precision auto` is chosen from: each kind of work timed as users run it, per precision, side by side.

Every row is a `captioner` command in a fresh process (the CLI a user types: input pipeline, validation,
checkpoints included), run once per precision one after the other, and reports the command's own steady rate:

- train_cnn: `captioner train` on `shapes` (the small CNN trained from pixels), Show-and-Tell and
  Show-Attend-Tell: seconds per epoch after the first (metrics.json `steady_epoch_seconds`);
- train_cached: `captioner train --preset flickr8k` on cached MobileNetV2 features (the decoder alone);
- features: `captioner features` over Flickr8k's test photos into a fresh cache;
- decode: `captioner evaluate` of a `shapes` run on its test split, greedy and beam 3 (captions per second).

    python scripts/bench_auto_precision.py --shapes data/shapes --flickr8k ../shared/datasets/flickr8k \\
        --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5 --cache runs/features \\
        --work /tmp/bench-auto [--precisions float32,mixed_bfloat16] [--only train_cnn,decode]

`--cache` must hold the float32 features of the Flickr8k train and val photos (`captioner features`); the
cached-training rows read them whatever the decoder's precision (data.feature_precision=float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

CAPTIONER = [sys.executable, "-m", "captioner.cli"]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text]
    return f"{name} ({', '.join(flags)})"


def run(command: list[str]) -> float:
    """Wall seconds of a command; its output is kept only when it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CAPTIONER_AUTO_PRECISION": ""})
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def train_row(name: str, args: list[str], run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    wall = run([*CAPTIONER, "train", "--run", str(run_dir), "--quiet", *args])
    stats = json.loads((run_dir / "metrics.json").read_text())["train"]
    batch = json.loads((run_dir / "config.json").read_text())["train"]["batch_size"]
    steps = -(-stats["train_images"] // batch)
    return {
        "row": name,
        "steady s/epoch": stats["steady_epoch_seconds"],
        "first s/epoch": stats["first_epoch_seconds"],
        "ms/step": 1000 * stats["steady_epoch_seconds"] / steps,
        "wall s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, help="a `captioner data shapes` folder")
    parser.add_argument("--flickr8k", default=None, help="Flickr8k folder (the train_cached and features rows)")
    parser.add_argument("--weights", default=None, help="MobileNetV2 no-top weights file")
    parser.add_argument("--cache", default=None, help="feature cache holding Flickr8k's float32 MobileNetV2 features")
    parser.add_argument("--work", required=True, help="scratch folder (runs, caches)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--only", default="train_cnn,train_cached,features,decode")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training row (the first is not counted)")
    parser.add_argument("--train-images", type=int, default=2000, help="shapes training images per training row")
    parser.add_argument(
        "--cached-images", type=int, default=1500, help="Flickr8k training photos per cached-training row"
    )
    args = parser.parse_args()
    work, only = Path(args.work), set(args.only.split(","))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {cpu_model()}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    print(
        "| kind of work | row | precision | steady | ms/step or items/s | wall s |\n|---|---|---|---|---|---|",
        flush=True,
    )
    shapes = [
        "--data-dir",
        args.shapes,
        "--epochs",
        str(args.epochs),
        "--max-train-images",
        str(args.train_images),
        "--set",
        "train.max_val_images=500",
        "--set",
        f"train.patience={args.epochs}",
    ]
    decode_run = work / "decode-run"
    if (
        "decode" in only and not (decode_run / "model.keras").exists()
    ):  # a real model to decode with (float32, 3 epochs)
        run([*CAPTIONER, "train", "--run", str(decode_run), "--quiet", "--precision", "float32", *shapes])
    for precision in args.precisions.split(","):
        rows = []
        if "train_cnn" in only:
            for decoder in ("show-tell", "attention"):
                rows.append(
                    (
                        "train_cnn",
                        train_row(
                            f"shapes {decoder}, {args.train_images} images",
                            [*shapes, "--decoder", decoder, "--precision", precision],
                            work / f"cnn-{decoder}-{precision}",
                        ),
                    )
                )
        if "train_cached" in only and args.flickr8k and args.cache:
            rows.append(
                (
                    "train_cached",
                    train_row(
                        f"flickr8k Show-Attend-Tell on cached features, {args.cached_images} photos",
                        [
                            "--preset",
                            "flickr8k",
                            "--data-dir",
                            args.flickr8k,
                            "--cache-dir",
                            args.cache,
                            "--encoder-weights",
                            args.weights,
                            "--epochs",
                            str(args.epochs),
                            "--max-train-images",
                            str(args.cached_images),
                            "--set",
                            "train.max_val_images=300",
                            "--set",
                            "data.feature_precision=float32",
                            "--precision",
                            precision,
                        ],
                        work / f"cached-{precision}",
                    ),
                )
            )
        if "features" in only and args.flickr8k:
            cache = work / f"features-{precision}"
            shutil.rmtree(cache, ignore_errors=True)
            wall = run(
                [
                    *CAPTIONER,
                    "features",
                    "--dataset",
                    "flickr8k",
                    "--data-dir",
                    args.flickr8k,
                    "--encoder",
                    "mobilenet_v2",
                    "--encoder-weights",
                    args.weights,
                    "--splits",
                    "test",
                    "--cache-dir",
                    str(cache),
                    "--precision",
                    precision,
                ]
            )
            rows.append(
                (
                    "features",
                    {
                        "row": "MobileNetV2 features, 1,000 Flickr8k test photos",
                        "images/s": 1000 / wall,
                        "wall s": wall,
                    },
                )
            )
        if "decode" in only:
            for beam in (1, 3):
                wall = run(
                    [
                        *CAPTIONER,
                        "evaluate",
                        "--run",
                        str(decode_run),
                        "--split",
                        "test",
                        "--beam-size",
                        str(beam),
                        "--precision",
                        precision,
                    ]
                )
                rows.append(
                    (
                        "decode",
                        {
                            "row": f"evaluate shapes test (1,000 images), {'greedy' if beam == 1 else 'beam 3'}",
                            "images/s": 1000 / wall,
                            "wall s": wall,
                        },
                    )
                )
        for work_kind, row in rows:
            steady = f"{row['steady s/epoch']:.1f} s/epoch" if "steady s/epoch" in row else "-"
            rate = (
                f"{row['ms/step']:.0f} ms/step"
                if "ms/step" in row
                else f"{row['images/s']:.1f} images/s (whole command)"
            )
            print(f"| {work_kind} | {row['row']} | {precision} | {steady} | {rate} | {row['wall s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
