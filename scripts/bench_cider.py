"""CIDEr-D scoring cost in a self-critical step on Flickr8k: building the scorer once from the training references,
then scoring one step's captions (32 images x 5 samples + 32 greedy) with `CiderD` and with pycocoevalcap's `Cider`
(which takes its document frequencies from the references it is given, so it is only given the batch's here).

    python scripts/bench_cider.py --data-dir ../shared/datasets/flickr8k
"""

import argparse
import time

import numpy as np

from captioner.cider import CiderD
from captioner.data import Skipped, load_split
from captioner.data.vocab import Vocabulary
from captioner.scst import reference_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    records = load_split("flickr8k", args.data_dir, "train", Skipped())
    vocab = Vocabulary.build((c for r in records for c in r.captions), min_count=5)
    started = time.perf_counter()
    references = reference_ids([r.captions for r in records], vocab)
    scorer = CiderD([[[*c, vocab.end_id] for c in group] for group in references])
    built = time.perf_counter() - started
    rng = np.random.default_rng(0)
    times, coco_times = [], []
    for _ in range(args.repeats):
        images = rng.choice(len(records), args.images, replace=False)
        # Stand-ins for sampled captions: other images' references, shuffled word order half of the time.
        hypotheses = []
        for _ in range(args.samples + 1):
            for _ in images:
                words = list(references[rng.integers(len(records))][0])
                if rng.random() < 0.5:
                    rng.shuffle(words)
                hypotheses.append([*words, vocab.end_id])
        image_of = np.tile(images, args.samples + 1)
        started = time.perf_counter()
        scorer(hypotheses, image_of)
        times.append(time.perf_counter() - started)
        from pycocoevalcap.cider.cider import Cider

        gts = {k: [" ".join(map(str, [*c, vocab.end_id])) for c in references[i]] for k, i in enumerate(image_of)}
        res = {k: [" ".join(map(str, h))] for k, h in enumerate(hypotheses)}
        started = time.perf_counter()
        Cider().compute_score(gts, res)
        coco_times.append(time.perf_counter() - started)
    print(
        f"train references: {len(records)} images, {sum(len(r.captions) for r in records)} captions; "
        f"{len(scorer.vocabulary)} distinct n-grams; scorer built in {built:.2f} s"
    )
    print(
        f"one step ({len(hypotheses)} captions): CiderD median {np.median(times) * 1e3:.1f} ms; "
        f"pycocoevalcap Cider (batch references only) median {np.median(coco_times) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
