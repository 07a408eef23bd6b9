#!/usr/bin/env python
"""Experiment (until `train --init-from` exists, issue 26): continue a finished frozen-backbone caption run with the
top N backbone blocks unfrozen, at a lower learning rate, in a new run directory.

It runs `captioner.train.train` with the source run's settings plus `model.fine_tune_blocks=N` and the given
learning rate; after the task builds the model (the vocabulary is rebuilt from the same data and checked equal to
the source's), the decoder's and the backbone's weights are copied from the source run. Validation loss per epoch
then says whether fine-tuning improves on the frozen run's best.

    python scripts/fine_tune_from_run.py --source runs/f8k-lite2 --run runs/f8k-lite2-ft2 --blocks 2 --learning-rate 1e-4 --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from captioner.config import apply_overrides
from captioner.run import load_run
from captioner.tasks.caption import CaptionTask
from captioner.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a finished caption run on a frozen backbone")
    parser.add_argument("--run", required=True, help="new run directory")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    source = load_run(args.source)
    config = dataclasses.replace(source.config)
    apply_overrides(config, {"model.fine_tune_blocks": str(args.blocks), "train.learning_rate": str(args.learning_rate),
                             "train.epochs": str(args.epochs), "model.precision": "auto"})
    build = CaptionTask.setup

    def setup(self, run_config, run_dir, resuming, verbose, skipped):
        made = build(self, run_config, run_dir, resuming, verbose, skipped)
        if not resuming:
            words = json.loads((Path(run_dir) / "vocab.json").read_text())
            if words != json.loads((Path(args.source) / "vocab.json").read_text()):
                raise SystemExit("the rebuilt vocabulary differs from the source run's")
            made.model.decoder.set_weights(source.model.decoder.get_weights())
            made.model.encoder.cnn.set_weights(source.model.encoder.cnn.get_weights())
        return made

    CaptionTask.setup = setup
    result = train(config, args.run, verbose=2)
    print(json.dumps(result["train"], indent=2, default=str)[:2000])


if __name__ == "__main__":
    main()
