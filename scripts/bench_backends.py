#!/usr/bin/env python
"""TensorFlow against JAX, side by side on this machine: step times, decoding speed and the BLEU-4 of one recipe.

For each backend, in its own process (Keras reads KERAS_BACKEND once, at import):
1. `scripts/bench_precision.py --precisions float32 --skip features`: a training step of the `shapes`
   Show-and-Tell and Show-Attend-Tell presets (32 images x 5 captions) and of the `flickr8k` Show-Attend-Tell
   preset on cached 7x7x1280 features, then greedy and beam-5 decoding at batch 512 (random weights);
2. the same recipe trained end to end with the CLI (`captioner train` on the shapes dataset in --data-dir,
   --epochs epochs, seed 0), then `captioner evaluate` on its test split: training images/s and captions/s
   (steady epochs, from metrics.json) and test BLEU-4.

    python scripts/bench_backends.py --data-dir data/shapes --work /tmp/bench-backends [--epochs 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax")


def run(command: list[str], backend: str) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed under {backend}:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a shapes dataset (captioner data shapes --out DIR)")
    parser.add_argument("--work", required=True, help="scratch folder for the two runs")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-steps", action="store_true", help="only the end-to-end recipe")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default tensorflow,jax)")
    args = parser.parse_args()
    captioner = str(Path(sys.executable).with_name("captioner"))
    rows: dict[str, list[str]] = {}
    for backend in args.backends.split(","):
        if not args.skip_steps:
            out = run(
                [
                    sys.executable,
                    "scripts/bench_precision.py",
                    "--precisions",
                    "float32",
                    "--skip",
                    "features",
                    "--steps",
                    str(args.steps),
                ],
                backend,
            )
            rows[backend] = [line for line in out.splitlines() if line.startswith("| ") and "float32" in line]
            print(f"{backend}:\n" + "\n".join(out.splitlines()[:1] + rows[backend]), flush=True)
        run_dir = Path(args.work) / f"run-{backend}"
        started = time.perf_counter()
        run(
            [
                captioner,
                "train",
                "--data-dir",
                args.data_dir,
                "--run",
                str(run_dir),
                "--epochs",
                str(args.epochs),
                "--restart",
                "--quiet",
            ],
            backend,
        )
        wall = time.perf_counter() - started
        result = json.loads(run([captioner, "evaluate", "--run", str(run_dir), "--split", "test", "--json"], backend))
        train = json.loads((run_dir / "metrics.json").read_text())["train"]
        print(
            f"| {backend} | {args.epochs} | {wall:.0f} | {train['images_per_second']:.0f} | "
            f"{train['captions_per_second']:.0f} "
            f"| {result['bleu4']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
