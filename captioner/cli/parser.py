"""The command line's grammar: every command's flags (argparse), and nothing that runs them (`commands`).

The training flags of `train` and `train-vqa` are one table (`TRAINING_FLAGS`): a flag, the config field it sets,
the tasks that take it. Importing this module imports no TensorFlow, Keras or JAX, so `--help` is fast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from captioner.config import PRECISIONS  # plain dataclasses: no TensorFlow at parse time
from captioner.distribute import ADDRESSES_ENV, PROCESS_ID_ENV, PROCESSES_ENV  # no Keras at import
from captioner.errors import EXIT_ERROR

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


CAPTION, VQA = "caption", "vqa"
BOTH = (CAPTION, VQA)


@dataclass(frozen=True)
class TrainingFlag:
    """One flag of `captioner train` (task caption) and `captioner train-vqa` (task vqa)."""

    flag: str
    key: str | None  # the config field it sets; None: the command reads it (`commands.run_train`, `run_train_vqa`)
    tasks: tuple[str, ...]
    help: str | dict[str, str]  # one text, or one per task
    options: dict = field(default_factory=dict)  # argparse's keywords besides help (default None unless given)

    def help_for(self, task: str) -> str | None:
        return self.help if isinstance(self.help, str) else self.help.get(task)


_BLOCKS = "train the top N blocks of the frozen backbone, on cached activations below them (default 0)"

# The training flags of both commands, in --help order: one definition, the `tasks` column says who takes each.
TRAINING_FLAGS = (
    TrainingFlag("--run", None, BOTH, "output run directory", {"required": True}),
    TrainingFlag(
        "--preset",
        None,
        BOTH,
        {
            CAPTION: "starting configuration: shapes (default), flickr8k or tiny",
            VQA: "starting configuration: shapes-vqa (default), easy-vqa (with --dataset easy-vqa), vqa-coco (with "
            "--dataset vqa-lines) or tiny",
        },
    ),
    TrainingFlag(
        "--init-from",
        None,
        BOTH,
        {
            CAPTION: "start from this finished caption run: its weights, vocabulary and settings (then the flags "
            "given here)",
            VQA: "start from this finished VQA run: its weights, vocabularies and settings (then the flags given "
            "here), e.g. to fine-tune the top CNN blocks of a frozen run with --fine-tune-blocks N and a lower "
            "--learning-rate",
        },
        {"metavar": "RUN"},
    ),
    TrainingFlag(
        "--objective",
        "train.objective",
        (CAPTION,),
        "xe: cross-entropy (default); scst: self-critical training on CIDEr-D (needs --init-from)",
        {"choices": ["xe", "scst"]},
    ),
    TrainingFlag(
        "--scst-samples",
        "train.scst_samples",
        (CAPTION,),
        "scst: captions sampled per image (default 5)",
        {"type": int, "metavar": "K"},
    ),
    TrainingFlag(
        "--scst-baseline",
        "train.scst_baseline",
        (CAPTION,),
        "scst: subtract the greedy caption's reward (default) or the mean of the other samples'",
        {"choices": ["greedy", "mean"]},
    ),
    TrainingFlag(
        "--dataset",
        "data.dataset",
        BOTH,
        {
            CAPTION: "dataset loader: shapes (default), flickr8k, karpathy or coco",
            VQA: "shapes (default), easy-vqa (the PyPI package), vqa (VQA v2 JSON) or vqa-lines (NAME#N<TAB>question "
            "? answer files with Images/, e.g. the VQA v2 yes/no subset on COCO photos)",
        },
        {CAPTION: {}, VQA: {"choices": ["shapes", "easy-vqa", "vqa", "vqa-lines"]}},
    ),
    TrainingFlag(
        "--data-dir",
        "data.data_dir",
        BOTH,
        {
            CAPTION: "dataset folder (default data/shapes)",
            VQA: "dataset folder (default data/shapes; not used by easy-vqa)",
        },
    ),
    TrainingFlag(
        "--add-source",
        None,
        BOTH,
        {
            task: f"train on this dataset too, with the one of --dataset/--data-dir (repeatable; e.g. {example})"
            for task, example in ((CAPTION, "flickr8k=data/flickr8k"), (VQA, "vqa-lines=runs/questions"))
        },
        {"action": "append", "default": [], "metavar": "DATASET=DIR"},
    ),
    TrainingFlag(
        "--source-weights",
        None,
        BOTH,
        "each source's share of the training records, --dataset's first (default: every record once); validation "
        "takes each source's dev split in equal shares",
        {"metavar": "W1,W2,..."},
    ),
    TrainingFlag(
        "--answer-type",
        "vqa.answer_type",
        (VQA,),
        "keep only questions with this type of answer",
        {"choices": ["yes/no", "number", "other"]},
    ),
    TrainingFlag(
        "--decoder",
        "model.decoder",
        (CAPTION,),
        "show-tell (default) or attention (Show-Attend-Tell)",
        {"choices": ["show-tell", "attention"]},
    ),
    TrainingFlag(
        "--attention",
        "model.attention",
        (CAPTION,),
        "with --decoder attention: soft (default) or hard (one sampled grid position per word, trained with "
        "REINFORCE); --attention alone implies --decoder attention",
        {"choices": ["soft", "hard"]},
    ),
    TrainingFlag("--cell", "model.cell", (CAPTION,), "the decoder's recurrent cell: lstm (default) or gru"),
    TrainingFlag(
        "--num-layers", "model.num_layers", (CAPTION,), "stacked recurrent layers, 1 to 4 (default 1)", {"type": int}
    ),
    TrainingFlag(
        "--encoder-from",
        "vqa.encoder_from",
        (VQA,),
        "start from this captioning run's trained encoder (frozen)",
        {"metavar": "RUN"},
    ),
    TrainingFlag(
        "--fusion",
        "vqa.fusion",
        (VQA,),
        "how image and question meet (default multiply)",
        {"choices": ["multiply", "concat"]},
    ),
    TrainingFlag("--attention", None, (VQA,), "the question attends over the image grid", {"action": "store_true"}),
    TrainingFlag(
        "--question-only",
        None,
        (VQA,),
        "the image takes no part: a blind model, for ablations",
        {"action": "store_true"},
    ),
    TrainingFlag(
        "--image-only",
        None,
        (VQA,),
        "the question takes no part: an image-only model, for ablations",
        {"action": "store_true"},
    ),
    TrainingFlag(
        "--encoder",
        "model.encoder",
        BOTH,
        {
            CAPTION: "small_cnn or a keras.applications name, e.g. mobilenet_v2",
            VQA: "small_cnn or a keras.applications name (without --encoder-from)",
        },
    ),
    TrainingFlag("--encoder-weights", "model.encoder_weights", BOTH, "none, imagenet or a weights file (backbones)"),
    TrainingFlag("--fine-tune-blocks", "model.fine_tune_blocks", BOTH, _BLOCKS, {"type": int, "metavar": "N"}),
    TrainingFlag(
        "--fine-tune-encoder",
        "model.encoder_trainable",
        BOTH,
        "train the encoder's weights too: a pretrained backbone (no feature cache; slow on a CPU) or the encoder "
        "taken with --encoder-from (default: the small CNN trains, both of those stay frozen)",
        {"action": "store_const", "const": True},
    ),
    TrainingFlag("--epochs", "train.epochs", BOTH, "", {"type": _positive_int}),
    TrainingFlag(
        "--batch-size", "train.batch_size", BOTH, {CAPTION: "", VQA: "images per step"}, {"type": _positive_int}
    ),
    TrainingFlag("--learning-rate", "train.learning_rate", BOTH, "", {"type": float}),
    TrainingFlag("--seed", "train.seed", BOTH, "", {"type": int}),
    TrainingFlag(
        "--max-train-images",
        "train.max_train_images",
        BOTH,
        {CAPTION: "train on the first N images only", VQA: "train on the questions of the first N images only"},
        {"type": _positive_int},
    ),
    TrainingFlag(
        "--precision",
        "model.precision",
        BOTH,
        "auto (default: what measured faster at equal quality on this CPU/GPU for this kind of training; "
        "BENCHMARKS.md) or one of these",
        {"choices": PRECISION_CHOICES},
    ),
    TrainingFlag(
        "--cache-dir", "data.feature_cache_dir", BOTH, "feature cache of a frozen backbone (default DATA_DIR/features)"
    ),
    TrainingFlag(
        "--set",
        None,
        BOTH,
        {
            CAPTION: "any other setting, e.g. model.hidden_dim=512",
            VQA: "any other setting, e.g. vqa.num_answers=500",
        },
        {"action": "append", "default": [], "metavar": "SECTION.FIELD=VALUE"},
    ),
    TrainingFlag(
        "--restart",
        None,
        BOTH,
        "discard an existing run directory's training and start over",
        {"action": "store_true"},
    ),
    TrainingFlag("--quiet", None, BOTH, "no progress bar", {"action": "store_true"}),
    TrainingFlag("--verbose", None, BOTH, "list every entry the dataset loader skipped", {"action": "store_true"}),
)


def add_training_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    """The flags of TRAINING_FLAGS that `task` takes (caption: `captioner train` and scripts/train.py; vqa:
    `captioner train-vqa`)."""
    for spec in TRAINING_FLAGS:
        if task not in spec.tasks:
            continue
        options = spec.options.get(task, {}) if task in spec.options else spec.options
        options = {"default": None, **options}
        if options.get("action") == "store_true":
            options.pop("default")
        parser.add_argument(spec.flag, help=spec.help_for(task) or None, **options)


def config_keys(task: str) -> dict[str, str]:
    """argparse dest -> config field, for the flags `task` takes that set one."""
    return {
        spec.flag.removeprefix("--").replace("-", "_"): spec.key
        for spec in TRAINING_FLAGS
        if task in spec.tasks and spec.key
    }


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
    add_training_arguments(train, CAPTION)
    add_parallel_arguments(train)

    train_vqa = commands.add_parser(
        "train-vqa", help="train a VQA model (question answering) and write a run directory"
    )
    add_training_arguments(train_vqa, VQA)
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


DECODE_FLAGS = (
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
        help="hard-attention runs: read the expected context (default) or the most attended grid position",
    )
