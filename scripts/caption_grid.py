"""A picture of generated captions beside human ones: photos from `captioner evaluate --out FILE`, each with
its generated caption (bold) and two of its references; with several `--captions` files (the same split), each
model's caption in turn, named by `--labels` (e.g. the same photos before and after self-critical training).

    python scripts/caption_grid.py --captions runs/f8k/test_captions.json --out docs/flickr8k_test_captions.png
    [--count 10] [--seed 0] python scripts/caption_grid.py --captions xe.json --captions scst.json --labels
    "cross-entropy,SCST" --count 6
    --out docs/f8k_scst.png
"""

from __future__ import annotations

import argparse
import json
import random

from captioner.data.images import load_image
from captioner.viz import caption_grid_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--captions",
        required=True,
        action="append",
        help="the JSON list `captioner evaluate --out` writes (repeatable)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="comma-separated names of the --captions files (default: model, or model 1, 2, ...)",
    )
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--count", type=int, default=10, help="photos (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="which photos: a seeded random sample (default 0)")
    args = parser.parse_args()
    runs = [{e["image"]: e for e in json.loads(open(path, encoding="utf-8").read())} for path in args.captions]
    labels = (
        args.labels.split(",")
        if args.labels
        else (["model"] if len(runs) == 1 else [f"model {i + 1}" for i in range(len(runs))])
    )
    if len(labels) != len(runs):
        parser.error(f"{len(runs)} --captions files but {len(labels)} --labels")
    shared = [image for image in runs[0] if all(image in run for run in runs[1:])]
    chosen = random.Random(args.seed).sample(shared, min(args.count, len(shared)))
    images = [load_image(image, 224) for image in chosen]
    titles = [
        [
            *(f"{label}: {run[image]['caption']}" for label, run in zip(labels, runs)),
            *(f"human: {r.strip()}" for r in runs[0][image]["references"][:2]),
        ]
        for image in chosen
    ]
    caption_grid_figure(images, titles, args.out, columns=min(args.count, 5 if len(runs) == 1 else 3))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
