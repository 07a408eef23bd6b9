"""Answers a person can judge: test photos with their question, the model's answer and probability, and the truth
(from `captioner evaluate --out FILE` of a VQA run), some of them mistakes; with --attention-out, where an attention
model looked for the first few.

    python scripts/vqa_grid.py --run runs/vqa-coco --answers runs/vqa-coco/test_answers.json --out docs/vqa_coco_test.png \
        [--count 8] [--mistakes 2] [--seed 0] [--attention-out docs/vqa_coco_attention.png --attention-count 2]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from captioner.data import load_qa_split
from captioner.data.images import load_image
from captioner.evaluation.metrics import photo_key
from captioner.run import load_run
from captioner.tasks.vqa import VQATask
from captioner.viz import attention_figure, caption_grid_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the VQA run that wrote --answers")
    parser.add_argument("--answers", required=True, help="the JSON list `captioner evaluate --out` writes")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--count", type=int, default=8, help="photos (default 8)")
    parser.add_argument("--mistakes", type=int, default=2, help="how many of them the model got wrong (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="which photos: a seeded random sample (default 0)")
    parser.add_argument("--attention-out", default=None, help="also draw where the model looked (attention runs): PNG prefix")
    parser.add_argument("--attention-count", type=int, default=2, help="photos drawn with --attention-out (default 2)")
    args = parser.parse_args()
    entries = json.loads(Path(args.answers).read_text(encoding="utf-8"))
    rng = random.Random(args.seed)
    wrong = [e for e in entries if e["answer"] not in e["answers"]]
    right = [e for e in entries if e["answer"] in e["answers"]]
    chosen = rng.sample(right, args.count - args.mistakes) + rng.sample(wrong, min(args.mistakes, len(wrong)))
    rng.shuffle(chosen)
    run = load_run(args.run, task="vqa")
    data = run.config.data
    seen = {photo_key(r.image) for r in load_qa_split(data.dataset, data.data_dir, run.config.train.train_split, answer_type=run.config.vqa.answer_type)}
    answerer = VQATask().answerer(run)
    size = run.model.encoder.image_size
    images = np.stack([load_image(e["image"], size) for e in chosen])  # (count, size, size, 3)
    questions = answerer.question_array([[answerer.encode(e["question"])] for e in chosen])  # (count, 1, steps)
    probabilities, attention = answerer(images, questions)  # (count, 1, answers), (count, 1, pixels)
    titles = []
    for entry, distribution in zip(chosen, probabilities[:, 0]):
        answer, probability = answerer.top(distribution, 1)[0]
        mark = "right" if answer in entry["answers"] else "WRONG"
        photo = "seen" if photo_key(entry["image"]) in seen else "not seen"
        titles.append([entry["question"], f"model: {answer} ({probability:.0%}), {mark}", f"truth: {entry['answers'][0]}; photo {photo} in training"])
    caption_grid_figure(images, titles, args.out, columns=4)
    print(f"wrote {args.out}")
    if args.attention_out:
        if not run.config.vqa.attention:
            raise SystemExit(f"{args.run} has no attention (train it with --attention)")
        grid = run.model.encoder.grid_shape
        for row in range(min(args.attention_count, len(chosen))):
            out = Path(args.attention_out)
            path = out.with_name(f"{out.stem}_{Path(chosen[row]['image']).stem}{out.suffix or '.png'}")
            label = f"{chosen[row]['question']} model: {titles[row][1].split(',')[0].removeprefix('model: ')}; truth: {chosen[row]['answers'][0]}"
            attention_figure(images[row], ["where it looked"], attention[row, :1], (grid[0], grid[1]), path, title=label)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
