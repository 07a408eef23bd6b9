"""`captioner data | train | caption | evaluate | plot-history`: the only module that reads argv or prints.

Errors the user can fix print one line (`captioner: error: ...`) and exit 2; `caption` exits 1 when some
images failed and the rest were captioned.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2


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

    train = commands.add_parser("train", help="train a captioner and write a run directory")
    add_train_arguments(train)

    caption = commands.add_parser("caption", help="caption image files, folders or globs")
    caption.add_argument("--run", required=True, help="run directory written by `captioner train`")
    caption.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    caption.add_argument("--beam-size", type=_positive_int, default=None, help="beam width (default: the run's, 1 = greedy)")
    caption.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch (default 64)")
    caption.add_argument("--json", action="store_true", help="print JSON instead of text")
    caption.add_argument("--attention", default=None, metavar="PNG", help="write the attention map of each word (attention runs)")

    plot = commands.add_parser("plot-history", help="draw training and validation loss per epoch")
    plot.add_argument("--run", required=True, help="run directory")
    plot.add_argument("--out", default=None, help="PNG to write (default RUN/history.png)")

    evaluate = commands.add_parser("evaluate", help="caption a split and print corpus BLEU-1..4")
    evaluate.add_argument("--run", required=True, help="run directory")
    evaluate.add_argument("--split", default="test", help="split to score (default test)")
    evaluate.add_argument("--data-dir", default=None, help="dataset folder (default: the one the run was trained on)")
    evaluate.add_argument("--beam-size", type=_positive_int, default=None, help="beam width (default: the run's, 1 = greedy)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch (default 256)")
    evaluate.add_argument("--max-images", type=_positive_int, default=None, help="score only the first N images")
    evaluate.add_argument("--out", default=None, help="save the generated captions to this JSON file")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `captioner train`, shared with scripts/train.py."""
    parser.add_argument("--run", required=True, help="output run directory")
    parser.add_argument("--preset", default="shapes", help="starting configuration: shapes (default) or tiny")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default data/shapes)")
    parser.add_argument("--dataset", default=None, help="dataset loader (default shapes)")
    parser.add_argument("--decoder", default=None, choices=["show-tell", "attention"], help="show-tell (default) or attention (Show-Attend-Tell)")
    parser.add_argument("--encoder", default=None, help="small_cnn or a keras.applications name, e.g. mobilenet_v2")
    parser.add_argument("--encoder-weights", default=None, help="none, imagenet or a weights file (backbones)")
    parser.add_argument("--epochs", type=_positive_int, default=None)
    parser.add_argument("--batch-size", type=_positive_int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-train-images", type=_positive_int, default=None, help="train on the first N images only")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="any other setting, e.g. model.hidden_dim=512")
    parser.add_argument("--restart", action="store_true", help="discard an existing run directory's training and start over")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


_TRAIN_FLAGS = {
    "data_dir": "data.data_dir",
    "dataset": "data.dataset",
    "decoder": "model.decoder",
    "encoder": "model.encoder",
    "encoder_weights": "model.encoder_weights",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
    "max_train_images": "train.max_train_images",
}


def run_train(args: argparse.Namespace) -> int:
    from captioner.config import apply_overrides, preset
    from captioner.errors import CaptionerError
    from captioner.train import train

    try:
        config = preset(args.preset)
        overrides = {key: str(getattr(args, flag)) for flag, key in _TRAIN_FLAGS.items() if getattr(args, flag) is not None}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise CaptionerError(f"--set expects SECTION.FIELD=VALUE, got '{item}'")
            overrides[key.strip()] = value.strip()
        apply_overrides(config, overrides)
    except ValueError as exc:
        raise CaptionerError(str(exc)) from None
    metrics = train(config, args.run, verbose=0 if args.quiet else "auto", restart=args.restart)
    stats = metrics["train"]
    if metrics.get("already_finished"):
        print(f"run {args.run} is finished ({stats['epochs_run']} epochs, best val loss {stats['best_val_loss']:.4f}); "
              f"pass --restart to train it again")
        return EXIT_OK
    print(
        f"trained {stats['epochs_run']} epochs in {stats['seconds']:.0f}s "
        f"({stats['images_per_second']:.0f} images/s, {stats['captions_per_second']:.0f} captions/s, "
        f"peak memory {stats['peak_rss_mib']:.0f} MiB); best val loss {stats['best_val_loss']:.4f} "
        f"at epoch {stats['best_epoch']}; run saved to {args.run}"
    )
    return EXIT_OK


def expand_image_arguments(arguments: Sequence[str]) -> list[str]:
    """Files as given; folders become their image files (sorted); glob patterns are expanded.

    A pattern that matches nothing is kept as is, so it is reported as a missing file.
    """
    from captioner.images import IMAGE_SUFFIXES

    paths: list[str] = []
    for argument in arguments:
        if Path(argument).is_dir():
            paths += sorted(str(p) for p in Path(argument).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in argument for ch in "*?[") and not Path(argument).exists():
            paths += sorted(glob.glob(argument)) or [argument]
        else:
            paths.append(argument)
    return paths


def run_caption(args: argparse.Namespace) -> int:
    import numpy as np

    from captioner.decoding import CaptionGenerator
    from captioner.errors import CaptionerError
    from captioner.images import read_image
    from captioner.run import load_run

    run = load_run(args.run)
    paths = expand_image_arguments(args.images)
    if not paths:
        raise CaptionerError("no image files found in the given folders")
    if args.attention is not None:
        if not run.model.decoder.uses_attention:
            raise CaptionerError(f"{args.run} is a {run.config.model.decoder} run: it has no attention weights; train one with --decoder attention")
        _check_output_folder(args.attention)
    beam_size = args.beam_size or run.config.decode.beam_size
    generator = CaptionGenerator(run.model, run.vocab, run.config.decode.max_length, beam_size=beam_size)
    size = run.model.encoder.image_size
    results: list[dict] = [{"image": path} for path in paths]
    for start in range(0, len(paths), args.batch_size):  # one batch of decoded images in memory at a time
        chunk: list[tuple[int, np.ndarray]] = []
        for index in range(start, min(start + args.batch_size, len(paths))):
            try:
                image, (width, height) = read_image(paths[index], size)
                chunk.append((index, image))
                results[index].update(width=width, height=height)  # upright: EXIF orientation applied
            except CaptionerError as exc:
                results[index]["error"] = str(exc)
        if not chunk:
            continue
        generated = generator(np.stack([image for _, image in chunk]))
        for row, ((index, image), caption, score) in enumerate(zip(chunk, generated.captions, generated.scores)):
            results[index].update(caption=caption, score=float(score))
            if args.attention is not None:
                picture = _attention_path(args.attention, results[index]["image"], single=len(paths) == 1)
                _draw_attention(run, image, generated.tokens[row], generated.attention[row], picture)
                results[index]["attention_map"] = str(picture)
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2))
    for result in results:
        if "error" in result:
            print(f"captioner: error: {result['error']}", file=sys.stderr)
        elif not args.json:
            print(result["caption"] if len(paths) == 1 else f"{result['image']}\t{result['caption']}")
    if failed:
        print(f"captioner: {len(failed)} of {len(results)} images could not be captioned", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _check_output_folder(path: str) -> None:
    from captioner.errors import CaptionerError

    if not Path(path).resolve().parent.is_dir():
        raise CaptionerError(f"cannot write {path}: folder {Path(path).parent} does not exist")


def _attention_path(out: str, image: str, single: bool) -> Path:
    """`out` itself for one image; `OUT-STEM_IMAGE-STEM.png` beside it for several."""
    out_path = Path(out)
    return out_path if single else out_path.with_name(f"{out_path.stem}_{Path(image).stem}{out_path.suffix or '.png'}")


def _draw_attention(run, image, tokens, attention, path: Path) -> None:
    from captioner.viz import attention_figure

    words = []
    for token in tokens:
        words.append(run.vocab.words[int(token)])
        if int(token) == run.vocab.end_id or len(words) == len(tokens):
            break
    grid = run.model.encoder.grid_shape
    attention_figure(image, words, attention[: len(words)], (grid[0], grid[1]), path)


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
    from captioner.evaluate import evaluate, summary_lines
    from captioner.run import load_run

    if args.out is not None:
        _check_output_folder(args.out)
    run = load_run(args.run)
    beam_size = args.beam_size or run.config.decode.beam_size
    result = evaluate(run, args.split, args.data_dir, beam_size, args.batch_size, args.out, args.max_images)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(summary_lines(result)))
    return EXIT_OK


def run_data(args: argparse.Namespace) -> int:
    import time

    from captioner.datasets.shapes import ShapesSpec, generate
    from captioner.errors import CaptionerError

    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            raise CaptionerError(f"--{name} must not be negative")
    started = time.perf_counter()
    spec = ShapesSpec(image_size=args.image_size, num_train=args.train, num_val=args.val, num_test=args.test, seed=args.seed)
    sizes = generate(args.out, spec)
    counts = ", ".join(f"{n} {split}" for split, n in sizes.items())
    print(f"wrote shapes ({counts} images) to {args.out} in {time.perf_counter() - started:.1f}s")
    return EXIT_OK


COMMANDS = {
    "data": run_data,
    "train": run_train,
    "caption": run_caption,
    "evaluate": run_evaluate,
    "plot-history": run_plot_history,
}


def main(argv: Sequence[str] | None = None) -> int:
    # Before TensorFlow is imported: keep its C++ INFO/WARNING chatter out of the user's terminal.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from captioner.errors import CaptionerError

    try:
        return COMMANDS[args.command](args)
    except CaptionerError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
