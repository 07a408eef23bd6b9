"""A picture of generated captions beside human ones: photos from `captioner evaluate --out FILE`, each with
its generated caption (bold) and two of its references.

    python scripts/caption_grid.py --captions runs/f8k/test_captions.json --out docs/flickr8k_test_captions.png [--count 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random

from captioner.data.images import load_image
from captioner.viz import caption_grid_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", required=True, help="the JSON list `captioner evaluate --out` writes")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--count", type=int, default=10, help="photos (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="which photos: a seeded random sample (default 0)")
    args = parser.parse_args()
    entries = json.loads(open(args.captions, encoding="utf-8").read())
    chosen = random.Random(args.seed).sample(entries, min(args.count, len(entries)))
    images = [load_image(e["image"], 224) for e in chosen]
    titles = [[f"model: {e['caption']}", *(f"human: {r.strip()}" for r in e["references"][:2])] for e in chosen]
    caption_grid_figure(images, titles, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
