"""Cold start-up of `captioner caption` and `captioner ask`: wall time and peak memory of whole processes.

Each command runs once to warm the page cache, then `--repeats` times; the best and the median are printed (and
written as JSON with --out). Run it on a quiet machine and name the CPU beside the figures (BENCHMARKS.md).

    python scripts/bench_startup.py PHOTO [--run RUN] [--vqa-run RUN] [--repeats 5] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(command: list[str], repeats: int) -> dict:
    """Wall seconds and peak resident MiB of `repeats` cold runs of `command` (after one warm-up run)."""
    walls, peaks = [], []
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        out = process.stdout.read().decode().strip()
        err = process.stderr.read().decode().strip()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(command)} failed: {err.splitlines()[-1] if err else status}")
        if attempt:  # the first run warms the page cache
            walls.append(wall)
            peaks.append(usage.ru_maxrss / 1024)
    return {
        "command": " ".join(command),
        "output": out.splitlines()[0] if out else "",
        "best_s": min(walls),
        "median_s": statistics.median(walls),
        "peak_mib": max(peaks),
        "runs": len(walls),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo")
    parser.add_argument(
        "--run", default=None, help="also time a run directory on the Keras path (the way before a model shipped)"
    )
    parser.add_argument("--vqa-run", default=None, help="also time a VQA run directory on the Keras path")
    parser.add_argument("--question", default="is there a person in the picture ?")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("captioner"))
    commands = {
        "caption, shipped model, fast path": [exe, "caption", args.photo],
        "caption, shipped model, Keras path": [exe, "caption", "--engine", "keras", args.photo],
        "ask, shipped model, fast path": [exe, "ask", args.photo, args.question],
        "ask, shipped model, Keras path": [exe, "ask", "--engine", "keras", args.photo, args.question],
    }
    if args.run:
        commands["caption --run RUN (Keras path)"] = [exe, "caption", "--run", args.run, args.photo]
    if args.vqa_run:
        commands["ask --run RUN (Keras path)"] = [exe, "ask", "--run", args.vqa_run, args.photo, args.question]
    results = {}
    for name, command in commands.items():
        results[name] = measure(command, args.repeats)
        r = results[name]
        print(
            f"{name:40s} best {r['best_s']:6.2f} s  median {r['median_s']:6.2f} s  peak {r['peak_mib']:7.0f} MiB  | "
            f"{r['output']}",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
