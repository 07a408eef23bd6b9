"""Answers a person can judge: test photos with their question, the model's answer and probability, and the truth
(from `captioner evaluate --out FILE` of a VQA run), some of them mistakes; with --attention-out, where an attention
model looked for the first few.

    python scripts/vqa_grid.py --run runs/vqa-coco --answers runs/vqa-coco/test_answers.json --out
    docs/vqa_coco_test.png \
        [--count 8] [--mistakes 2] [--seed 0] [--attention-out docs/vqa_coco_attention.png --attention-count 2]
    python scripts/vqa_grid.py --run runs/vqa-coco --answers runs/vqa-coco/test_answers.json \
        --more-answers runs/vqa-coco/captionqa_answers.json --out docs/vqa_byphoto_test.png

With --more-answers (the answers to another test of the same photos, e.g. the fixed captionqa test), each photo shows
one question of each file; a photo counts as a mistake when either answer is wrong.
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
    parser.add_argument(
        "--more-answers",
        default=None,
        help="answers to another test of the same photos: one question of each per photo",
    )
    parser.add_argument("--count", type=int, default=8, help="photos (default 8)")
    parser.add_argument("--mistakes", type=int, default=2, help="how many of them the model got wrong (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="which photos: a seeded random sample (default 0)")
    parser.add_argument(
        "--attention-out", default=None, help="also draw where the model looked (attention runs): PNG prefix"
    )
    parser.add_argument("--attention-count", type=int, default=2, help="photos drawn with --attention-out (default 2)")
    args = parser.parse_args()
    entries = json.loads(Path(args.answers).read_text(encoding="utf-8"))
    rng = random.Random(args.seed)
    if args.more_answers:  # per photo: its first question of each file
        first, second = {}, {}
        for entry in entries:
            first.setdefault(photo_key(entry["image"]), entry)
        for entry in json.loads(Path(args.more_answers).read_text(encoding="utf-8")):
            second.setdefault(photo_key(entry["image"]), entry)
        groups = [[first[key], second[key]] for key in sorted(first) if key in second]
    else:
        groups = [[entry] for entry in entries]
    wrong = [g for g in groups if any(e["answer"] not in e["answers"] for e in g)]
    right = [g for g in groups if all(e["answer"] in e["answers"] for e in g)]
    chosen_groups = rng.sample(right, args.count - args.mistakes) + rng.sample(wrong, min(args.mistakes, len(wrong)))
    rng.shuffle(chosen_groups)
    chosen = [entry for group in chosen_groups for entry in group]
    run = load_run(args.run, task="vqa")
    data = run.config.data
    seen = {
        photo_key(r.image)
        for r in load_qa_split(
            data.dataset, data.data_dir, run.config.train.train_split, answer_type=run.config.vqa.answer_type
        )
    }
    answerer = VQATask().answerer(run)
    size = run.model.encoder.image_size
    images = np.stack([load_image(e["image"], size) for e in chosen])  # (count, size, size, 3)
    questions = answerer.question_array([[answerer.encode(e["question"])] for e in chosen])  # (count, 1, steps)
    probabilities, attention = answerer(images, questions)  # (count, 1, answers), (count, 1, pixels)
    titles = []
    for entry, distribution in zip(chosen, probabilities[:, 0]):
        answer, probability = answerer.top(distribution, 1)[0]
        mark = "right" if answer in entry["answers"] else "WRONG"
        titles.append([entry["question"], f"model: {answer} ({probability:.0%}), {mark}; truth: {entry['answers'][0]}"])
    per_photo = len(chosen_groups[0])
    photos, lines = [], []
    for start in range(0, len(chosen), per_photo):
        photo = "seen" if photo_key(chosen[start]["image"]) in seen else "not seen"
        photos.append(images[start])
        lines.append(
            [line for title in titles[start : start + per_photo] for line in title] + [f"photo {photo} in training"]
        )
    caption_grid_figure(photos, lines, args.out, columns=4)
    print(f"wrote {args.out}")
    if args.attention_out:
        if not run.config.vqa.attention:
            raise SystemExit(f"{args.run} has no attention (train it with --attention)")
        grid = run.model.encoder.grid_shape
        for row in range(min(args.attention_count, len(chosen))):
            out = Path(args.attention_out)
            path = out.with_name(f"{out.stem}_{Path(chosen[row]['image']).stem}{out.suffix or '.png'}")
            said = titles[row][1].split(",")[0].removeprefix("model: ")
            label = f"{chosen[row]['question']} model: {said}; truth: {chosen[row]['answers'][0]}"
            attention_figure(
                images[row], ["where it looked"], attention[row, :1], (grid[0], grid[1]), path, title=label
            )
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
