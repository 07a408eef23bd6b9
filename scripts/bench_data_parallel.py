#!/usr/bin/env python
"""Training throughput of one configuration laid out over devices and processes, side by side.

Each variant trains the same run (`captioner train`, the same preset, images, global batch and seed) for `--epochs`
epochs in child processes, taking turns round by round; the figure is the last epoch's training seconds
(`history.json`'s train_seconds: the first epoch traces and compiles). Variants: BACKEND:DEVICES[xPROCESSES], e.g.
`tensorflow:1`, `tensorflow:2` (one process, the CPU split into 2 devices), `jax:2`, `jax:1x2` (two processes of
one device each on 127.0.0.1).

    python scripts/bench_data_parallel.py --variants tensorflow:1,tensorflow:2,jax:1,jax:2,jax:1x2 --rounds 2 \\
        -- --preset flickr8k --data-dir DATA --encoder-weights W --cache-dir C --max-train-images 640
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_variant(variant: str, train_args: list[str], run: Path, epochs: int) -> dict:
    backend, layout = variant.split(":")
    devices, _, processes = layout.partition("x")
    processes = int(processes or 1)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_")}, "KERAS_BACKEND": backend}
    base = [
        sys.executable,
        "-m",
        "captioner.cli",
        "train",
        *train_args,
        "--run",
        str(run),
        "--epochs",
        str(epochs),
        "--quiet",
        "--devices",
        devices,
    ]
    if processes > 1:
        port = _port()
        commands = [
            base + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)]
            for i in range(processes)
        ]
    else:
        commands = [base]
    started = time.perf_counter()
    children = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands
    ]
    outputs = [child.communicate() for child in children]
    wall = time.perf_counter() - started
    if any(child.returncode for child in children):
        raise SystemExit(f"{variant} failed: {outputs[0][1][-1500:]}")
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    return {
        "epoch_seconds": history["train_seconds"][-1],
        "images": metrics["train_images"],
        "wall": wall,
        "precision": json.loads((run / "config.json").read_text())["model"]["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="tensorflow:1,tensorflow:2,jax:1,jax:2,jax:1x2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: the train flags every variant shares")
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for variant in variants:
                result = run_variant(
                    variant, train_args, Path(folder) / f"{variant.replace(':', '-')}-{round_}", args.epochs
                )
                results[variant].append(result)
                print(
                    f"round {round_ + 1} {variant}: {result['epoch_seconds']:.1f} s an epoch ({result['precision']}), "
                    f"wall {result['wall']:.0f} s",
                    flush=True,
                )
    base = min(r["epoch_seconds"] for r in results[variants[0]])
    print(f"\n| variant | best epoch s | images/s | vs {variants[0]} |\n|---|---|---|---|")
    for variant in variants:
        best = min(r["epoch_seconds"] for r in results[variant])
        images = results[variant][0]["images"]
        print(f"| {variant} | {best:.1f} | {images / best:.1f} | {base / best:.2f}x |")


if __name__ == "__main__":
    main()
