"""`captioner data | features | classify | train | train-vqa | caption | ask | plot-history | evaluate | score`: the
only module that reads argv or prints.

Errors the user can fix print one line (`captioner: error: ...`) and exit 2; `caption` exits 1 when some
images failed and the rest were captioned.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.config import PRECISIONS  # plain dataclasses: no TensorFlow at parse time
from captioner.distribute import ADDRESSES_ENV, PROCESS_ID_ENV, PROCESSES_ENV  # no Keras at import

if TYPE_CHECKING:  # the CLI imports TensorFlow-bound modules lazily, so that `--help` is fast
    from captioner.data import Skipped

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2
PRECISION_CHOICES = ("auto", *PRECISIONS)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), like every other error here."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"captioner: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="captioner", description="Image captioning with Keras 3 / TensorFlow.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    data = commands.add_parser("data", help="generate the built-in dataset")
    data.add_argument("dataset", choices=["shapes"], help="dataset to generate")
    data.add_argument("--out", required=True, help="output folder")
    data.add_argument("--train", type=int, default=6000, help="train images (default 6000)")
    data.add_argument("--val", type=int, default=1000, help="val images (default 1000)")
    data.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    data.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    data.add_argument("--image-size", type=_positive_int, default=64, help="image side in pixels (default 64)")

    features = commands.add_parser("features", help="run a frozen CNN once per image and cache its grid features")
    features.add_argument(
        "--dataset",
        required=True,
        choices=["shapes", "flickr8k", "karpathy", "coco", "vqa", "vqa-lines"],
        help="a caption dataset, or a question one (vqa: VQA v2 JSON; vqa-lines: NAME#N<TAB>question ? answer)",
    )
    features.add_argument("--data-dir", required=True, help="dataset folder")
    features.add_argument("--encoder", required=True, help="a keras.applications backbone, e.g. mobilenet_v2")
    features.add_argument("--encoder-weights", default="imagenet", help="imagenet (default), none or a weights file")
    features.add_argument("--splits", default="train,val,test", help="comma-separated splits (default train,val,test)")
    features.add_argument("--cache-dir", default=None, help="cache folder (default DATA_DIR/features, as train uses)")
    features.add_argument("--batch-size", type=_positive_int, default=32, help="images per CNN batch (default 32)")
    features.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="compute only the I-th of N shares of the images (1/N ... N/N): N workers, on one machine or "
        "several sharing the folder, fill one cache together",
    )
    features.add_argument(
        "--seed", type=int, default=0, help="with --encoder-weights none: the seed train will use (default 0)"
    )
    features.add_argument(
        "--fine-tune-blocks",
        type=int,
        default=0,
        metavar="N",
        help="store the activations below the top N blocks, read by train --fine-tune-blocks N (default 0: the grid)",
    )
    features.add_argument(
        "--precision",
        default="auto",
        choices=PRECISION_CHOICES,
        help="compute precision of the CNN (default auto, as train's data.feature_precision, so train reads these "
        "features)",
    )
    features.add_argument("--verbose", action="store_true", help="list every entry the dataset loader skipped")

    questions = commands.add_parser(
        "questions", help="write yes/no questions about a caption dataset's photos (vqa-lines files)"
    )
    questions.add_argument(
        "--from-captions",
        action="store_true",
        required=True,
        help="make them from the photos' captions (captioner.data.caption_questions: the rules)",
    )
    questions.add_argument(
        "--dataset", required=True, choices=["shapes", "flickr8k", "karpathy", "coco"], help="a caption dataset"
    )
    questions.add_argument("--data-dir", required=True, help="dataset folder")
    questions.add_argument(
        "--out", required=True, help="folder for NAME.{Train,Dev,Test}Images.txt and Images/ (links to the photos)"
    )
    questions.add_argument("--name", default="captionqa", help="the files' name (default captionqa)")
    questions.add_argument("--splits", default="train,val,test", help="comma-separated splits (default train,val,test)")
    questions.add_argument(
        "--kinds",
        default=None,
        help="presence (is there a X), scene (is this a X) (default: both, each where the captions support it)",
    )
    questions.add_argument(
        "--per-photo", type=_positive_int, default=2, help="yes questions a photo at most, as many no (default 2)"
    )
    questions.add_argument("--seed", type=int, default=0, help="the same seed gives the same questions (default 0)")
    questions.add_argument(
        "--phrasings",
        type=_positive_int,
        default=1,
        help='ways of asking each question, 1-4 (default 1: "is there a dog in the picture ?", the captionqa '
        'test\'s; more: also "is there a dog ?", "do you see a dog ?", "does the photo show a dog ?")',
    )
    questions.add_argument("--verbose", action="store_true", help="list every photo skipped")

    classify = commands.add_parser(
        "classify", help="ImageNet classes of photos: check a backbone's weights file (with the classifier)"
    )
    classify.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    classify.add_argument(
        "--weights", required=True, help="imagenet or a .weights.h5 file of the whole network (with its 1000-class top)"
    )
    classify.add_argument(
        "--encoder", default="mobilenet_v2", help="the keras.applications backbone (default mobilenet_v2)"
    )
    classify.add_argument(
        "--class-index",
        default=None,
        help="Keras's imagenet_class_index.json (default: the one beside --weights; class ids without it)",
    )
    classify.add_argument("--top", type=_positive_int, default=3, help="classes listed per image (default 3)")
    classify.add_argument("--json", action="store_true", help="print JSON instead of text")

    train = commands.add_parser("train", help="train a captioner and write a run directory")
    add_train_arguments(train)
    add_parallel_arguments(train)

    train_vqa = commands.add_parser(
        "train-vqa", help="train a VQA model (question answering) and write a run directory"
    )
    add_train_vqa_arguments(train_vqa)
    add_parallel_arguments(train_vqa)

    caption = commands.add_parser("caption", help="caption image files, folders or globs")
    caption.add_argument(
        "--run",
        default=None,
        help="run directory written by `captioner train` (default: the caption model shipped "
        "with captioner, also named `pretrained`)",
    )
    add_engine_argument(caption)
    caption.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    caption.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch (default 64)")
    caption.add_argument("--json", action="store_true", help="print JSON instead of text")
    caption.add_argument(
        "--attention", default=None, metavar="PNG", help="write the attention map of each word (attention runs)"
    )
    caption.add_argument(
        "--precision", default=None, choices=PRECISION_CHOICES, help="compute precision (default: the run's)"
    )
    add_decode_arguments(caption)

    serve = commands.add_parser(
        "serve", help="HTTP API and web page over a caption run (and a VQA run), with request batching"
    )
    serve.add_argument(
        "--run", default=None, help="caption run directory (default: the shipped caption model, `pretrained`)"
    )
    serve.add_argument(
        "--vqa-run",
        default=None,
        help="also answer questions with this VQA run (default with no --run: the shipped "
        "VQA model; `none`: no questions)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--max-batch",
        type=_positive_int,
        default=32,
        help="images decoded together at most; 1 turns batching off (default 32)",
    )
    serve.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch with (default 5)"
    )
    serve.add_argument("--max-mb", type=float, default=8.0, help="largest request body in MB (default 8)")
    add_decode_arguments(serve)

    export = commands.add_parser(
        "export", help="write a run as a TensorFlow SavedModel (image bytes in, captions or answers out)"
    )
    export.add_argument(
        "--run",
        required=True,
        help="run directory written by `captioner train`; `pretrained` or `pretrained-vqa`: the shipped models",
    )
    export.add_argument("--out", required=True, help="SavedModel folder to write (replaced atomically)")
    export.add_argument(
        "--format",
        choices=["savedmodel", "tflite", "pretrained"],
        default="savedmodel",
        help="savedmodel (default: image bytes in, captions out, beam search inside), tflite (caption runs: "
        "an encoder and one decoder step for a greedy loop on a phone) or pretrained (a caption run and "
        "--vqa-run on one encoder, as the folder captioner ships: captioner/pretrained, or any folder "
        "named by $CAPTIONER_PRETRAINED_DIR)",
    )
    export.add_argument(
        "--vqa-run", default=None, help="--format pretrained: the VQA run shipped beside the caption run"
    )
    add_decode_arguments(export, sampling=False)

    ask = commands.add_parser("ask", help="answer questions about an image with a VQA run")
    ask.add_argument(
        "--run",
        default=None,
        help="run directory written by `captioner train-vqa` (default: the VQA model shipped "
        "with captioner, also named `pretrained`)",
    )
    add_engine_argument(ask)
    ask.add_argument("image", help="image file")
    ask.add_argument("questions", nargs="+", metavar="QUESTION", help="one or more questions (quote each)")
    ask.add_argument("--top", type=_positive_int, default=5, help="answers listed with their probabilities (default 5)")
    ask.add_argument("--json", action="store_true", help="print JSON instead of text")
    ask.add_argument(
        "--precision", default=None, choices=PRECISION_CHOICES, help="compute precision (default: the run's)"
    )

    plot = commands.add_parser("plot-history", help="draw training and validation loss per epoch")
    plot.add_argument("--run", required=True, help="run directory")
    plot.add_argument("--out", default=None, help="PNG to write (default RUN/history.png)")

    evaluate = commands.add_parser(
        "evaluate", help="score a run on a split: BLEU-1..4 (caption runs) or VQA accuracy (VQA runs)"
    )
    evaluate.add_argument(
        "--run", required=True, help="run directory; `pretrained` (the shipped caption model) or `pretrained-vqa`"
    )
    evaluate.add_argument("--split", default="test", help="split to score (default test)")
    evaluate.add_argument(
        "--data-dir", default=None, help="dataset folder (default: the one the run was trained on, its first source's)"
    )
    evaluate.add_argument(
        "--dataset", default=None, help="the loader of --data-dir, or alone: the run's source of this dataset"
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch (default 256)")
    evaluate.add_argument("--max-images", type=_positive_int, default=None, help="score only the first N images")
    evaluate.add_argument("--out", default=None, help="save the generated captions (or answers) to this JSON file")
    evaluate.add_argument(
        "--meteor", action="store_true", help="caption runs: also METEOR (pycocoevalcap + Java; slower)"
    )
    evaluate.add_argument(
        "--black-images",
        action="store_true",
        help="VQA runs: also answer every question with a black image instead of the photo (what the image is worth)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument(
        "--precision", default=None, choices=PRECISION_CHOICES, help="compute precision (default: the run's)"
    )
    add_decode_arguments(evaluate, "caption runs: ")
    evaluate.add_argument("--verbose", action="store_true", help="list every entry the dataset loader skipped")

    score = commands.add_parser(
        "score", help="score captions from files (no model): BLEU with nltk, COCO metrics with pycocoevalcap"
    )
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--hypotheses", help="generated captions: {image: caption} JSON, or the file `evaluate --out` writes"
    )
    source.add_argument(
        "--human", action="store_true", help="score reference #0 of every image against its other references"
    )
    score.add_argument(
        "--references", help="{image: [captions]} JSON (default: the references in --hypotheses, or --dataset)"
    )
    score.add_argument(
        "--dataset", choices=["shapes", "flickr8k", "karpathy", "coco"], help="take the references from a dataset split"
    )
    score.add_argument("--data-dir", help="folder of --dataset")
    score.add_argument("--split", default="test", help="split of --dataset (default test)")
    score.add_argument("--images", help="score only the image names listed in this file, one a line")
    score.add_argument(
        "--tokenization",
        choices=["words", "whitespace"],
        default="words",
        help="words: lower-case alphanumeric words (default, as evaluate); whitespace: lower-case, ' .' removed, split "
        "on spaces",
    )
    score.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts a Java program)")
    score.add_argument("--json", action="store_true", help="print the scores as JSON")
    score.add_argument("--verbose", action="store_true", help="list every entry the dataset loader skipped")
    return parser


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "litert", "keras"],
        help="the shipped model: auto (default: litert where the options allow, else keras), litert (the fast path: "
        "LiteRT and numpy, no TensorFlow) or keras (the Keras path, on KERAS_BACKEND)",
    )


def fast_path(args: argparse.Namespace) -> bool:
    """Whether `caption` or `ask` runs the shipped model on the fast path (captioner.generation.lite): no run named,
    --engine auto or litert, and nothing asked that only the Keras path does (sampling, another precision)."""
    from captioner.pretrained import is_pretrained

    if args.command not in ("caption", "ask") or not is_pretrained(args.run) or args.engine == "keras":
        return False
    if args.engine == "litert":
        return True
    if args.precision is not None or getattr(args, "sampler", None) == "sampling":
        return False
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return False
    return True


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `captioner train`, shared with scripts/train.py."""
    parser.add_argument("--run", required=True, help="output run directory")
    parser.add_argument("--preset", default=None, help="starting configuration: shapes (default), flickr8k or tiny")
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="start from this finished caption run: its weights, vocabulary and settings (then the flags given here)",
    )
    parser.add_argument(
        "--objective",
        default=None,
        choices=["xe", "scst"],
        help="xe: cross-entropy (default); scst: self-critical training on CIDEr-D (needs --init-from)",
    )
    parser.add_argument(
        "--scst-samples", type=int, default=None, metavar="K", help="scst: captions sampled per image (default 5)"
    )
    parser.add_argument(
        "--scst-baseline",
        default=None,
        choices=["greedy", "mean"],
        help="scst: subtract the greedy caption's reward (default) or the mean of the other samples'",
    )
    parser.add_argument("--data-dir", default=None, help="dataset folder (default data/shapes)")
    parser.add_argument("--dataset", default=None, help="dataset loader (default shapes)")
    add_source_arguments(parser, "flickr8k=data/flickr8k")
    parser.add_argument(
        "--decoder",
        default=None,
        choices=["show-tell", "attention"],
        help="show-tell (default) or attention (Show-Attend-Tell)",
    )
    parser.add_argument(
        "--attention",
        default=None,
        choices=["soft", "hard"],
        help="with --decoder attention: soft (default) or hard (one sampled grid cell per word, trained with "
        "REINFORCE); "
        "--attention alone implies --decoder attention",
    )
    parser.add_argument("--cell", default=None, help="the decoder's recurrent cell: lstm (default) or gru")
    parser.add_argument("--num-layers", type=int, default=None, help="stacked recurrent layers, 1 to 4 (default 1)")
    parser.add_argument("--encoder", default=None, help="small_cnn or a keras.applications name, e.g. mobilenet_v2")
    parser.add_argument("--encoder-weights", default=None, help="none, imagenet or a weights file (backbones)")
    parser.add_argument(
        "--fine-tune-blocks",
        type=int,
        default=None,
        metavar="N",
        help="train the top N blocks of the frozen backbone, on cached activations below them (default 0)",
    )
    parser.add_argument("--epochs", type=_positive_int, default=None)
    parser.add_argument("--batch-size", type=_positive_int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-train-images", type=_positive_int, default=None, help="train on the first N images only")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="any other setting, e.g. model.hidden_dim=512",
    )
    parser.add_argument(
        "--fine-tune-encoder",
        action="store_true",
        help="train a pretrained backbone too (no feature cache; slow on a CPU)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=PRECISION_CHOICES,
        help="auto (default: what measured faster at equal quality on this CPU/GPU for this kind of training; "
        "BENCHMARKS.md) or one of these",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="feature cache of a frozen backbone (default DATA_DIR/features)"
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard an existing run directory's training and start over"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="list every entry the dataset loader skipped")


def add_source_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """Several datasets in one run: one vocabulary, each source's share of the training records."""
    parser.add_argument(
        "--add-source",
        action="append",
        default=[],
        metavar="DATASET=DIR",
        help=f"train on this dataset too, with the one of --dataset/--data-dir (repeatable; e.g. {example})",
    )
    parser.add_argument(
        "--source-weights",
        default=None,
        metavar="W1,W2,...",
        help="each source's share of the training records, --dataset's first (default: every record once); "
        "validation takes each source's dev split in equal shares",
    )


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """Data-parallel training: devices of this process, and the processes of a job (flags or KERAS_DISTRIBUTION_*)."""
    group = parser.add_argument_group("data parallelism (--batch-size is the global batch, split over every device)")
    group.add_argument(
        "--devices",
        type=int,
        default=None,
        metavar="N",
        help="train on N local devices: the first N GPUs, or without a GPU the CPU split into N devices (default 1)",
    )
    group.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help=f"several processes (JAX backend): process 0's address (default: the first of ${ADDRESSES_ENV})",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        default=None,
        metavar="N",
        help=f"processes in the job (default ${PROCESSES_ENV}, else 1)",
    )
    group.add_argument(
        "--process-id",
        type=int,
        default=None,
        metavar="I",
        help=f"this process, 0..N-1; 0 writes the run (default ${PROCESS_ID_ENV})",
    )
    group.add_argument(
        "--join-timeout",
        type=int,
        default=30,
        metavar="S",
        help="seconds to wait for every process to join (default 30)",
    )


def parallel_config(args: argparse.Namespace):
    """The command's data parallelism, resolved once (flags, else the KERAS_DISTRIBUTION_* variables)."""
    from captioner.distribute import resolve

    return resolve(args.devices, args.coordinator, args.num_processes, args.process_id, args.join_timeout)


def add_train_vqa_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `captioner train-vqa`."""
    parser.add_argument("--run", required=True, help="output run directory")
    parser.add_argument(
        "--preset",
        default=None,
        help="starting configuration: shapes-vqa (default), easy-vqa (with --dataset easy-vqa), "
        "vqa-coco (with --dataset vqa-lines) or tiny",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="start from this finished VQA run: its weights, vocabularies and settings (then the flags given here), "
        "e.g. to fine-tune the top CNN blocks of a frozen run with --fine-tune-blocks N and a lower --learning-rate",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        choices=["shapes", "easy-vqa", "vqa", "vqa-lines"],
        help="shapes (default), easy-vqa (the PyPI package), vqa (VQA v2 JSON) or vqa-lines (NAME#N<TAB>question ? "
        "answer "
        "files with Images/, e.g. the VQA v2 yes/no subset on COCO photos)",
    )
    parser.add_argument(
        "--answer-type",
        default=None,
        choices=["yes/no", "number", "other"],
        help="keep only questions with this type of answer",
    )
    parser.add_argument("--data-dir", default=None, help="dataset folder (default data/shapes; not used by easy-vqa)")
    add_source_arguments(parser, "vqa-lines=runs/questions")
    parser.add_argument(
        "--encoder-from", default=None, metavar="RUN", help="start from this captioning run's trained encoder (frozen)"
    )
    parser.add_argument("--fine-tune-encoder", action="store_true", help="train the encoder taken with --encoder-from")
    parser.add_argument(
        "--fusion", default=None, choices=["multiply", "concat"], help="how image and question meet (default multiply)"
    )
    parser.add_argument("--attention", action="store_true", help="the question attends over the image grid")
    parser.add_argument(
        "--question-only", action="store_true", help="the image takes no part: a blind model, for ablations"
    )
    parser.add_argument(
        "--image-only", action="store_true", help="the question takes no part: an image-only model, for ablations"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="feature cache of a frozen backbone (default DATA_DIR/features)"
    )
    parser.add_argument(
        "--precision", default=None, choices=PRECISION_CHOICES, help="auto (default) or one of these, as for train"
    )
    parser.add_argument(
        "--encoder", default=None, help="small_cnn or a keras.applications name (without --encoder-from)"
    )
    parser.add_argument("--encoder-weights", default=None, help="none, imagenet or a weights file (backbones)")
    parser.add_argument(
        "--fine-tune-blocks",
        type=int,
        default=None,
        metavar="N",
        help="train the top N blocks of the frozen backbone, on cached activations below them (default 0)",
    )
    parser.add_argument("--epochs", type=_positive_int, default=None)
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="images per step")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--max-train-images", type=_positive_int, default=None, help="train on the questions of the first N images only"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="any other setting, e.g. vqa.num_answers=500",
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard an existing run directory's training and start over"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="list every entry the dataset loader skipped")


_TRAIN_FLAGS = {
    "data_dir": "data.data_dir",
    "dataset": "data.dataset",
    "decoder": "model.decoder",
    "attention": "model.attention",
    "cell": "model.cell",
    "num_layers": "model.num_layers",
    "encoder": "model.encoder",
    "encoder_weights": "model.encoder_weights",
    "fine_tune_blocks": "model.fine_tune_blocks",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
    "max_train_images": "train.max_train_images",
    "cache_dir": "data.feature_cache_dir",
    "precision": "model.precision",
    "objective": "train.objective",
    "scst_samples": "train.scst_samples",
    "scst_baseline": "train.scst_baseline",
}


_TRAIN_VQA_FLAGS = {
    "data_dir": "data.data_dir",
    "dataset": "data.dataset",
    "encoder": "model.encoder",
    "encoder_weights": "model.encoder_weights",
    "fine_tune_blocks": "model.fine_tune_blocks",
    "encoder_from": "vqa.encoder_from",
    "fusion": "vqa.fusion",
    "answer_type": "vqa.answer_type",
    "cache_dir": "data.feature_cache_dir",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
    "max_train_images": "train.max_train_images",
    "precision": "model.precision",
}


def _configure(args: argparse.Namespace, preset_name: str, flags: dict[str, str], fixed: dict[str, str]):
    """A preset (or, with --init-from, the source run's settings) with the command line's flags, then its --set
    values, applied as typed overrides."""
    from captioner.config import apply_overrides, preset, started_from
    from captioner.errors import CaptionerError
    from captioner.run import load_config

    try:
        if getattr(args, "init_from", None):
            config = started_from(
                load_config(args.init_from),
                str(Path(args.init_from).resolve()),
                getattr(args, "objective", None) or "xe",
            )
        else:
            config = preset(preset_name)
        overrides = {key: str(getattr(args, flag)) for flag, key in flags.items() if getattr(args, flag) is not None}
        overrides.update(fixed)
        if getattr(args, "add_source", None):
            if any("," in source for source in args.add_source):
                raise CaptionerError(
                    "--add-source: a folder name with a comma cannot be stored; rename or link the folder"
                )
            overrides["data.more_sources"] = ",".join(args.add_source)
        if getattr(args, "source_weights", None) is not None:
            overrides["data.source_weights"] = args.source_weights
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise CaptionerError(f"--set expects SECTION.FIELD=VALUE, got '{item}'")
            overrides[key.strip()] = value.strip()
        return apply_overrides(config, overrides)
    except ValueError as exc:
        raise CaptionerError(str(exc)) from None


def progress_verbosity(quiet: bool) -> int:
    """Keras's verbosity for training and feature extraction: a progress bar redrawn in place on a terminal, one plain
    line per epoch (or per extraction) into a file or a pipe, where a redrawn bar is hundreds of escape codes."""
    return 0 if quiet else 1 if sys.stdout.isatty() else 2


def _report_skipped(skipped: Skipped, what: str, verbose: bool) -> None:
    """One line on stderr for what a loader skipped; every entry with --verbose."""
    if not skipped.count():
        return
    print(f"captioner: {skipped.summary(what)}" + ("" if verbose else " (--verbose lists them)"), file=sys.stderr)
    if verbose:
        for line in skipped.details():
            print(f"  {line}", file=sys.stderr)


def _log(line: str) -> None:
    print(line, flush=True)


def _notify(line: str) -> None:
    print(f"captioner: {line}", file=sys.stderr, flush=True)


def _report_training(metrics: dict, run: str, item_name: str) -> int:
    stats = metrics["train"]
    monitor = stats.get("monitor", "val_loss")
    best = f"best {monitor.replace('_', ' ')} {stats[f'best_{monitor}']:.4f}"
    if metrics.get("already_finished"):
        print(f"run {run} is finished ({stats['epochs_run']} epochs, {best}); pass --restart to train it again")
        return EXIT_OK
    print(
        f"trained {stats['epochs_run']} epochs in {stats['seconds']:.0f}s "
        f"({stats['images_per_second']:.0f} images/s, {stats[f'{item_name}_per_second']:.0f} {item_name}/s, "
        f"peak memory {stats['peak_rss_mib']:.0f} MiB); {best} at epoch {stats['best_epoch']}"
        f"{' (the starting weights: no epoch beat them)' if stats['best_epoch'] == 0 else ''}; run saved to {run}"
    )
    return EXIT_OK


def _start(config):
    """Start the command's data parallelism; a process of a several-process job says when the job has formed."""
    from captioner.distribute import start

    parallel = start(config)
    if parallel.processes > 1:
        _notify(
            f"joined the job at {config.coordinator} as process {config.process_id} of {config.num_processes} "
            f"({parallel.replicas} devices in all)"
        )
    return parallel


def run_train(args: argparse.Namespace) -> int:
    from captioner.data import Skipped
    from captioner.errors import CaptionerError
    from captioner.train import train

    if args.init_from and args.preset:
        raise CaptionerError("--init-from takes its settings from that run; drop --preset")
    if args.attention and args.decoder is None and not args.init_from:
        args.decoder = "attention"
    config = _configure(
        args,
        args.preset or "shapes",
        _TRAIN_FLAGS,
        {"model.encoder_trainable": "true"} if args.fine_tune_encoder else {},
    )
    config.task = "caption"  # also where --init-from names a VQA run: train then says it cannot start from one
    parallel = _start(args.parallel)
    skipped = Skipped()
    metrics = train(
        config,
        args.run,
        verbose=progress_verbosity(args.quiet),
        restart=args.restart,
        skipped=skipped,
        notify=_notify,
        log=_log,
        parallel=parallel,
    )
    if not parallel.writer:  # process 0 reports
        return EXIT_OK
    _report_skipped(skipped, "entries", args.verbose)
    return _report_training(metrics, args.run, "captions")


def run_train_vqa(args: argparse.Namespace) -> int:
    from captioner.data import Skipped
    from captioner.errors import CaptionerError
    from captioner.train import train

    if args.init_from and args.preset:
        raise CaptionerError("--init-from takes its settings from that run; drop --preset")
    if args.fine_tune_encoder and not args.encoder_from:
        raise CaptionerError(
            "--fine-tune-encoder needs --encoder-from RUN (an encoder trained from scratch is always trained)"
        )
    if args.encoder_from and (args.encoder or args.encoder_weights):
        raise CaptionerError("--encoder-from takes the encoder from that run; drop --encoder/--encoder-weights")
    if args.question_only and args.image_only:
        raise CaptionerError("--question-only and --image-only leave the model nothing to read; pass one of them")
    name = args.preset or {"easy-vqa": "easy-vqa", "vqa-lines": "vqa-coco"}.get(args.dataset, "shapes-vqa")
    fixed = {"task": "vqa"}
    if args.attention:
        fixed["vqa.attention"] = "true"
    if args.question_only:
        fixed["vqa.use_image"] = "false"
    if args.image_only:
        fixed["vqa.use_question"] = "false"
    if args.fine_tune_encoder:
        fixed["vqa.fine_tune_encoder"] = "true"
    config = _configure(args, name, _TRAIN_VQA_FLAGS, {k: v for k, v in fixed.items() if k != "task"})
    config.task = "vqa"
    parallel = _start(args.parallel)
    skipped = Skipped()
    metrics = train(
        config,
        args.run,
        verbose=progress_verbosity(args.quiet),
        restart=args.restart,
        skipped=skipped,
        notify=_notify,
        log=_log,
        parallel=parallel,
    )
    if not parallel.writer:  # process 0 reports
        return EXIT_OK
    _report_skipped(skipped, "questions", args.verbose)
    return _report_training(metrics, args.run, "questions")


def expand_image_arguments(arguments: Sequence[str]) -> list[str]:
    """Files as given; folders become their image files (sorted); glob patterns are expanded.

    A pattern that matches nothing is kept as is, so it is reported as a missing file.
    """
    from captioner.data.images import IMAGE_SUFFIXES

    paths: list[str] = []
    for argument in arguments:
        if Path(argument).is_dir():
            paths += sorted(str(p) for p in Path(argument).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in argument for ch in "*?[") and not Path(argument).exists():
            paths += sorted(glob.glob(argument)) or [argument]
        else:
            paths.append(argument)
    return paths


_DECODE_FLAGS = (
    "sampler",
    "beam_size",
    "length_penalty",
    "temperature",
    "top_k",
    "top_p",
    "num_captions",
    "seed",
    "no_repeat_ngram",
    "min_length",
    "hard_context",
)


def add_decode_arguments(parser: argparse.ArgumentParser, prefix: str = "", sampling: bool = True) -> None:
    """How captions are generated (DecodeConfig), each flag defaulting to the run's own setting."""
    group = parser.add_argument_group("decoding (default: the run's decode settings)")
    group.add_argument(
        "--sampler",
        default=None,
        choices=["greedy", "beam", "sampling"] if sampling else ["greedy", "beam"],
        help=f"{prefix}greedy, beam (search) or sampling (random words from the model's distribution)",
    )
    group.add_argument("--beam-size", type=_positive_int, default=None, help=f"{prefix}beam width (1 = greedy)")
    group.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        help=f"{prefix}beams and samples ranked by log-probability / length**this",
    )
    if sampling:
        group.add_argument(
            "--temperature", type=float, default=None, help="sampling: logits divided by this (0: the most likely word)"
        )
        group.add_argument("--top-k", type=int, default=None, help="sampling: among the k most likely words only")
        group.add_argument(
            "--top-p",
            type=float,
            default=None,
            help="sampling: among the most likely words whose probability reaches p",
        )
        group.add_argument(
            "--num-captions",
            type=int,
            default=None,
            metavar="N",
            help="captions per image: the N best beams, or N samples",
        )
        group.add_argument(
            "--seed", type=int, default=None, help="sampling: the same seed gives the same captions (default 0)"
        )
    group.add_argument(
        "--no-repeat-ngram",
        type=int,
        default=None,
        metavar="N",
        help="never repeat an N-gram within a caption (3: trigrams)",
    )
    group.add_argument("--min-length", type=int, default=None, help="no <end> before this many words")
    group.add_argument(
        "--hard-context",
        default=None,
        choices=["expectation", "argmax"],
        help="hard-attention runs: read the expected context (default) or the most attended grid cell",
    )


def _given_decode(decode, args: argparse.Namespace):
    """The run's DecodeConfig with the flags given on the command line. `--beam-size` alone keeps its old meaning: 1 is
    greedy, more is beam search."""
    given = {name: getattr(args, name) for name in _DECODE_FLAGS if getattr(args, name, None) is not None}
    if "beam_size" in given and "sampler" not in given:
        given["sampler"] = "auto"
    return dataclasses.replace(decode, **given)


def decode_from_args(decode, args: argparse.Namespace):
    """`_given_decode`, checked now (a bad combination is one line, before any image is read)."""
    from captioner.generation.decoding import make_sampler

    decode = _given_decode(decode, args)
    make_sampler(decode)
    return decode


def run_caption(args: argparse.Namespace) -> int:
    from captioner.errors import CaptionerError

    paths = expand_image_arguments(args.images)
    if not paths:
        raise CaptionerError("no image files found in the given folders")
    if args.attention is not None:
        _check_output_folder(args.attention)
    if args.fast:
        from captioner.generation.lite import LiteCaptioner, LiteEncoder, check_decode
        from captioner.pretrained import ENCODER_FILE, verified

        folder = verified("caption")
        captioner = LiteCaptioner(folder, LiteEncoder(folder.parent / ENCODER_FILE))
        decode = _given_decode(captioner.config.decode, args)
        check_decode(decode)
        results = captioner.caption_files(paths, decode, args.attention)
    else:
        from captioner.run import load_run
        from captioner.tasks.caption import caption_files

        run = load_run(args.run, precision=args.precision)
        results = caption_files(run, paths, decode_from_args(run.config.decode, args), args.batch_size, args.attention)
    return _print_per_image(
        results, args.json, "captioned", lambda r: r["caption"] if len(paths) == 1 else f"{r['image']}\t{r['caption']}"
    )


def _print_per_image(results: list[dict], as_json: bool, verb: str, line) -> int:
    """Every image's result (`line(result)`, or the JSON list), its error on stderr, and the exit code: 1 when
    some images failed and the others went through."""
    if as_json:
        print(json.dumps(results, indent=2))
    for result in results:
        if "error" in result:
            print(f"captioner: error: {result['error']}", file=sys.stderr)
        elif not as_json:
            print(line(result))
    failed = sum("error" in r for r in results)
    if failed:
        print(f"captioner: {failed} of {len(results)} images could not be {verb}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _check_output_folder(path: str) -> None:
    from captioner.errors import CaptionerError

    if not Path(path).resolve().parent.is_dir():
        raise CaptionerError(f"cannot write {path}: folder {Path(path).parent} does not exist")


def run_serve(args: argparse.Namespace) -> int:
    from captioner.errors import CaptionerError
    from captioner.run import load_run
    from captioner.serving.serve import ServeConfig, serve

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CaptionerError('serve needs Starlette and uvicorn: pip install "captioner[serve]"') from None
    if not 0 < args.port < 65536:
        raise CaptionerError(f"--port must be between 1 and 65535, got {args.port}")
    run = load_run(args.run)
    vqa_run = args.vqa_run if args.vqa_run is not None or args.run is not None else "pretrained"
    vqa = load_run(vqa_run, task="vqa") if vqa_run and vqa_run != "none" else None
    config = ServeConfig(
        max_batch=args.max_batch, max_wait_ms=max(0.0, args.max_wait_ms), max_bytes=int(args.max_mb * 1024 * 1024)
    )
    serve(run, vqa, args.host, args.port, config, decode_from_args(run.config.decode, args))
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from captioner.run import load_run, stored_task
    from captioner.serving.export import export_run

    # float32 whatever the run trained at (its variables are float32): what TFLite converts and every server runs
    run = load_run(args.run, task=stored_task(args.run), precision="float32")
    if args.format == "pretrained":
        from captioner.errors import CaptionerError
        from captioner.serving.export import export_pretrained

        if args.vqa_run is None:
            raise CaptionerError("--format pretrained ships a caption run and a VQA run: add --vqa-run")
        vqa = load_run(args.vqa_run, task="vqa", precision="float32")
        out = export_pretrained(run, vqa, args.out, decode_from_args(run.config.decode, args))
        print(f"wrote {out}: encoder.tflite, caption/ and vqa/ (config, vocabulary, float16 weights), manifest.json")
        return EXIT_OK
    if args.format == "tflite":
        from captioner.serving.export import export_tflite

        out = export_tflite(run, args.out, args.hard_context or run.config.decode.hard_context)
        print(
            f"wrote {out}: encoder.tflite, step.tflite and tflite.json (greedy decoding; "
            f"captioner.serving.export.tflite_greedy is the loop)"
        )
        return EXIT_OK
    out = export_run(run, args.out, decode_from_args(run.config.decode, args))
    if run.config.task == "vqa":
        print(
            f"wrote {out}: signature serving_default, images (encoded bytes) + questions -> answers, top_answers, "
            f"top_probabilities"
        )
    else:
        print(f"wrote {out}: signature serving_default, images (encoded bytes) -> captions, tokens, scores")
    return EXIT_OK


def run_classify(args: argparse.Namespace) -> int:
    import numpy as np

    from captioner.data.images import read_image
    from captioner.errors import CaptionerError
    from captioner.models.encoder import build_classifier, read_class_index

    paths = expand_image_arguments(args.images)
    beside = Path(args.weights).with_name("imagenet_class_index.json")
    index_path = args.class_index or (str(beside) if beside.is_file() else None)
    names = read_class_index(index_path) if index_path else None
    model, preprocess, size = build_classifier(args.encoder, args.weights)
    results: list[dict] = [{"image": path} for path in paths]
    for start in range(0, len(paths), 32):  # one CNN call per batch of readable images
        chunk: list[tuple[int, np.ndarray]] = []
        for index in range(start, min(start + 32, len(paths))):
            try:
                chunk.append((index, read_image(paths[index], size)[0]))
            except CaptionerError as exc:
                results[index]["error"] = str(exc)
        if not chunk:
            continue
        images = np.stack([image for _, image in chunk]).astype("float32")  # (batch, size, size, 3)
        probabilities = np.asarray(model(preprocess(images), training=False))  # (batch, 1000)
        for (index, _), row in zip(chunk, probabilities):
            results[index]["classes"] = [
                {
                    "id": int(i),
                    "name": names[i] if names and i < len(names) else f"class {i}",
                    "probability": float(row[i]),
                }
                for i in np.argsort(-row)[: args.top]
            ]
    return _print_per_image(
        results,
        args.json,
        "classified",
        lambda r: r["image"] + "\t" + ", ".join(f"{c['name']} {c['probability']:.2f}" for c in r["classes"]),
    )


def run_plot_history(args: argparse.Namespace) -> int:
    from captioner.errors import CaptionerError
    from captioner.run import HISTORY_FILE, read_json
    from captioner.viz import history_figure

    history = read_json(Path(args.run) / HISTORY_FILE)
    if not history:
        raise CaptionerError(f"{args.run} has no {HISTORY_FILE}; is it a run directory written by `captioner train`?")
    out = args.out or str(Path(args.run) / "history.png")
    _check_output_folder(out)
    history_figure(history, out)
    print(f"wrote {out}")
    return EXIT_OK


def run_evaluate(args: argparse.Namespace) -> int:
    from captioner.data import Skipped
    from captioner.run import load_run, stored_task
    from captioner.tasks import EvalOptions, get_task

    if args.out is not None:
        _check_output_folder(args.out)
    skipped = Skipped()
    task = get_task(stored_task(args.run))
    run = load_run(args.run, task=task.name, precision=args.precision)
    decode = decode_from_args(run.config.decode, args) if run.config.task == "caption" else None
    options = EvalOptions(
        args.split,
        args.data_dir,
        args.batch_size,
        args.out,
        args.max_images,
        decode,
        args.meteor,
        args.dataset,
        args.black_images,
    )
    result = task.evaluate(run, options, skipped)
    _report_skipped(skipped, task.skipped_item, args.verbose)
    print(json.dumps(result, indent=2) if args.json else "\n".join(task.summary_lines(result)))
    return EXIT_OK


def run_score(args: argparse.Namespace) -> int:
    from captioner.data import Skipped, load_split
    from captioner.errors import CaptionerError
    from captioner.evaluation.evaluate import read_hypotheses, read_references, score_captions, score_lines

    hypotheses = read_hypotheses(args.hypotheses) if args.hypotheses else None
    if args.references:
        references = read_references(args.references)
    elif args.dataset:
        if not args.data_dir:
            raise CaptionerError("--dataset needs --data-dir")
        skipped = Skipped()
        references = {
            r.image_id: list(r.captions) for r in load_split(args.dataset, args.data_dir, args.split, skipped)
        }
        _report_skipped(skipped, "entries", args.verbose)
    elif args.hypotheses:
        references = read_references(args.hypotheses)
    else:
        raise CaptionerError("--human needs --references FILE or --dataset NAME --data-dir DIR")
    if args.images:
        try:
            keep = {
                Path(line.strip()).name
                for line in Path(args.images).read_text(encoding="utf-8").splitlines()
                if line.strip()
            }
        except OSError as exc:
            raise CaptionerError(f"cannot read {args.images}: {exc.strerror}") from None
        references = {name: refs for name, refs in references.items() if name in keep}
        if hypotheses is not None:
            hypotheses = {name: c for name, c in hypotheses.items() if name in keep}
    if not references or hypotheses == {}:
        raise CaptionerError("nothing to score: no image has both references and a caption")
    result = score_captions(references, hypotheses, args.tokenization, meteor=not args.no_meteor)
    print(json.dumps(result, indent=2) if args.json else "\n".join(score_lines(result)))
    return EXIT_OK


def _shard(text: str | None) -> tuple[int, int]:
    """`--shard I/N` as (I, N), 1 <= I <= N; (1, 1) when not given."""
    from captioner.errors import CaptionerError

    if text is None:
        return 1, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise CaptionerError(
            f"--shard takes I/N with 1 <= I <= N, e.g. 1/4 for the first of four workers (got '{text}')"
        )
    return index, count


def run_features(args: argparse.Namespace) -> int:
    from captioner.data import Skipped
    from captioner.tasks.caption import extract_features

    skipped = Skipped()
    weights = None if args.encoder_weights.lower() == "none" else args.encoder_weights
    done = extract_features(
        args.dataset,
        args.data_dir,
        args.splits.split(","),
        args.encoder,
        weights,
        args.cache_dir,
        args.batch_size,
        args.precision,
        args.seed,
        skipped,
        args.fine_tune_blocks,
        _shard(args.shard),
        verbose=progress_verbosity(False),
    )
    _report_skipped(skipped, "entries", args.verbose)
    rate = f" ({done['computed'] / done['seconds']:.1f} images/s)" if done["computed"] else ""
    share = f" (shard {args.shard})" if args.shard else ""
    print(
        f"{done['computed']} of {done['images']} images{share} computed in {done['seconds']:.0f}s{rate}, the rest were "
        f"cached; "
        f"features in {done['folder']}"
    )
    return EXIT_OK if "unreadable image" not in skipped.reasons else EXIT_PARTIAL


def run_ask(args: argparse.Namespace) -> int:
    if args.fast:
        from captioner.generation.lite import LiteAnswerer, LiteEncoder
        from captioner.pretrained import ENCODER_FILE, verified

        folder = verified("vqa")
        answered = LiteAnswerer(folder, LiteEncoder(folder.parent / ENCODER_FILE)).ask(
            args.image, args.questions, args.top
        )
    else:
        from captioner.run import load_run
        from captioner.tasks.vqa import ask

        run = load_run(args.run, task="vqa", precision=args.precision)
        answered = ask(run, args.image, args.questions, args.top)
    results = answered["answers"]
    for result in results:
        for key in ("error", "warning"):
            if key in result:
                print(f"captioner: {key}: {result[key]}", file=sys.stderr)
    answerable = [r for r in results if "error" not in r]
    if args.json:
        print(json.dumps(answered, indent=2))
    else:
        for result in answerable:
            if len(args.questions) > 1:
                print(result["question"])
            print(result["answer"])
            for item in result["top"]:
                print(f"  {item['probability']:6.1%}  {item['answer']}")
    if len(answerable) < len(results):
        return EXIT_PARTIAL if answerable else EXIT_ERROR
    return EXIT_OK


def run_questions(args: argparse.Namespace) -> int:
    """Each split's questions from its own photos' captions, all checked before a file is written."""
    from captioner.data import Skipped, load_split
    from captioner.data.caption_questions import KINDS, questions_from_captions, vqa_lines
    from captioner.data.questions import LINE_SPLITS
    from captioner.errors import CaptionerError
    from captioner.fileio import write_text

    kinds = [k.strip() for k in (args.kinds or ",".join(KINDS)).split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        raise CaptionerError(f"--kinds {args.kinds}: choose from {', '.join(KINDS)}")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits or set(splits) - set(LINE_SPLITS):
        raise CaptionerError(f"--splits {args.splits}: choose from train, val, test")
    made, photos = {}, {}
    for split in splits:
        skipped = Skipped()
        records = load_split(args.dataset, args.data_dir, split, skipped)
        _report_skipped(skipped, f"{split} entries", args.verbose)
        generated = questions_from_captions(records, kinds, args.per_photo, seed=args.seed, phrasings=args.phrasings)
        _report_skipped(generated.skipped, f"{split} photos", args.verbose)
        made[split] = generated
        photos.update({Path(q.image).name: Path(q.image).resolve() for q in generated.questions})
    for kind in kinds:
        if not any(q.kind == kind for g in made.values() for q in g.questions):
            if args.kinds is None:  # not asked for by name: say so, make the others
                print(
                    f"captioner: no {kind} questions: no photo's captions name a {kind} concept in most of them",
                    file=sys.stderr,
                )
                continue
            raise CaptionerError(
                f"no caption of the {', '.join(splits)} split(s) supports a {kind} question (none names a "
                f"concept of that kind in most of a photo's captions); drop it from --kinds"
            )
    out = Path(args.out)
    images = out / "Images"
    folders = {path.parent for path in photos.values()}
    out.mkdir(parents=True, exist_ok=True)
    if len(folders) == 1 and (not images.exists() or images.is_symlink()):  # one folder of photos: one link to it
        if images.is_symlink():
            images.unlink()
        images.symlink_to(next(iter(folders)), target_is_directory=True)
    else:  # photos in several folders (COCO's train2014/val2014): a folder of links
        images.mkdir(exist_ok=True)
        for name, path in photos.items():
            if not (images / name).exists():
                (images / name).symlink_to(path)
    for split, generated in made.items():
        path = out / f"{args.name}.{LINE_SPLITS[split]}Images.txt"
        write_text(path, vqa_lines(generated.questions))
        counts = ", ".join(f"{n} {what}" for what, n in generated.counts().items())
        print(
            f"{split}: {len(generated.questions)} questions about {len({q.image for q in generated.questions})} photos "
            f"({counts}) -> {path}"
        )
    print(f"train on them: captioner train-vqa --dataset vqa-lines --data-dir {out} ...")
    return EXIT_OK


def run_data(args: argparse.Namespace) -> int:
    import time

    from captioner.data.shapes import ShapesSpec, generate
    from captioner.errors import CaptionerError

    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            raise CaptionerError(f"--{name} must not be negative")
    started = time.perf_counter()
    spec = ShapesSpec(
        image_size=args.image_size, num_train=args.train, num_val=args.val, num_test=args.test, seed=args.seed
    )
    sizes = generate(args.out, spec)
    counts = ", ".join(f"{n} {split}" for split, n in sizes.items())
    print(f"wrote shapes ({counts} images) to {args.out} in {time.perf_counter() - started:.1f}s")
    return EXIT_OK


COMMANDS = {
    "data": run_data,
    "questions": run_questions,
    "train": run_train,
    "train-vqa": run_train_vqa,
    "caption": run_caption,
    "ask": run_ask,
    "score": run_score,
    "features": run_features,
    "evaluate": run_evaluate,
    "plot-history": run_plot_history,
    "classify": run_classify,
    "export": run_export,
    "serve": run_serve,
}


NO_TENSORFLOW = ("data", "questions")  # commands that never import TensorFlow (nor do --help and usage errors)
TF_DATA = (
    "train",
    "train-vqa",
    "evaluate",
    "features",
    "export",
)  # need TensorFlow on every backend (tf.data, SavedModel);
# the others (caption, ask, serve, ...) read images with PIL and import it only as Keras's backend


JOB_CHILD_ENV = (
    "CAPTIONER_JOB_CHILD"  # the supervisor's pid, set in the training process it watches (several-process jobs)
)
NATIVE_FATAL = re.compile(
    r"^F\d{4} "
)  # a fatal line of native (absl) logging: what comes after it is the dying process's stack
GLOO_NOTICE = re.compile(
    rb"\[Gloo\][^\n]*\n"
)  # "[Gloo] Rank 0 is connected to 1 peer ranks...", printed by JAX's CPU collectives
JOINED = "captioner: joined"  # the line a job's process writes once every process has joined (`_start`)
# What a collective says when another process of the job is gone: JAX's CPU collectives (Gloo), NCCL on GPUs, the
# distributed runtime itself.
JOB_BROKEN = ("Gloo", "NCCL", "distributed service")


def job_stopped(config, detail: str) -> str:
    """The one line of a job's process that stopped because another process of the job ended or cannot be reached."""
    return (
        f"captioner: error: process {config.process_id} of {config.num_processes} stopped: another process of the job "
        f"ended or could not be reached ({detail[:120]}); the last backup is kept: start every process again with the "
        f"same command to resume"
    )


def die_with_supervisor(supervisor: int) -> None:
    """A job's training process is killed when its supervisor ends, however it ends (kill -9 too): left behind, it
    would go on training, and as process 0 writing the run. SIGKILL, as JAX's distributed runtime catches SIGTERM (a
    preemption notice) and goes on. Linux only (prctl); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor:  # it was gone before the line above
        os._exit(EXIT_ERROR)


def without_gloo_notices(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of `chunks` as they come, less whole "[Gloo] ...\\n" lines, which native code may write in pieces: a
    notice not finished yet (or the start of one) is held back until its line ends."""
    marker, pending = b"[Gloo]", b""
    for chunk in chunks:
        data, pending = pending + chunk, b""
        start = data.rfind(marker)
        if start >= 0 and b"\n" not in data[start:]:
            data, pending = data[:start], data[start:]
        else:
            held = next((n for n in range(len(marker) - 1, 0, -1) if data.endswith(marker[:n])), 0)
            if held:
                data, pending = data[:-held], data[-held:]
        if data:
            yield GLOO_NOTICE.sub(b"", data)
    if pending:
        yield GLOO_NOTICE.sub(b"", pending)


def supervise(argv: Sequence[str], config) -> int:
    """Run this command again in a child process and watch it. JAX's distributed runtime ends a process with a
    native abort (a fatal log line and a C++ stack) when the coordinator cannot be reached, a process never joins,
    or another process of the job dies; the child's stderr passes through here, less that, and such an end becomes
    one line and exit status 2. (A collective that fails because a partner died is one line from the child itself:
    `main`.) The child is killed if this process ends first (`die_with_supervisor`)."""
    import subprocess
    import threading

    env = {**os.environ, JOB_CHILD_ENV: str(os.getpid())}
    child = subprocess.Popen(
        [sys.executable, "-m", "captioner.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    joined, fatal = False, ""
    assert child.stderr is not None and child.stdout is not None

    def relay_stdout() -> None:  # as it comes (a progress bar redraws without a newline), less Gloo's native notices
        for chunk in without_gloo_notices(iter(lambda: os.read(child.stdout.fileno(), 1 << 16), b"")):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()

    relay = threading.Thread(target=relay_stdout, daemon=True)
    relay.start()
    try:
        for line in child.stderr:
            if line.startswith(JOINED):
                joined = True
            if fatal or NATIVE_FATAL.match(line):
                fatal = fatal or line.split("]", 1)[-1].strip()
                continue
            sys.stderr.write(line)
            sys.stderr.flush()
        status = child.wait()
        relay.join(timeout=5)
    except KeyboardInterrupt:  # Ctrl-C: the child got it too, or not (a signal to this process alone)
        # Killed, not left to end: a graceful end waits in jax.distributed's shutdown for the other processes, which
        # wait in a collective for this one (a deadlock of minutes); gone, they stop within seconds (`job_stopped`).
        child.kill()
        while child.poll() is None:
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C while it goes
                child.wait()
        print(
            "captioner: interrupted; the last backup is kept: start every process again, same command, to resume",
            file=sys.stderr,
        )
        return 130
    if status >= 0 and not fatal:
        return status
    who = f"process {config.process_id} of {config.num_processes}"
    if not joined:
        print(
            f"captioner: error: {who} could not form the job with the coordinator at {config.coordinator} within "
            f"{config.join_timeout} s; check {ADDRESSES_ENV} (process 0's HOST:PORT, reachable from every host), that "
            f"all "
            f"{config.num_processes} processes were started, or a longer --join-timeout",
            file=sys.stderr,
        )
    else:
        print(job_stopped(config, fatal), file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from captioner.errors import CaptionerError

    if args.command in ("train", "train-vqa"):  # a run another process is training: say so before the slow imports
        from captioner.distribute import prepare
        from captioner.fileio import busy_message, lock_holder

        try:
            args.parallel = parallel_config(args)
        except CaptionerError as exc:
            print(f"captioner: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        if args.parallel.num_processes > 1 and not os.environ.get(JOB_CHILD_ENV):
            return supervise(argv, args.parallel)
        if os.environ.get(JOB_CHILD_ENV):
            die_with_supervisor(int(os.environ[JOB_CHILD_ENV]))
        prepare(args.parallel)  # before JAX starts
        holder = lock_holder(args.run) if args.parallel.process_id == 0 else None  # the others train in a private copy
        if holder:
            print(f"captioner: error: {busy_message(args.run, holder)}", file=sys.stderr)
            return EXIT_ERROR
    from captioner.config import AUTO_PRECISION_ENV, PRECISIONS

    forced = os.environ.get(AUTO_PRECISION_ENV, "").strip()
    if forced and forced not in PRECISIONS:  # checked once here, before anything resolves "auto"
        print(
            f"captioner: error: {AUTO_PRECISION_ENV}={forced} is not a precision; unset it or use one of: "
            f"{', '.join(PRECISIONS)}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        args.fast = fast_path(args)
    except CaptionerError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.command not in NO_TENSORFLOW and not args.fast and "tensorflow" not in sys.modules:
        if getattr(args, "verbose", False) or os.environ.get("CAPTIONER_TF_LOGS", "") not in ("", "0"):
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        else:
            from captioner.backend import filter_native_logs, import_tensorflow_quietly, name

            filter_native_logs()  # XLA and oneDNN log too, whether or not TensorFlow comes
            if args.command in TF_DATA or name() == "tensorflow":  # JAX's caption/ask: ~5 s less
                import_tensorflow_quietly()
    try:
        return COMMANDS[args.command](args)
    except CaptionerError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr, flush=True)
        if os.environ.get(JOB_CHILD_ENV):
            os._exit(
                130
            )  # as below: no jax.distributed shutdown, which would wait for the processes waiting for this one
        return 130
    except Exception as exc:
        if not (os.environ.get(JOB_CHILD_ENV) and any(marker in str(exc) for marker in JOB_BROKEN)):
            raise
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        print(job_stopped(args.parallel, detail), file=sys.stderr, flush=True)
        os._exit(
            EXIT_ERROR
        )  # not a normal exit: jax.distributed's shutdown would wait ~85 s for the process that is gone


if __name__ == "__main__":
    sys.exit(main())
